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
	"syscall"
	"time"

	"github.com/berthnet/berth/bench"
)

func main() {
	quick := flag.Bool("quick", os.Getenv("BENCH_QUICK") != "", "fewer runs (also BENCH_QUICK=1): under 2 minutes")
	binDir := flag.String("bin-dir", "bin", "where `make build` put berth's binaries")
	refDir := flag.String("ref-dir", "/usr/lib/cni", "the reference CNI plugins")
	out := flag.String("out", "bench/results", "results directory")
	readme := flag.String("readme", "README.md", "README whose bench section is rewritten")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: bench [-quick]\n\nMeasures CNI ADD/DEL latency of berth against the reference plugins\n(inside namespaces it creates) and writes %s, plots and the README table.\n\n", "bench/results/results.json")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*quick, *binDir, *refDir, *out, *readme); err != nil {
		slog.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

func run(quick bool, binDir, refDir, out, readme string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(binDir)
	if err != nil {
		return err
	}
	start := time.Now()
	progress := func(format string, args ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	runs := 150
	if quick {
		runs = 30
	}
	r := &bench.Report{When: time.Now(), Quick: quick}
	r.CNILatency, err = bench.MeasureCNI(ctx, bench.CNIConfig{Runs: runs, Parallel: 8, BinDirs: []string{abs, refDir}, Progress: progress})
	if err != nil {
		return fmt.Errorf("CNI latency: %w", err)
	}
	seconds, repeats, trips := 4, 3, 5000
	if quick {
		seconds, repeats, trips = 2, 1, 1000
	}
	dpCfg := bench.DatapathConfig{Seconds: seconds, Repeats: repeats, RoundTrips: trips, Progress: progress}
	raw, rawDone, err := bench.RawVeth()
	if err != nil {
		return err
	}
	d, err := bench.MeasureDatapath(ctx, "raw veth", raw, dpCfg)
	rawDone()
	if err != nil {
		return err
	}
	r.Datapath = append(r.Datapath, d)
	br, brDone, err := bench.BridgeContainers(ctx, []string{abs, refDir})
	if err != nil {
		return err
	}
	d, err = bench.MeasureDatapath(ctx, "bridge (one node)", br, dpCfg)
	brDone()
	if err != nil {
		return err
	}
	d.Baseline = "raw veth"
	r.Datapath = append(r.Datapath, d)
	cross, err := bench.CrossNode(ctx, bench.CrossNodeConfig{Datapath: dpCfg, Progress: progress, BinDir: abs, RefDir: refDir})
	if err != nil {
		return fmt.Errorf("cross-node datapath: %w", err)
	}
	r.Datapath = append(r.Datapath, cross...)

	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := r.WriteJSON(out); err != nil {
		return err
	}
	if err := r.PlotCNI(filepath.Join(out, "cni-latency.png")); err != nil {
		return fmt.Errorf("plotting: %w", err)
	}
	if err := r.PlotDatapath(filepath.Join(out, "datapath.png")); err != nil {
		return fmt.Errorf("plotting: %w", err)
	}
	if err := r.UpdateREADME(readme); err != nil {
		return err
	}
	fmt.Print(r.Markdown())
	progress("done")
	return nil
}
