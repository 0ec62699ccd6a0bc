package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthnet/berth/runner"
)

// Runner runs berth's container runner on one node, as a person would:
//
//	nsenter --net=/run/netns/<node> runner --state-dir <node>/runner \
//	    --cni-conf-dir <node>/net.d --cni-bin-dir <bin>:/usr/lib/cni \
//	    --cgroup-parent /<testbed id>/<node> COMMAND ...
//
// CNI plugins run where the runner runs, so the containers' bridges and
// rules end up in the node. (Not `ip netns exec`: it remounts /sys and
// hides the cgroup filesystems from the runner.) The test bed removes
// every container of every node's runner on Close.
type Runner struct {
	Node         *Node
	Bin          string
	StateDir     string // the runner's --state-dir, own to the node
	CNIBinDirs   string // berth's bin dir, then the reference plugins
	CgroupParent string
}

// ReferenceCNIDir is where Debian installs the reference CNI plugins; the
// runner searches it after berth's bin dir.
const ReferenceCNIDir = "/usr/lib/cni"

// Runner returns the node's runner (the same one on every call).
func (n *Node) Runner() (*Runner, error) {
	tb := n.tb
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if n.runner != nil {
		return n.runner, nil
	}
	bin, err := tb.binary("runner")
	if err != nil {
		return nil, err
	}
	n.runner = &Runner{
		Node:         n,
		Bin:          bin,
		StateDir:     filepath.Join(n.Dir, "runner"),
		CNIBinDirs:   tb.BinDir + ":" + ReferenceCNIDir,
		CgroupParent: "/" + tb.ID + "/" + n.Host,
	}
	tb.runners = append(tb.runners, n.runner)
	return n.runner, nil
}

// Args is the full command line for runner args on the node.
func (r *Runner) Args(args ...string) []string {
	return append([]string{"nsenter", "--net=" + r.Node.Path(), r.Bin,
		"--state-dir", r.StateDir, "--cni-conf-dir", r.Node.CNIConfDir,
		"--cni-bin-dir", r.CNIBinDirs, "--cgroup-parent", r.CgroupParent}, args...)
}

// Command is the runner with args on the node, not started.
func (r *Runner) Command(ctx context.Context, args ...string) *exec.Cmd {
	full := r.Args(args...)
	return exec.CommandContext(ctx, full[0], full[1:]...)
}

// Run runs the runner and returns its stdout. The error carries the
// exit status and stderr.
func (r *Runner) Run(ctx context.Context, args ...string) (string, error) {
	cmd := r.Command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("runner %s on %s: %w: %s%s", strings.Join(args, " "), r.Node.Host, err,
			strings.TrimSpace(stderr.String()), strings.TrimSpace(stdout.String()))
	}
	return stdout.String(), nil
}

// Container is a container the runner started on a node.
type Container struct {
	*runner.Container
	Node *Node
	IP   netip.Addr // its first address on its CNI network
	IPv6 netip.Addr // its first IPv6 address (zero without one)
}

// NetNSPath is the bind mount of the container's network namespace.
func (c *Container) NetNSPath() string { return c.State.NetNS }

// Inspect returns the runner's record of the container named name.
func (r *Runner) Inspect(ctx context.Context, name string) (*Container, error) {
	out, err := r.Run(ctx, "inspect", name)
	if err != nil {
		return nil, err
	}
	var recs []*runner.Container
	if err := json.Unmarshal([]byte(out), &recs); err != nil || len(recs) != 1 {
		return nil, fmt.Errorf("runner inspect %s on %s: %v: %s", name, r.Node.Host, err, out)
	}
	c := &Container{Container: recs[0], Node: r.Node}
	for i, s := range c.IPs() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("runner inspect %s on %s: address %q: %w", name, r.Node.Host, s, err)
		}
		if i == 0 {
			c.IP = ip
		}
		if ip.Is6() && !c.IPv6.IsValid() {
			c.IPv6 = ip
		}
	}
	return c, nil
}

// Start runs a detached container: `runner run -d --name name args...`,
// where args are further run flags, "--" and the command. It returns the
// container's record.
func (r *Runner) Start(ctx context.Context, name string, args ...string) (*Container, error) {
	if _, err := r.Run(ctx, append([]string{"run", "-d", "--name", name}, args...)...); err != nil {
		return nil, err
	}
	return r.Inspect(ctx, name)
}

// Exec runs a command in a running container and returns its combined
// output (`runner exec`). The error carries the output.
func (c *Container) Exec(ctx context.Context, args ...string) (string, error) {
	r, err := c.Node.Runner()
	if err != nil {
		return "", err
	}
	cmd := r.Command(ctx, append([]string{"exec", c.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("runner exec %s %s on %s: %w: %s", c.Name, strings.Join(args, " "), c.Node.Host, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// RemoveAll removes every container of the node (`runner rm -f`), which
// detaches them from their networks (CNI DEL), then their cgroup parent.
func (r *Runner) RemoveAll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := r.Run(ctx, "ps", "-a", "-q")
	if err != nil {
		return err
	}
	if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := r.Run(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
			return err
		}
	}
	return RemoveCgroupTree(r.CgroupParent)
}
