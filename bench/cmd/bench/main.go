// Command bench is `make bench`: it measures berth against its baselines
// side by side, inside namespaces it creates, and writes
// bench/results/results.json, the plots and the README table.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/berthnet/berth/bench"
)

// parts are the measurements, in the order they run.
var parts = []string{"cni", "datapath", "controlplane"}

type options struct {
	quick          bool
	binDir, refDir string
	out, readme    string
	parts          []string
	modes          []string // control plane: the netd modes (default all)
}

func main() {
	var o options
	var only, modes string
	flag.BoolVar(&o.quick, "quick", os.Getenv("BENCH_QUICK") != "", "fewer runs and smaller clusters (also BENCH_QUICK=1): under 2 minutes")
	flag.StringVar(&o.binDir, "bin-dir", "bin", "where `make build` put berth's binaries")
	flag.StringVar(&o.refDir, "ref-dir", "/usr/lib/cni", "the reference CNI plugins")
	flag.StringVar(&o.out, "out", "bench/results", "results directory")
	flag.StringVar(&o.readme, "readme", "README.md", "README whose bench section is rewritten")
	flag.StringVar(&only, "parts", os.Getenv("BENCH_PARTS"), "comma-separated subset of "+strings.Join(parts, ",")+
		" (also BENCH_PARTS); empty: all.\nA partial run prints its tables but rewrites neither results nor README")
	flag.StringVar(&modes, "modes", os.Getenv("BENCH_MODES"), "control plane: comma-separated netd modes to grow clusters of, e.g. bgp (also BENCH_MODES); empty: vxlan,hostgw,bgp.\n"+
		"A run with fewer modes is partial: it rewrites neither results nor README")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, `Usage: bench [-quick] [-parts LIST]

Measures berth against its baselines, side by side in one run, inside
network namespaces it creates: CNI ADD/DEL latency of every berth plugin
against the reference bridge+host-local+portmap chain; container-to-container
throughput and round trip per mode against raw veth and the raw underlay;
control-plane convergence, memory and CPU of netd as the cluster grows.
Writes bench/results/results.json, PNG plots and the README's bench section.

Example: make bench BENCH_QUICK=1      (or: bin/bench -quick -parts cni)

`)
		flag.PrintDefaults()
	}
	flag.Parse()
	if only != "" {
		o.parts = strings.Split(only, ",")
		for _, p := range o.parts {
			if !slices.Contains(parts, p) {
				fmt.Fprintf(os.Stderr, "bench: -parts: unknown part %q; choose from %s\n", p, strings.Join(parts, ","))
				os.Exit(2)
			}
		}
	}
	if modes != "" {
		o.modes = strings.Split(modes, ",")
		if len(o.parts) == 0 {
			o.parts = slices.Clone(parts) // partial: results and README keep every mode
		}
	}
	if err := run(o); err != nil {
		slog.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

func (o options) want(part string) bool { return len(o.parts) == 0 || slices.Contains(o.parts, part) }

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(o.binDir)
	if err != nil {
		return err
	}
	start := time.Now()
	progress := func(format string, args ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	r := &bench.Report{When: time.Now(), Quick: o.quick}

	if o.want("cni") {
		runs := 150
		if o.quick {
			runs = 20
		}
		r.CNILatency, err = bench.MeasureCNI(ctx, bench.CNIConfig{Runs: runs, Parallel: 8, BinDirs: []string{abs, o.refDir}, Progress: progress})
		if err != nil {
			return fmt.Errorf("CNI latency: %w", err)
		}
	}
	dpCfg := bench.DatapathConfig{Seconds: 3, Repeats: 5, RoundTrips: 5000, Progress: progress}
	if o.quick {
		dpCfg = bench.DatapathConfig{Seconds: 1, Repeats: 1, RoundTrips: 1000, Progress: progress}
	}
	if o.want("datapath") {
		if err := datapath(ctx, r, dpCfg, o, abs); err != nil {
			return err
		}
	}

	if o.want("controlplane") {
		r.ControlPlane, err = bench.MeasureControlPlane(ctx, bench.ControlPlaneConfig{Quick: o.quick, BinDir: abs, Modes: o.modes, Progress: progress})
		if err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
	}

	r.Finish()
	if len(o.parts) > 0 {
		fmt.Print(r.Markdown())
		progress("done (partial run: results and README left as they were)")
		return nil
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := r.WriteJSON(o.out); err != nil {
		return err
	}
	if err := r.Plot(o.out); err != nil {
		return fmt.Errorf("plotting: %w", err)
	}
	if err := r.UpdateREADME(o.readme); err != nil {
		return err
	}
	fmt.Print(r.Markdown())
	progress("done")
	return nil
}

// datapath measures one node (raw veth, berth-bridge, the reference
// bridge) and then two nodes (raw underlay, a plain VXLAN device, netd's
// modes), each set interleaved.
func datapath(ctx context.Context, r *bench.Report, cfg bench.DatapathConfig, o options, binDir string) error {
	local, err := bench.OneNodeDatapath(ctx, cfg, []string{binDir, o.refDir})
	if err != nil {
		return fmt.Errorf("one-node datapath: %w", err)
	}
	cross, err := bench.CrossNode(ctx, bench.CrossNodeConfig{Datapath: cfg, Progress: cfg.Progress, BinDir: binDir, RefDir: o.refDir})
	if err != nil {
		return fmt.Errorf("cross-node datapath: %w", err)
	}
	r.Datapath = append(local, cross...)
	return nil
}
