// Command netd-etcd is netd's embedded etcd, which netd starts as its
// child when the cluster has no etcd of its own; it is not meant to be
// run by hand. See package etcdserver for how the two talk.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"

	"github.com/berthnet/berth/internal/version"
	"github.com/berthnet/berth/netd/etcdserver"
)

const usage = `netd-etcd: the embedded etcd of berth's netd. netd starts it, next to its
own binary or from PATH, when neither --etcd-endpoints nor netd join gave it an
etcd; it reads its settings from netd on stdin and stops when netd does.

Usage:
  netd-etcd version   print the version
`

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "version", "--version":
			fmt.Println(version.Line("netd-etcd"))
			return
		default:
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		// A port or the data directory still held, by the netd-etcd of a
		// netd that just died: netd tries again.
		if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, fileutil.ErrLocked) {
			fmt.Printf("%s%v\n", etcdserver.AnswerBusy, err)
		} else {
			fmt.Printf("%s%v\n", etcdserver.AnswerError, err)
		}
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return fmt.Errorf("no settings on stdin: netd-etcd is started by netd")
	}
	var c etcdserver.Config
	if err := json.Unmarshal(in.Bytes(), &c); err != nil {
		return fmt.Errorf("settings from netd: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := startServer(ctx, c, log)
	if err != nil {
		return err
	}
	fmt.Println(etcdserver.AnswerReady)
	// "stop" on stdin: netd stops, so does etcd, cleanly. stdin closed
	// without it: netd died, and etcd ends at once as it did inside netd
	// (its write-ahead log makes that safe); a netd started again right
	// away finds the ports and the data directory free.
	stopped := make(chan bool, 1)
	go func() {
		for in.Scan() {
			if in.Text() == etcdserver.Stop {
				stopped <- true
				return
			}
		}
		stopped <- false
	}()
	select {
	case clean := <-stopped:
		if !clean {
			os.Exit(0)
		}
	case <-ctx.Done():
	case err := <-s.Err():
		s.Close()
		return fmt.Errorf("embedded etcd: %w", err)
	}
	// etcd's Close waits for its clients' streams to end (other nodes'
	// netds watch the leases) for up to its request timeout, 7 s; they
	// reconnect to the next netd-etcd anyway, and etcd's write-ahead log
	// is safe whenever the process ends.
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
	}
	return nil
}
