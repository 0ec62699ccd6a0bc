// Package runner is berth's small container runner: it creates
// containers (namespaces, overlay rootfs, cgroups), attaches them to CNI
// networks through libcni exactly as containerd or CRI-O would, keeps
// them under a supervisor process, and cleans up after them. The
// command-line interface is in runner/cli; cmd/runner is its main.
//
// Every runner process must run in the network namespace of the node the
// containers belong to: CNI plugins create bridges and iptables rules in
// the namespace they are executed in.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/berthnet/berth/runner/cgroups"
	"github.com/berthnet/berth/runner/rootfs"
)

func init() {
	// The runner leaves threads in other namespaces and cgroups (see
	// startIn and newNetNS) and relies on Go ending them with their
	// goroutine. Go never ends the main thread, so no such goroutine may
	// run on it: locking the main goroutine to it here keeps every other
	// goroutine off the main thread for the life of the program.
	runtime.LockOSThread()
}

// Defaults of Config.
const (
	DefaultStateDir     = "/run/berth/runner"
	DefaultCNIConfDir   = "/etc/cni/net.d"
	DefaultCNIBinDirs   = "/opt/cni/bin:/usr/lib/cni"
	DefaultCgroupParent = "/berth"
)

// Config says where the runner keeps and finds things.
type Config struct {
	StateDir   string   `json:"stateDir"`
	CNIConfDir string   `json:"cniConfDir"`
	CNIBinDirs []string `json:"cniBinDirs"`
	// CgroupParent is the cgroup (in every hierarchy) under which each
	// container gets its own, named by its id.
	CgroupParent string `json:"cgroupParent"`
	// Debug makes the supervisor log at debug level.
	Debug bool `json:"debug,omitempty"`
}

// Runtime runs containers for one node.
type Runtime struct {
	cfg   Config
	store *store
	log   *slog.Logger
}

// New checks cfg. It creates nothing: the state directory is made by the
// first command that writes to it (run), so that read-only commands (ps,
// inspect, logs, networks) leave a fresh machine as it was.
func New(cfg Config, log *slog.Logger) (*Runtime, error) {
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, invalid("--state-dir %q must be an absolute path", cfg.StateDir)
	}
	if strings.ContainsAny(cfg.StateDir, ",:") {
		return nil, invalid("--state-dir %q may not contain ',' or ':' (overlayfs option syntax)", cfg.StateDir)
	}
	if p := cfg.CgroupParent; !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return nil, invalid("--cgroup-parent %q must be an absolute cgroup path below the root, e.g. /berth", p)
	}
	if len(cfg.CNIBinDirs) == 0 {
		return nil, invalid("--cni-bin-dir is empty: name the directories holding CNI plugins, e.g. /opt/cni/bin:/usr/lib/cni")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runtime{cfg: cfg, store: &store{dir: filepath.Clean(cfg.StateDir)}, log: log}, nil
}

// Create validates spec against the system, reserves the container's
// name and host ports and writes its record. Nothing runs yet. On error
// nothing is left behind.
func (r *Runtime) Create(ctx context.Context, spec Spec) (*Container, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := r.store.init(); err != nil {
		return nil, err
	}
	nodeNS, err := currentNetNS()
	if err != nil {
		return nil, err
	}
	c := &Container{ID: newID(), Name: spec.Name, Created: time.Now().UTC(), Spec: spec, NodeNetNS: nodeNS}
	if c.Name == "" {
		c.Name = ShortID(c.ID)
	}
	if c.Spec.Hostname == "" {
		c.Spec.Hostname = c.Name
		if !hostnameRE.MatchString(c.Name) {
			c.Spec.Hostname = ShortID(c.ID)
		}
	}
	if n := spec.Network; n != NetNone && n != NetHost {
		net, err := r.network(n)
		if err != nil {
			return nil, err
		}
		if len(spec.publishedPorts()) > 0 && !net.PortMappings {
			return nil, invalid("network %s cannot publish ports: no plugin in %s declares the portMappings capability (add the portmap plugin)", n, net.File)
		}
		c.State.Network = &Attachment{Network: n, IfName: ifName, ConfList: net.list.Bytes}
	}
	if _, err := r.hierarchy(); err != nil {
		return nil, err
	}
	if c.Rootfs = spec.Rootfs; c.Rootfs == "" {
		bb, err := rootfs.FindBusybox()
		if err != nil {
			return nil, err
		}
		if c.Rootfs, err = rootfs.Busybox(filepath.Join(r.store.dir, "rootfs"), bb); err != nil {
			return nil, err
		}
	}
	c.State.Status = StatusCreated
	c.State.ExitCode = -1

	unlock, err := r.store.lockGlobal()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := r.claimName(c); err != nil {
		return nil, err
	}
	if c.Ports, err = r.reservePorts(c.ID, spec.publishedPorts()); err != nil {
		r.discard(c)
		return nil, err
	}
	if err := os.MkdirAll(r.store.containerDir(c.ID), 0o700); err != nil {
		r.discard(c)
		return nil, fmt.Errorf("creating container directory: %w", err)
	}
	if err := r.store.save(c); err != nil {
		r.discard(c)
		return nil, err
	}
	return c, nil
}

