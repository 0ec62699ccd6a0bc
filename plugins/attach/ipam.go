package attach

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/ipam"
)

// addresser is where an attachment's addresses come from: berth-ipam
// linked in (no exec), or any other IPAM plugin exec'd the CNI way.
type addresser interface {
	add() (*current.Result, error)
	del() error
	check() error
	// gc releases the addresses of the attachments neither in valid nor
	// attached (asked under the addresses' lock, where it can be).
	gc(valid []types.GCAttachment, attached func(containerID, ifName string) bool) error
	status() error
}

func newAddresser(args *skel.CmdArgs, c *conf.Bridge) addresser {
	if c.IPAMConf.Type == conf.IPAMType {
		return &inProcess{req: &ipam.Request{Network: c.Name, Conf: c.IPAMConf,
			Attachment: ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}}}
	}
	return &delegated{plugin: c.IPAMConf.Type, stdin: args.StdinData}
}

type inProcess struct{ req *ipam.Request }

func (p *inProcess) add() (*current.Result, error) { return ipam.Add(p.req) }
func (p *inProcess) del() error                    { return ipam.Del(p.req) }
func (p *inProcess) check() error                  { return ipam.Check(p.req) }
func (p *inProcess) status() error                 { return ipam.Status(p.req) }
func (p *inProcess) gc(valid []types.GCAttachment, attached func(containerID, ifName string) bool) error {
	listed := ipam.Listed(valid)
	return ipam.GC(p.req, func(a ipam.Attachment) bool { return listed(a) || attached(a.ContainerID, a.IfName) })
}

type delegated struct {
	plugin string
	stdin  []byte
}

// find refuses an ipam type with no plugin in CNI_PATH before anything
// is exec'd, naming the field (libcni's own error would be code 999).
func (d *delegated) find() error {
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	if _, err := invoke.FindInPath(d.plugin, paths); err != nil {
		return fmt.Errorf("%w: ipam.type: no IPAM plugin %q in CNI_PATH %s; use %q or install the plugin there",
			cnierr.ErrInvalidConfig, d.plugin, os.Getenv("CNI_PATH"), conf.IPAMType)
	}
	return nil
}

func (d *delegated) add() (*current.Result, error) {
	if err := d.find(); err != nil {
		return nil, err
	}
	r, err := invoke.DelegateAdd(context.Background(), d.plugin, d.stdin, nil)
	if err != nil {
		return nil, fmt.Errorf("ipam plugin %s: %w", d.plugin, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("%w: result of ipam plugin %s: %v", cnierr.ErrDecode, d.plugin, err)
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("%w: ipam plugin %s returned no address", cnierr.ErrInvalidConfig, d.plugin)
	}
	return res, nil
}

func (d *delegated) del() error {
	if err := d.find(); err != nil {
		return err
	}
	return wrap(d.plugin, invoke.DelegateDel(context.Background(), d.plugin, d.stdin, nil))
}

func (d *delegated) check() error {
	if err := d.find(); err != nil {
		return err
	}
	return wrap(d.plugin, invoke.DelegateCheck(context.Background(), d.plugin, d.stdin, nil))
}

func (d *delegated) status() error {
	if err := d.find(); err != nil {
		return err
	}
	return wrap(d.plugin, invoke.DelegateStatus(context.Background(), d.plugin, d.stdin, nil))
}

// gc passes the GC call (with its valid attachments, already in stdin) on.
// The plugin knows only the runtime's list: berth's records cannot be
// asked under that plugin's lock.
func (d *delegated) gc([]types.GCAttachment, func(string, string) bool) error {
	if err := d.find(); err != nil {
		return err
	}
	return wrap(d.plugin, invoke.DelegateGC(context.Background(), d.plugin, d.stdin, nil))
}

func wrap(plugin string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ipam plugin %s: %w", plugin, err)
}
