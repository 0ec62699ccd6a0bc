package testenv

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

// Runtime calls CNI plugins through libcni, as containerd or CRI-O would,
// from inside the node namespace Node (plugins run where they are exec'd).
type Runtime struct {
	Node ns.NetNS
	CNI  *libcni.CNIConfig
	List *libcni.NetworkConfigList
}

// NewRuntime loads conflist (JSON) and finds plugins in berth's bin dir
// and the reference plugin dir.
func NewRuntime(t testing.TB, node ns.NetNS, conflist string) *Runtime {
	t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(conflist))
	if err != nil {
		t.Fatalf("parsing conflist: %v", err)
	}
	cacheDir := filepath.Join(t.TempDir(), "cni-cache")
	os.MkdirAll(cacheDir, 0o755)
	cni := libcni.NewCNIConfigWithCacheDir([]string{BinDir(t), "/usr/lib/cni"}, cacheDir, nil)
	return &Runtime{Node: node, CNI: cni, List: list}
}

// Attachment is one container interface for the runtime.
type Attachment struct {
	ID     string
	IfName string
	Netns  ns.NetNS
	// CapabilityArgs such as "portMappings".
	Caps map[string]any
	Args [][2]string
}

func (a *Attachment) rt() *libcni.RuntimeConf {
	ifName := a.IfName
	if ifName == "" {
		ifName = "eth0"
	}
	return &libcni.RuntimeConf{ContainerID: a.ID, NetNS: a.Netns.Path(), IfName: ifName, CapabilityArgs: a.Caps, Args: a.Args}
}

// Add runs ADD on the whole list.
func (r *Runtime) Add(a *Attachment) (*current.Result, error) {
	var res types.Result
	err := r.Node.Do(func(ns.NetNS) error {
		var err error
		res, err = r.CNI.AddNetworkList(context.Background(), r.List, a.rt())
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// MustAdd runs ADD on the whole list and ends the test if it fails.
func (r *Runtime) MustAdd(t testing.TB, a *Attachment) *current.Result {
	t.Helper()
	res, err := r.Add(a)
	if err != nil {
		t.Fatalf("ADD %s: %v", a.ID, err)
	}
	return res
}

// Del runs DEL.
func (r *Runtime) Del(a *Attachment) error {
	return r.Node.Do(func(ns.NetNS) error { return r.CNI.DelNetworkList(context.Background(), r.List, a.rt()) })
}

// Check runs CHECK.
func (r *Runtime) Check(a *Attachment) error {
	return r.Node.Do(func(ns.NetNS) error { return r.CNI.CheckNetworkList(context.Background(), r.List, a.rt()) })
}

// GC runs GC keeping the given attachments.
func (r *Runtime) GC(keep ...*Attachment) error {
	args := &libcni.GCArgs{}
	for _, a := range keep {
		rt := a.rt()
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: rt.ContainerID, IfName: rt.IfName})
	}
	return r.Node.Do(func(ns.NetNS) error { return r.CNI.GCNetworkList(context.Background(), r.List, args) })
}

// Status runs STATUS.
func (r *Runtime) Status() error {
	return r.Node.Do(func(ns.NetNS) error { return r.CNI.GetStatusNetworkList(context.Background(), r.List) })
}

// IPv6Of is the IPv6 address of a result (nil without one).
func IPv6Of(r *current.Result) net.IP {
	for _, ipc := range r.IPs {
		if ipc.Address.IP.To4() == nil {
			return ipc.Address.IP
		}
	}
	return nil
}

// TalkIPv6 checks that container a reaches container b at bIP over IPv6,
// ICMP and TCP, and that b sees a's own address aIP. A fresh address may
// still be tentative (DAD): the ping is tried for 5s.
func TalkIPv6(t testing.TB, a, b *Attachment, aIP, bIP net.IP) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for err := Ping(a.Netns, bIP.String()); err != nil; err = Ping(a.Netns, bIP.String()) {
		if time.Now().After(deadline) {
			t.Errorf("container to container over IPv6: %v", err)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	addr := net.JoinHostPort(bIP.String(), "7000")
	Serve(t, b.Netns, addr)
	if seen, err := Dial(a.Netns, addr); err != nil || seen != aIP.String() {
		t.Errorf("TCP over IPv6: the server saw %q (%v), want %s", seen, err, aIP)
	}
}