// ErrNameInUse means --name is taken by another container.
var ErrNameInUse = errors.New("container name already in use")

func (r *Runtime) claimName(c *Container) error {
	link := r.store.namePath(c.Name)
	for try := 0; try < 2; try++ {
		err := os.Symlink(c.ID, link)
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		owner, _ := os.Readlink(link)
		if _, err := r.store.load(owner); err == nil {
			return fmt.Errorf("%w: %q is container %s: choose another --name, or remove it with runner rm -f %s",
				ErrNameInUse, c.Name, ShortID(owner), c.Name)
		}
		// The owner's record is gone (removed by hand): a stale link.
		os.Remove(link)
	}
	return fmt.Errorf("%w: %q", ErrNameInUse, c.Name)
}

// discard deletes everything of c that lives in the state directory. The
// caller made sure nothing of it runs or is attached any more.
func (r *Runtime) discard(c *Container) {
	r.releasePorts(c.ID, c.Ports)
	if owner, err := os.Readlink(r.store.namePath(c.Name)); err == nil && owner == c.ID {
		os.Remove(r.store.namePath(c.Name))
	}
	removeNetNS(r.store.netnsPath(c.ID))
	if err := os.RemoveAll(r.store.containerDir(c.ID)); err != nil {
		r.log.Warn("removing container directory", "container", c.Name, "err", err)
	}
}

// teardown releases what c holds on the system: its processes, CNI
// attachment, network namespace, cgroups and host ports, and marks it
// exited. Each step is idempotent and recorded as done, so teardown can
// be repeated after a crash or a failure. It returns what it released, as
// a person would say it. The caller holds c's lock.
func (r *Runtime) teardown(ctx context.Context, c *Container) (released []string, err error) {
	var errs []error
	st := &c.State
	if st.Attached {
		// Refuse before killing anything: the plugins' rules can only be
		// removed from the namespace they were added in.
		if err := checkNode(c); err != nil {
			return nil, err
		}
	}
	if alive(st.Pid, st.PidStart) {
		if err := sendSignal(st.Pid, st.PidStart, syscall.SIGKILL); err != nil {
			errs = append(errs, err)
		} else {
			released = append(released, fmt.Sprintf("killed pid 1 (%d)", st.Pid))
		}
	}
	if st.Cgroup != nil {
		if err := st.Cgroup.Destroy(ctx); err != nil {
			errs = append(errs, err)
		} else {
			st.Cgroup = nil
			released = append(released, "cgroups")
		}
	}
	netFreed := !st.Attached
	if st.Attached {
		if err := r.detach(ctx, c); err != nil {
			errs = append(errs, err)
		} else {
			netFreed, st.Attached = true, false
			what := "removed from network " + st.Network.Network
			if len(st.Network.IPs) > 0 {
				what += " (" + strings.Join(st.Network.IPs, ", ") + ")"
			}
			released = append(released, what)
		}
	}
	// The namespace goes after DEL, so plugins still find the interface.
	if st.NetNS != "" && netFreed {
		if err := removeNetNS(st.NetNS); err != nil {
			errs = append(errs, err)
		} else {
			st.NetNS = ""
			released = append(released, "network namespace")
		}
	}
	if netFreed {
		if n := r.releasePorts(c.ID, c.Ports); n > 0 {
			released = append(released, fmt.Sprintf("%d host port(s)", n))
		}
	}
	if st.Status != StatusExited {
		st.Status = StatusExited
		st.FinishedAt = time.Now().UTC()
	}
	if err := r.store.save(c); err != nil {
		errs = append(errs, err)
	}
	return released, errors.Join(errs...)
}

// ErrWrongNode means a runner tried to detach a container from another
// network namespace than the one it was attached in.
var ErrWrongNode = errors.New("wrong network namespace")

// checkNode fails unless this runner runs in the network namespace c
// was attached in.
func checkNode(c *Container) error {
	here, err := currentNetNS()
	if err != nil {
		return err
	}
	if here != c.NodeNetNS {
		return fmt.Errorf("%w: container %s was attached in network namespace %s but this runner runs in %s; run it there (nsenter --net=...) so that CNI DEL removes the right rules",
			ErrWrongNode, c.Name, c.NodeNetNS, here)
	}
	return nil
}

func (r *Runtime) hierarchy() (*cgroups.Hierarchy, error) {
	h, err := cgroups.Detect()
	if err != nil {
		// ip netns exec mounts a fresh /sys, hiding /sys/fs/cgroup.
		return nil, fmt.Errorf("%w (started with ip netns exec, which remounts /sys? use nsenter --net=/run/netns/NAME runner ... to enter a node's network namespace)", err)
	}
	return h, nil
}

// configEnv carries Config to re-executed runner processes.
const configEnv = "_BERTH_RUNNER_CONFIG"

func (r *Runtime) encodeConfig() string {
	data, _ := json.Marshal(r.cfg)
	return configEnv + "=" + string(data)
}

// NewLogger is the runner's logger: warnings and errors, or everything
// with debug.
func NewLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelWarn
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
