package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthnet/berth/test/testbed"
)

// Node is a Kubernetes node: a test bed node (its network namespace) with
// a private mount namespace in which containerd and the kubelet run.
type Node struct {
	*testbed.Node
	Name string // the Node object's name (the test bed's host name, node<N>)
	// Root holds the node's own /run, /var/lib, /var/log, /etc/cni and
	// /opt; HostPath maps a path on the node to the machine's.
	Root string
	// Socket is containerd's socket, as seen from the machine.
	Socket string

	cluster    *Cluster
	cgroup     string // /<test bed id>/<node>: everything of the node runs below it
	mountNS    string // /proc/<pid>/ns/mnt of the process holding the mount namespace
	holder     *testbed.Process
	containerd *testbed.Process
	kubelet    *testbed.Process
}

// privateDirs are the directories a node has of its own: mounted over the
// machine's in the node's mount namespace.
var privateDirs = []string{"/run", "/var/lib", "/var/log", "/etc/cni", "/opt"}

// kernelTunables are the values the kubelet checks in /proc/sys and
// writes when they differ (pkg/kubelet/cm: setupKernelTunables). Files
// holding them are bound over /proc/sys in the node's mount namespace, so
// the kubelet finds what it wants and the machine's values never change.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// The CNI plugin a node has before any network is installed: containerd
// sets up every pod's loopback with it (what the kubernetes-cni /
// containernetworking-plugins package provides on a real node).
const referenceLoopback = "/usr/lib/cni/loopback"

// HostPath is where path of the node (e.g. /run/berth/berth.json) is on
// the machine.
func (n *Node) HostPath(path string) string {
	for _, d := range privateDirs {
		if path == d || strings.HasPrefix(path, d+"/") {
			return filepath.Join(n.Root, path)
		}
	}
	return path // shared with the machine
}

