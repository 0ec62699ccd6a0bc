package netd

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/netd/cluster"
)

// nodeIDLen is the length of a node ID: 128 random bits in hex.
const nodeIDLen = 32

// loadNodeID returns this node's ID from path (--node-id-file), creating
// it at the first start. The ID goes into the node's lease: a netd whose
// ID differs from the one of the live lease under its name is another
// machine, and is refused (see cluster.ErrNodeTaken). A file that is
// there but unreadable stops netd rather than being replaced: a new ID
// would lock the node out of its own lease.
func loadNodeID(path string) (string, error) {
	id, err := readNodeID(path)
	if err == nil && id == "" {
		return createNodeID(path)
	}
	return id, err
}

// readNodeID returns the node ID in path, "" when there is none yet.
func readNodeID(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("node ID (--node-id-file): %w", err)
	}
	id := strings.TrimSpace(string(data))
	if err := cluster.CheckNodeID(id); err != nil {
		return "", fmt.Errorf("node ID in %s (--node-id-file): %w; restore the file, or remove it to give this node a new identity (its lease is then refused until it expires or `netd leave` releases it)", path, err)
	}
	return id, nil
}

func createNodeID(path string) (string, error) {
	var b [nodeIDLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("node ID (--node-id-file): %w", err)
	}
	if err := lease.WriteFileAtomic(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("node ID (--node-id-file): %w", err)
	}
	return id, nil
}

// nodeTaken explains a refused lease (cluster.ErrNodeTaken) and says how
// to proceed.
func nodeTaken(cfg *Config, self cluster.Lease, err error) error {
	hint := ""
	if cfg.nodeNameFromHost {
		hint = fmt.Sprintf(" (--node-name defaults to the host name, %s here: machines that share a host name need --node-name)", cfg.NodeName)
	}
	return fmt.Errorf("%w. This node (%s, node ID %s from %s) is not that node. If it is another machine, give this one its own --node-name%s. "+
		"If it is this machine with its identity lost (%s removed or replaced), stop the netd that holds the lease or run `netd leave --node-name=%s` there, "+
		"or wait until that lease expires",
		err, self.NodeAddrs(), self.NodeID, cfg.NodeIDFile, hint, cfg.NodeIDFile, cfg.NodeName)
}
