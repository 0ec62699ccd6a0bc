package runner

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStart returns the start time of pid (clock ticks after boot) and
// whether it is a zombie. Together with the pid the start time names a
// process uniquely: a recycled pid has a later one.
func procStart(pid int) (start uint64, zombie bool, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(data)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// rest[0] is field 3 (state), so field 22 (starttime) is rest[19].
	if len(rest) < 20 {
		return 0, false, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(rest[19], 10, 64)
	return start, rest[0] == "Z", err
}

// alive reports whether the process pid that started at start still runs.
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	s, zombie, err := procStart(pid)
	return err == nil && s == start && !zombie
}

// sendSignal sends sig to pid unless the pid now belongs to another process.
func sendSignal(pid int, start uint64, sig syscall.Signal) error {
	if !alive(pid, start) {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("sending %v to pid %d: %w", sig, pid, err)
	}
	return nil
}

// waitGone polls until the process is gone, d passed or ctx is done.
func waitGone(ctx context.Context, pid int, start uint64, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for alive(pid, start) {
		if !sleep(ctx, 25*time.Millisecond) {
			return false
		}
	}
	return true
}

// sleep waits d; it returns false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// currentNetNS names the network namespace this process runs in.
func currentNetNS() (string, error) {
	id, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		return "", fmt.Errorf("reading own network namespace: %w", err)
	}
	return id, nil
}
