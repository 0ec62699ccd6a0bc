package runner

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/runner/cgroups"
)

// birth says which namespaces and cgroup a new process is born into.
type birth struct {
	netns  string          // network namespace file to join, "" to stay
	nsOf   int             // join every namespace of this pid (exec), 0 for none
	cgroup *cgroups.Cgroup // cgroup to start in, nil to stay
}

// startIn starts the command build returns from a dedicated OS thread
// that first entered b's namespaces and cgroups, so the child is born
// inside them: no window in which it runs outside its limits or network,
// and no setns in the child (which Go cannot do between fork and exec).
// build runs on that thread, so it resolves paths in the container's root.
func startIn(b birth, build func() (*exec.Cmd, error)) (*exec.Cmd, error) {
	type res struct {
		cmd *exec.Cmd
		err error
	}
	done := make(chan res, 1)
	go func() {
		// Never unlocked: the thread's namespaces differ from the rest
		// of the process, so Go must discard it when the goroutine ends.
		runtime.LockOSThread()
		cmd, err := startOnThisThread(b, build)
		done <- res{cmd, err}
	}()
	r := <-done
	return r.cmd, r.err
}

// containerNamespaces are joined by exec, in this order: the mount
// namespace last, because entering it changes what /proc shows.
var containerNamespaces = []struct {
	name string
	flag int
}{
	{"ipc", unix.CLONE_NEWIPC},
	{"uts", unix.CLONE_NEWUTS},
	{"net", unix.CLONE_NEWNET},
	{"pid", unix.CLONE_NEWPID}, // applies to children of the thread only
	{"cgroup", unix.CLONE_NEWCGROUP},
	{"mnt", unix.CLONE_NEWNS},
}

func startOnThisThread(b birth, build func() (*exec.Cmd, error)) (*exec.Cmd, error) {
	type nsFile struct {
		f    *os.File
		flag int
	}
	var join []nsFile
	defer func() {
		for _, n := range join {
			n.f.Close()
		}
	}()
	if b.netns != "" {
		f, err := os.Open(b.netns)
		if err != nil {
			return nil, fmt.Errorf("opening network namespace: %w", err)
		}
		join = append(join, nsFile{f, unix.CLONE_NEWNET})
	}
	if b.nsOf > 0 {
		// All opened before the first setns, while /proc is still ours.
		for _, n := range containerNamespaces {
			f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", b.nsOf, n.name))
			if os.IsNotExist(err) && n.flag == unix.CLONE_NEWCGROUP {
				continue // kernel without cgroup namespaces
			}
			if err != nil {
				return nil, fmt.Errorf("opening container namespace: %w", err)
			}
			join = append(join, nsFile{f, n.flag})
		}
		// setns into a mount namespace refuses a thread that shares its
		// root and cwd with other threads, as all Go threads do.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return nil, fmt.Errorf("unsharing filesystem attributes: %w", err)
		}
	}
	// Cgroups before namespaces: cgroupfs is not mounted in the
	// container's mount namespace.
	var cgroupFD *os.File
	if b.cgroup != nil {
		if err := b.cgroup.JoinThread(); err != nil {
			return nil, err
		}
		var err error
		if cgroupFD, err = b.cgroup.OpenUnified(); err != nil {
			return nil, err
		}
		if cgroupFD != nil {
			defer cgroupFD.Close()
		}
	}
	for _, n := range join {
		if err := unix.Setns(int(n.f.Fd()), n.flag); err != nil {
			return nil, fmt.Errorf("entering namespace %s: %w", n.f.Name(), err)
		}
	}
	cmd, err := build()
	if err != nil {
		return nil, err
	}
	if cgroupFD != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		// CLONE_INTO_CGROUP: cgroup v2 cannot hold single threads, so
		// the child is placed there at clone time instead.
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgroupFD.Fd())
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}
