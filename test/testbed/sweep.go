package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Sweep removes what test beds of processes that no longer run left
// behind: it kills the processes inside their namespaces (by PID), deletes
// the namespaces and removes their temporary directories. Test beds of
// running processes, including this one, are left alone.
func Sweep() error {
	var errs []error
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if !stale(e.Name()) {
			continue
		}
		if err := killInside(filepath.Join(netnsDir, e.Name())); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNetNS(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	tmp := os.TempDir()
	entries, err = os.ReadDir(tmp)
	if err != nil {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if e.IsDir() && stale(e.Name()) {
			if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// stale reports whether name was made by a test bed whose process is gone.
// Names are Prefix + "<pid>x<random>-...".
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return false
	}
	pidStr, _, ok := strings.Cut(rest, "x")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return false
	}
	return !alive(pid)
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killInside SIGKILLs every process whose network namespace is the one
// mounted at nsPath. Only test bed processes run in test bed namespaces.
func killInside(nsPath string) error {
	ino, err := nsInode(nsPath)
	if err != nil {
		return nil // not mounted any more
	}
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		if i, err := nsInode(p); err != nil || i != ino {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
		if pid != os.Getpid() && syscall.Kill(pid, syscall.SIGKILL) == nil {
			pids = append(pids, pid)
		}
	}
	return waitFor(5*time.Second, func() error {
		for _, pid := range pids {
			if alive(pid) && !zombie(pid) {
				return fmt.Errorf("process %d in %s survived SIGKILL", pid, nsPath)
			}
		}
		return nil
	})
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}
