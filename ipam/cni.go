package ipam

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
)

// Request is one IPAM call, whether it came from the berth-ipam binary or
// from a berth plugin linking this package.
type Request struct {
	Network    string
	Conf       *conf.IPAM
	Attachment Attachment
}

// NewRequest parses a CNI call's config for IPAM.
func NewRequest(args *skel.CmdArgs) (*Request, string, error) {
	var head types.NetConf
	if err := conf.Decode(args.StdinData, &head); err != nil {
		return nil, "", err
	}
	if head.Name == "" {
		return nil, "", fmt.Errorf("%w: name: missing network name", cnierr.ErrInvalidConfig)
	}
	c, err := conf.ParseIPAM(args.StdinData, args.Args)
	if err != nil {
		return nil, "", err
	}
	return &Request{Network: head.Name, Conf: c, Attachment: Attachment{args.ContainerID, args.IfName}}, head.CNIVersion, nil
}

// Add allocates and returns the IPAM result (addresses, gateways, routes).
func Add(req *Request) (*current.Result, error) {
	if err := req.Conf.CheckDataDir(); err != nil {
		return nil, err
	}
	if err := req.Conf.CheckAllocatable(); err != nil {
		return nil, err
	}
	pool, err := Open(req.Network, req.Conf)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	allocs, err := pool.Allocate(req.Attachment)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: req.Conf.Routes}
	for _, a := range allocs {
		ipc := &current.IPConfig{Address: *conf.IPNet(a.Addr, a.Range.Subnet)}
		if a.Range.Gateway.IsValid() {
			ipc.Gateway = net.IP(a.Range.Gateway.AsSlice())
		}
		res.IPs = append(res.IPs, ipc)
	}
	return res, nil
}

// Del releases the attachment's addresses; unknown attachments are fine.
func Del(req *Request) error {
	pool, err := Open(req.Network, req.Conf)
	if err != nil {
		return err
	}
	defer pool.Close()
	return pool.Release(req.Attachment)
}

// Check verifies the attachment still holds its reservations.
func Check(req *Request) error {
	pool, err := Open(req.Network, req.Conf)
	if err != nil {
		return err
	}
	defer pool.Close()
	_, err = pool.Addresses(req.Attachment)
	return err
}

// GC releases every address whose attachment keep refuses (Listed: not
// one of a GC call's valid attachments). keep runs under the store's lock.
func GC(req *Request, keep func(Attachment) bool) error {
	pool, err := Open(req.Network, req.Conf)
	if err != nil {
		return err
	}
	defer pool.Close()
	_, err = pool.GC(keep)
	return err
}

// Listed tells the attachments in valid, a GC call's list.
func Listed(valid []types.GCAttachment) func(Attachment) bool {
	set := make(map[Attachment]bool, len(valid))
	for _, v := range valid {
		set[Attachment{v.ContainerID, v.IfName}] = true
	}
	return func(a Attachment) bool { return set[a] }
}

// Status reports error 50 when the store cannot take allocations.
func Status(req *Request) error {
	pool, err := Open(req.Network, req.Conf)
	if err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrUnavailable, err)
	}
	defer pool.Close()
	return pool.Status()
}

// ValidAttachments reads cni.dev/valid-attachments from a GC call's config.
func ValidAttachments(stdin []byte) ([]types.GCAttachment, error) {
	var c types.NetConf
	if err := conf.Decode(stdin, &c); err != nil {
		return nil, err
	}
	return c.ValidAttachments, nil
}
