package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Report is everything one `make bench` run measured.
type Report struct {
	When  time.Time `json:"when"`
	Quick bool      `json:"quick"`
	// Machine describes where the figures were measured (CPUs, memory,
	// kernel), for the plots and the README.
	Machine    string     `json:"machine,omitempty"`
	CNILatency []Latency  `json:"cniLatency"`
	Datapath   []Datapath `json:"datapath"`
	// ControlPlane is convergence, memory and CPU of netd as the cluster grows.
	ControlPlane *ControlPlane `json:"controlPlane,omitempty"`
	Targets      []Target      `json:"targets"` // filled by Finish
}

// Finish computes what is derived from the measurements.
func (r *Report) Finish() { r.Targets = r.targets() }

// WriteJSON stores r under dir as results.json.
func (r *Report) WriteJSON(dir string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// Markdown renders the tables; ratios are berth over its baseline from the
// same run.
func (r *Report) Markdown() string {
	var b strings.Builder
	on := ""
	if r.Machine != "" {
		on = " on " + r.Machine
	}
	fmt.Fprintf(&b, "Measured %s%s%s. Ratios compare figures of the same run.\n\n",
		r.When.Format("2006-01-02"), on, map[bool]string{true: " (quick mode)", false: ""}[r.Quick])
	if t := targetsMarkdown(r.Targets); t != "" {
		b.WriteString(t + "\n")
	}
	if len(r.CNILatency) > 0 {
		b.WriteString("**CNI latency** through libcni: each berth plugin with ipMasq and one port mapping vs the reference bridge + host-local + portmap chain doing the same job. " + DualStackName + " does it on an IPv4 and an IPv6 range (rules in iptables and ip6tables). The leased plugins (vxlan, hostgw, bgp) read a lease file as netd writes it.\n\n")
		b.WriteString("| plugin | operation | runs | p50 | p99 | p50 vs reference |\n|---|---|---|---|---|---|\n")
		for _, l := range r.CNILatency {
			ratio := ""
			if base := r.latency("reference", l.Op); base != nil && base.P50 > 0 && !strings.HasPrefix(l.Name, "reference") {
				ratio = fmt.Sprintf("%.2f× (%.1f× faster)", float64(l.P50)/float64(base.P50), float64(base.P50)/float64(l.P50))
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s |\n", l.Name, l.Op, l.Runs, ms(l.P50), ms(l.P99), ratio)
		}
	}
	if len(r.Datapath) > 0 {
		b.WriteString("\n**Datapath**, container to container: iperf3 TCP throughput (median of the runs) and the round trip of a 1-byte TCP request/response loop. Each row is compared with its baseline, the limit on this machine measured in the same run: for one node, two namespaces joined by one veth; across nodes, the two node namespaces talking over the underlay, no CNI. The IPv6 row is compared with the same bridge datapath over IPv4.\n\n")
		b.WriteString("| mode | 1 stream | 4 streams | 1 stream vs baseline | RTT p50 | RTT p99 | RTT p50 vs baseline | baseline |\n|---|---|---|---|---|---|---|---|\n")
		for _, d := range r.Datapath {
			ratioT, ratioL := "", ""
			if base := r.datapathNamed(d.Baseline); base != nil && d.Baseline != "" {
				ratioT = fmt.Sprintf("%.0f%%", 100*d.Gbps1/base.Gbps1)
				ratioL = fmt.Sprintf("%.2f×", float64(d.RTTP50)/float64(base.RTTP50))
			}
			fmt.Fprintf(&b, "| %s | %.2f Gbit/s | %.2f Gbit/s | %s | %.0f µs | %.0f µs | %s | %s |\n",
				d.Name, d.Gbps1, d.Gbps4, ratioT, float64(d.RTTP50)/1e3, float64(d.RTTP99)/1e3, ratioL, d.Baseline)
		}
	}
	b.WriteString(r.ebpfMarkdown())
	if r.ControlPlane != nil {
		b.WriteString("\n" + r.ControlPlane.Markdown())
	}
	return b.String()
}

// UpdateREADME replaces the text between the bench markers in path.
func (r *Report) UpdateREADME(path string) error {
	const begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(data)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s section", path, begin, end)
	}
	body := "\n" + r.Markdown() + "\n![CNI latency](bench/results/cni-latency.png)\n"
	if len(r.Datapath) > 0 {
		body += "![Datapath throughput](bench/results/datapath.png)\n"
	}
	if r.ControlPlane != nil {
		body += "![Control-plane convergence](bench/results/controlplane.png)\n"
	}
	s = s[:i+len(begin)] + body + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// Plot writes every plot of r into dir.
func (r *Report) Plot(dir string) error {
	if err := r.PlotCNI(filepath.Join(dir, "cni-latency.png")); err != nil {
		return err
	}
	if err := r.PlotDatapath(filepath.Join(dir, "datapath.png")); err != nil {
		return err
	}
	if r.ControlPlane == nil {
		return nil
	}
	return r.plotControlPlane(filepath.Join(dir, "controlplane.png"))
}

// ReadReport loads a results.json written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// DescribeMachine says what this machine is, for the plots: CPUs, memory,
// kernel, e.g. "2 vCPUs (AMD EPYC), 23.5 GiB, Linux 6.18.44".
func DescribeMachine() string {
	cpus, model := 0, ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			switch k = strings.TrimSpace(k); {
			case !ok:
			case k == "processor":
				cpus++
			case k == "model name" && model == "":
				model = strings.TrimSpace(v)
			}
		}
	}
	s := fmt.Sprintf("%d vCPUs", cpus)
	if model != "" {
		s += " (" + model + ")"
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib float64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %f kB", &kib); err == nil {
			s += fmt.Sprintf(", %.1f GiB", kib/(1<<20))
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		s += ", Linux " + unix.ByteSliceToString(u.Release[:])
	}
	return s
}
