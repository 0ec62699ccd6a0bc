package netd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/berthnet/berth/netd/pki"
)

// Join is `netd join TOKEN`: it gets this node an etcd client
// certificate from the node that runs the embedded etcd, with the token
// printed there (see package pki), and stores it in --pki-dir with the
// CA and etcd's endpoints, which netd then uses by default.
func Join(ctx context.Context, cfg *Config, token string, out io.Writer) error {
	t, err := pki.ParseToken(token)
	if err != nil {
		return err
	}
	endpoints, err := pki.Join(ctx, t, cfg.NodeName, cfg.PKIDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "joined: etcd %s; the CA, this node's client certificate and key are in %s.\n", strings.Join(endpoints, ","), cfg.PKIDir)
	root := ""
	if cfg.RootDir != "" {
		root = " --root-dir=" + cfg.RootDir // where netd finds them
	}
	fmt.Fprintf(out, "Start netd on this node; it uses them without --etcd-endpoints, e.g.\n  netd --node-name=%s%s\n", cfg.NodeName, root)
	return nil
}

// PrintToken is `netd token`: it prints the join token of the embedded
// etcd this node runs, after replacing its secret with rotate (tokens
// printed before no longer join; nodes that joined keep working).
func PrintToken(cfg *Config, rotate bool, out io.Writer) error {
	t, err := pki.ReadToken(cfg.PKIDir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no join token in %s (--pki-dir): only the node that runs the embedded etcd with TLS has one, once netd started there", cfg.PKIDir)
	}
	if err != nil {
		return err
	}
	if rotate {
		ca, err := pki.OpenAuthority(cfg.PKIDir, cfg.NodeName)
		if err != nil {
			return err
		}
		if t, err = ca.RotateToken(t.Addr); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, t)
	return nil
}
