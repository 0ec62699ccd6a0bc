package bench

import (
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Report is everything one `make bench` run measured.
type Report struct {
	When       time.Time  `json:"when"`
	Quick      bool       `json:"quick"`
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
	fmt.Fprintf(&b, "Measured %s%s. Ratios compare figures of the same run.\n\n",
		r.When.Format("2006-01-02"), map[bool]string{true: " (quick mode)", false: ""}[r.Quick])
	if t := targetsMarkdown(r.Targets); t != "" {
		b.WriteString(t + "\n")
	}
	if len(r.CNILatency) > 0 {
		b.WriteString("**CNI latency** through libcni: each berth plugin with ipMasq and one port mapping vs the reference bridge + host-local + portmap chain doing the same job. The leased plugins (vxlan, hostgw, bgp) read a lease file as netd writes it.\n\n")
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
		b.WriteString("\n**Datapath**, container to container: iperf3 TCP throughput (median of the runs) and the round trip of a 1-byte TCP request/response loop. Each row is compared with its baseline, the limit on this machine measured in the same run: for one node, two namespaces joined by one veth; across nodes, the two node namespaces talking over the underlay, no CNI.\n\n")
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
	return r.ControlPlane.Plot(filepath.Join(dir, "controlplane.png"))
}

// PlotCNI draws p50/p99 bars per operation and plugin.
func (r *Report) PlotCNI(path string) error {
	p := plot.New()
	p.Title.Text = "CNI operation latency (lower is better)"
	p.Y.Label.Text = "milliseconds"
	var ops []string
	seen := map[string]bool{}
	byName := map[string]map[string]Latency{}
	var names []string
	for _, l := range r.CNILatency {
		if !seen[l.Op] {
			seen[l.Op] = true
			ops = append(ops, l.Op)
		}
		if byName[l.Name] == nil {
			byName[l.Name] = map[string]Latency{}
			names = append(names, l.Name)
		}
		byName[l.Name][l.Op] = l
	}
	// One colour per plugin, p99 the same colour paler, bars centred on
	// their operation.
	w := vg.Points(14)
	total := 2 * len(names)
	for i, name := range names {
		for k, pct := range []string{"p50", "p99"} {
			vals := make(plotter.Values, len(ops))
			for j, op := range ops {
				l := byName[name][op]
				d := l.P50
				if pct == "p99" {
					d = l.P99
				}
				vals[j] = float64(d) / 1e6
			}
			bars, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return err
			}
			c := color.NRGBAModel.Convert(plotutil.Color(i)).(color.NRGBA)
			if pct == "p99" {
				c.A = 110
			}
			bars.Color = c
			bars.LineStyle.Width = 0
			bars.Offset = w * vg.Length(float64(i*2+k)-float64(total-1)/2)
			p.Add(bars)
			p.Legend.Add(name+" "+pct, bars)
		}
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(40)
	p.NominalX(ops...)
	p.Y.Min = 0
	p.Y.Max *= 1.6 // room for the legend above the bars
	return p.Save(12*vg.Inch, 6*vg.Inch, path)
}

// PlotDatapath draws the throughput of each mode next to its baseline.
func (r *Report) PlotDatapath(path string) error {
	p := plot.New()
	p.Title.Text = "Container-to-container TCP throughput (higher is better)"
	p.Y.Label.Text = "Gbit/s"
	var names []string
	one, four := plotter.Values{}, plotter.Values{}
	for _, d := range r.Datapath {
		// Two lines per label, or the nine of a full run overlap.
		names = append(names, strings.Replace(d.Name, " (", "\n(", 1))
		one = append(one, d.Gbps1)
		four = append(four, d.Gbps4)
	}
	w := vg.Points(20)
	for k, v := range []plotter.Values{one, four} {
		bars, err := plotter.NewBarChart(v, w)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(k)
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(float64(k)-0.5)
		p.Add(bars)
		p.Legend.Add([]string{"1 stream", "4 streams"}[k], bars)
	}
	p.Legend.Top = true
	p.NominalX(names...)
	p.Y.Min = 0
	p.Y.Max *= 1.25
	return p.Save(12*vg.Inch, 5*vg.Inch, path)
}