// Command is args run in the node's network and mount namespaces, as a
// process of the node would run (e.g. iptables-save, ls /opt/cni/bin).
func (n *Node) Command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--net=" + n.Path(), "--mount=" + n.mountNS, "--"}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// Exec runs args on the node and returns the combined output; the error
// carries it.
func (n *Node) Exec(ctx context.Context, args ...string) (string, error) {
	out, err := n.Command(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (c *Cluster) startNode(ctx context.Context, tn *testbed.Node) (*Node, error) {
	n := &Node{
		Node:    tn,
		Name:    tn.Host,
		Root:    filepath.Join(tn.Dir, "root"),
		cluster: c,
		cgroup:  "/" + c.TB.ID + "/" + tn.Host,
	}
	n.Socket = n.HostPath("/run/containerd/containerd.sock")
	if err := n.prepare(); err != nil {
		return nil, fmt.Errorf("kubecluster: %s: %w", n.Name, err)
	}
	if err := n.startHolder(ctx); err != nil {
		return n, fmt.Errorf("kubecluster: %s: %w", n.Name, err)
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, fmt.Errorf("kubecluster: %s: %w", n.Name, err)
	}
	if err := n.startKubelet(); err != nil {
		return n, fmt.Errorf("kubecluster: %s: %w", n.Name, err)
	}
	return n, nil
}

// prepare makes the node's directories, files and cgroups.
func (n *Node) prepare() error {
	for _, d := range privateDirs {
		if err := os.MkdirAll(filepath.Join(n.Root, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"/etc/cni/net.d", "/opt/cni/bin", "/run/containerd", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/netns"} {
		if err := os.MkdirAll(n.HostPath(d), 0o755); err != nil {
			return err
		}
	}
	loopback, err := os.ReadFile(referenceLoopback)
	if err != nil {
		return fmt.Errorf("containerd needs the loopback CNI plugin (apt-get install containernetworking-plugins): %w", err)
	}
	if err := os.WriteFile(n.HostPath("/opt/cni/bin/loopback"), loopback, 0o755); err != nil {
		return err
	}
	for name, v := range kernelTunables {
		if err := os.MkdirAll(filepath.Join(n.Dir, "sysctl"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(n.tunableFile(name), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	for _, cg := range []string{n.cgroup + "/daemons", n.cgroup + "/kube"} {
		if err := createCgroup(cg); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) tunableFile(name string) string {
	return filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(name, "/", "."))
}

// inCgroup wraps args so that the process joins the node's daemons cgroup
// (in every hierarchy) before it execs: whatever it forks (containerd's
// shims) is found and killed there.
func (n *Node) inCgroup(args ...string) (string, []string, error) {
	mounts, err := testbed.CgroupMounts()
	if err != nil {
		return "", nil, err
	}
	var files []string
	for _, m := range mounts {
		files = append(files, filepath.Join(m, n.cgroup, "daemons", "cgroup.procs"))
	}
	script := `for f in ` + strings.Join(files, " ") + `; do echo $$ > "$f" || exit 1; done; exec "$@"`
	return "/bin/sh", append([]string{"-c", script, "sh"}, args...), nil
}

// startHolder creates the node's mount namespace: a process started with
// unshare mounts the node's directories and tunables, then sleeps; the
// node's daemons enter its namespace with nsenter.
func (n *Node) startHolder(ctx context.Context) error {
	ready := filepath.Join(n.Dir, "mounts-ready")
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range privateDirs {
		fmt.Fprintf(&script, "mount --bind %s %s\n", filepath.Join(n.Root, d), d)
	}
	for name := range kernelTunables {
		fmt.Fprintf(&script, "mount --bind %s /proc/sys/%s\n", n.tunableFile(name), name)
	}
	// The node's own BPF filesystem where a node has it: the eBPF
	// datapath's pins, which netd's pod and the plugins share.
	bpffs, err := n.MountBPFFS()
	if err != nil {
		return err
	}
	fmt.Fprintf(&script, "mount --bind %s /sys/fs/bpf\n", bpffs)
	fmt.Fprintf(&script, "touch %s\nexec sleep infinity\n", ready)
	path, args, err := n.inCgroup("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script.String())
	if err != nil {
		return err
	}
	n.holder, err = n.Start(testbed.ProcSpec{Name: "mounts-" + n.Name, Path: path, Args: args})
	if err != nil {
		return err
	}
	n.mountNS = fmt.Sprintf("/proc/%d/ns/mnt", n.holder.PID)
	return n.cluster.poll(ctx, 10*time.Second, n.Name+"'s mount namespace", func() error {
		if _, err := os.Stat(ready); err != nil {
			return exitedOr(n.holder, err)
		}
		return nil
	})
}

// startNodeProc starts args inside the node's namespaces and cgroup.
func (n *Node) startNodeProc(name string, args ...string) (*testbed.Process, error) {
	path, full, err := n.inCgroup(append([]string{"nsenter", "--mount=" + n.mountNS, "--"}, args...)...)
	if err != nil {
		return nil, err
	}
	return n.Start(testbed.ProcSpec{Name: name, Path: path, Args: full})
}

// PauseImage is the sandbox image every node's containerd uses; see
// Cluster.LoadTestImages.
const PauseImage = "berth.test/pause:1"

func (n *Node) startContainerd(ctx context.Context) error {
	config := filepath.Join(n.Dir, "containerd.toml")
	err := os.WriteFile(config, []byte(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "`+PauseImage+`"
  # The sandbox withholds CAP_SYS_RESOURCE: no process here may lower its
  # oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`), 0o644)
	if err != nil {
		return err
	}
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return err
	}
	if n.containerd, err = n.startNodeProc("containerd-"+n.Name, bin, "--config", config); err != nil {
		return err
	}
	return n.cluster.poll(ctx, time.Minute, n.Name+"'s containerd", func() error {
		out, err := n.ctr(ctx, "version")
		if err != nil {
			return exitedOr(n.containerd, fmt.Errorf("%w: %s", err, out))
		}
		return nil
	})
}

// ctr runs containerd's ctr against the node's containerd, in the
// Kubernetes (CRI) namespace.
func (n *Node) ctr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.Socket, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

func (n *Node) startKubelet() error {
	c := n.cluster
	cert, err := c.pki.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, nil, nil)
	if err != nil {
		return err
	}
	serving, err := c.pki.issue("kubelet-serving-"+n.Name, n.Name, nil, []netip.Addr{n.IP}, []string{n.Name})
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := c.pki.kubeconfig(kubeconfig, c.APIServer, "system:node:"+n.Name, cert); err != nil {
		return err
	}
	config := filepath.Join(n.Dir, "kubelet.yaml")
	err = os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroups v1 only.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s/kube
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization: {mode: AlwaysAllow}
failSwapOn: false
# No CAP_SYS_RESOURCE: the kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
shutdownGracePeriod: 0s
resolvConf: /etc/resolv.conf
`, n.cgroup, n.IP, serving.Cert, serving.Key, c.pki.Cert)), 0o644)
	if err != nil {
		return err
	}
	nodeIP := n.IP.String()
	if c.Options.ClusterCIDRv6.IsValid() {
		nodeIP += "," + n.IPv6.String()
	}
	n.kubelet, err = n.startNodeProc("kubelet-"+n.Name, c.bin("kubelet"),
		"--config="+config, "--kubeconfig="+kubeconfig,
		"--hostname-override="+n.Name, "--node-ip="+nodeIP, "--v=1")
	return err
}

// stop kills the kubelet (first, so it starts nothing more), containerd,
// and then everything else of the node: the shims and pods in its
// cgroups, and the mount namespace's holder. With the last process of the
// mount namespace gone, its mounts (pod network namespaces, volumes,
// container root filesystems) go with it.
func (n *Node) stop() error {
	var errs []error
	for _, p := range []*testbed.Process{n.kubelet, n.containerd} {
		if p != nil {
			errs = append(errs, p.Kill())
		}
	}
	errs = append(errs, testbed.RemoveCgroupTree(n.cgroup))
	if n.holder != nil {
		errs = append(errs, n.holder.Kill())
	}
	return errors.Join(errs...)
}

// RestartKubelet stops the node's kubelet and starts it again (its pods
// keep running in containerd). A kubelet registers its Node when it
// starts: this brings back a Node that was deleted from the cluster.
func (n *Node) RestartKubelet() error {
	if n.kubelet != nil {
		if err := n.kubelet.Kill(); err != nil {
			return fmt.Errorf("stopping %s's kubelet: %w", n.Name, err)
		}
	}
	return n.startKubelet()
}
