// Command bench is `make bench`: it measures berth against its baselines
// side by side, inside namespaces it creates, and writes
// bench/results/results.json, the plots and the README table. A quick run
// writes bench/results/quick/ and leaves the README and the full run's
// results alone; -render redraws plots and README from a results file.
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
	"strconv"
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
	// render is a results.json to draw again instead of measuring;
	// machine fills in where it was measured when the file does not say.
	render, machine string
	cpModes         []string // control plane: modes (empty: all)
	cpSizes         []int    // control plane: cluster sizes (empty: the default)
}

// Where results go. Only a full run's are committed and shown in the
// README; a quick run's are indicative and go aside.
const (
	fullOut  = "bench/results"
	quickOut = "bench/results/quick"
)

func main() {
	var o options
	var only, cpModes, cpSizes string
	flag.BoolVar(&o.quick, "quick", os.Getenv("BENCH_QUICK") != "", "fewer runs and smaller clusters (also BENCH_QUICK=1): under 2 minutes")
	flag.StringVar(&o.binDir, "bin-dir", "bin", "where `make build` put berth's binaries")
	flag.StringVar(&o.refDir, "ref-dir", "/usr/lib/cni", "the reference CNI plugins")
	flag.StringVar(&o.out, "out", "", "results directory (default "+fullOut+", for -quick "+quickOut+")")
	flag.StringVar(&o.readme, "readme", "README.md", "README whose bench section a full run rewrites")
	flag.StringVar(&o.render, "render", "", "measure nothing: draw the plots (and, for a full run's file, the README section) again\nfrom this results.json, e.g. "+fullOut+"/results.json")
	flag.StringVar(&o.machine, "machine", "", "with -render: where the results were measured, when the file does not say\n(\"here\": this machine)")
	flag.StringVar(&only, "parts", os.Getenv("BENCH_PARTS"), "comma-separated subset of "+strings.Join(parts, ",")+
		" (also BENCH_PARTS); empty: all.\nA partial run prints its tables but rewrites neither results nor README")
	flag.StringVar(&cpModes, "cp-modes", os.Getenv("BENCH_CP_MODES"), "control plane: comma-separated modes to measure, e.g. vxlan,hostgw (also BENCH_CP_MODES); empty: all")
	flag.StringVar(&cpSizes, "cp-sizes", os.Getenv("BENCH_CP_SIZES"), "control plane: comma-separated cluster sizes, e.g. 3,20 (also BENCH_CP_SIZES); empty: 3,10,20,25,50 (quick: 3,10).\n"+
		"A run with -cp-modes or -cp-sizes is partial: it rewrites neither results nor README")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, `Usage: bench [-quick] [-parts LIST]

Measures berth against its baselines, side by side in one run, inside
network namespaces it creates: CNI ADD/DEL latency of every berth plugin
against the reference bridge+host-local+portmap chain; container-to-container
throughput and round trip per mode against raw veth and the raw underlay;
control-plane convergence, memory and CPU of netd as the cluster grows.
A full run writes bench/results/results.json, PNG plots and the README's
bench section; a quick run (-quick) writes bench/results/quick/ only, so the
committed figures stay those of a full run.

Example: make bench BENCH_QUICK=1      (or: bin/bench -quick -parts cni)
         make bench-render             (plots and README again from bench/results/results.json)

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
	if cpModes != "" {
		o.cpModes = strings.Split(cpModes, ",")
	}
	for _, f := range strings.FieldsFunc(cpSizes, func(r rune) bool { return r == ',' }) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 2 {
			fmt.Fprintf(os.Stderr, "bench: -cp-sizes: %q is not a cluster size (2 nodes or more)\n", f)
			os.Exit(2)
		}
		o.cpSizes = append(o.cpSizes, n)
	}
	if (len(o.cpModes) > 0 || len(o.cpSizes) > 0) && len(o.parts) == 0 {
		o.parts = slices.Clone(parts) // partial: results and README keep every mode and size
	}
	var err error
	if o.render != "" {
		err = render(o)
	} else {
		err = run(o)
	}
	if err != nil {
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
	r := &bench.Report{When: time.Now(), Quick: o.quick, Machine: bench.DescribeMachine()}

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
		r.ControlPlane, err = bench.MeasureControlPlane(ctx, bench.ControlPlaneConfig{Quick: o.quick, BinDir: abs, Progress: progress,
			Modes: o.cpModes, Sizes: o.cpSizes})
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
	if err := write(r, o, true); err != nil {
		return err
	}
	fmt.Print(r.Markdown())
	progress("done")
	return nil
}

// write stores r's results and plots: a full run's in bench/results and
// the README, a quick run's in bench/results/quick only. It says where.
func write(r *bench.Report, o options, writeJSON bool) error {
	out := o.out
	if out == "" {
		out = fullOut
		if r.Quick {
			out = quickOut
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if writeJSON {
		if err := r.WriteJSON(out); err != nil {
			return err
		}
	}
	if err := r.Plot(out); err != nil {
		return fmt.Errorf("plotting: %w", err)
	}
	if r.Quick {
		fmt.Printf("quick run: results and plots in %s; %s and the README keep the last full run's\n", out, fullOut)
		return nil
	}
	if err := r.UpdateREADME(o.readme); err != nil {
		return err
	}
	fmt.Printf("results and plots in %s, README section updated\n", out)
	return nil
}

// render draws plots and README again from a results file.
func render(o options) error {
	r, err := bench.ReadReport(o.render)
	if err != nil {
		return err
	}
	rewrite := false
	if r.Machine == "" && o.machine != "" {
		r.Machine, rewrite = o.machine, true
		if o.machine == "here" {
			r.Machine = bench.DescribeMachine()
		}
	}
	r.Finish()
	if o.out == "" {
		o.out = filepath.Dir(o.render)
	}
	return write(r, o, rewrite)
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
