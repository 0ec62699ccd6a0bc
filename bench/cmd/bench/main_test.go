package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/bench"
)

const readmeText = "# x\n<!-- bench:begin -->\nfull run's figures\n<!-- bench:end -->\ntail\n"

func report(quick bool) *bench.Report {
	r := &bench.Report{When: time.Now(), Quick: quick, Machine: "test machine",
		CNILatency: []bench.Latency{
			{Name: "berth-bridge", Op: "ADD", Runs: 2, P50: time.Millisecond, P99: 2 * time.Millisecond},
			{Name: "reference bridge+host-local+portmap", Op: "ADD", Runs: 2, P50: 4 * time.Millisecond, P99: 5 * time.Millisecond},
		},
		Datapath: []bench.Datapath{{Name: "raw veth", Gbps1: 20, Gbps4: 30, RTTP50: 10 * time.Microsecond, RTTP99: 20 * time.Microsecond}},
	}
	r.Finish()
	return r
}

// inRepo runs the test in a directory laid out like the repository.
func inRepo(t *testing.T) {
	t.Chdir(t.TempDir())
	os.MkdirAll(fullOut, 0o755)
	os.WriteFile("README.md", []byte(readmeText), 0o644)
	os.WriteFile(filepath.Join(fullOut, "results.json"), []byte("full\n"), 0o644)
}

// A quick run writes bench/results/quick/ and leaves the README and the
// full run's results as they were.
func TestQuickRunKeepsFullResults(t *testing.T) {
	inRepo(t)
	if err := write(report(true), options{readme: "README.md"}, true); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.json", "cni-latency.png", "datapath.png"} {
		if _, err := os.Stat(filepath.Join(quickOut, f)); err != nil {
			t.Errorf("quick run wrote no %s: %v", f, err)
		}
	}
	if got, _ := os.ReadFile("README.md"); string(got) != readmeText {
		t.Errorf("quick run changed the README:\n%s", got)
	}
	if got, _ := os.ReadFile(filepath.Join(fullOut, "results.json")); string(got) != "full\n" {
		t.Errorf("quick run changed %s/results.json", fullOut)
	}
	if _, err := os.Stat(filepath.Join(fullOut, "cni-latency.png")); err == nil {
		t.Errorf("quick run wrote plots into %s", fullOut)
	}
}

// A full run writes bench/results and the README section.
func TestFullRunUpdatesREADME(t *testing.T) {
	inRepo(t)
	if err := write(report(false), options{readme: "README.md"}, true); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile("README.md")
	if strings.Contains(string(got), "full run's figures") || !strings.Contains(string(got), "on test machine") {
		t.Errorf("full run did not rewrite the README section:\n%s", got)
	}
	if r, err := bench.ReadReport(filepath.Join(fullOut, "results.json")); err != nil || r.Quick {
		t.Errorf("results.json after a full run: %+v, %v", r, err)
	}
}

// -render draws plots and README again from a results file, and records
// the machine when told where the file was measured.
func TestRender(t *testing.T) {
	inRepo(t)
	r := report(false)
	r.Machine = ""
	if err := r.WriteJSON(fullOut); err != nil {
		t.Fatal(err)
	}
	o := options{readme: "README.md", render: filepath.Join(fullOut, "results.json"), machine: "the bench machine"}
	if err := render(o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fullOut, "cni-latency.png")); err != nil {
		t.Errorf("render drew no plot: %v", err)
	}
	if got, _ := os.ReadFile("README.md"); !strings.Contains(string(got), "on the bench machine") {
		t.Errorf("render did not rewrite the README section:\n%s", got)
	}
	if back, err := bench.ReadReport(o.render); err != nil || back.Machine != "the bench machine" {
		t.Errorf("machine not recorded in %s: %+v, %v", o.render, back, err)
	}
}
