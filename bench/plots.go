package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// figure is one PNG: a title, panels side by side, a legend in a column
// of its own at the right (never over the data), and footer lines saying
// where, when and against what the figures were measured.
type figure struct {
	title  string
	panels []*plot.Plot
	legend *plot.Legend // nil: none
	footer []string
	width  vg.Length
	height vg.Length
}

// dpi of the PNGs: larger than gonum's 96 so that value labels stay legible.
const dpi = 110

func textStyle(size vg.Length) text.Style {
	return text.Style{Font: font.From(plot.DefaultFont, size), Handler: plot.DefaultTextHandler}
}

func (f figure) save(path string) error {
	img := vgimg.NewWith(vgimg.UseWH(f.width, f.height), vgimg.UseDPI(dpi))
	dc := draw.New(img)
	pad := vg.Points(8)

	title := textStyle(15)
	title.XAlign = draw.XCenter
	titleH := title.Rectangle(f.title).Size().Y
	dc.FillText(title, vg.Point{X: (dc.Min.X + dc.Max.X) / 2, Y: dc.Max.Y - pad - titleH}, f.title)

	foot := textStyle(10)
	lineH := foot.Rectangle("Xg").Size().Y * 1.3
	for i, line := range f.footer {
		y := dc.Min.Y + pad + vg.Length(len(f.footer)-1-i)*lineH
		dc.FillText(foot, vg.Point{X: dc.Min.X + pad, Y: y}, line)
	}

	area := draw.Crop(dc, pad, -pad, 2*pad+vg.Length(len(f.footer))*lineH, -(2*pad + titleH))
	if f.legend != nil {
		r := f.legend.Rectangle(area)
		w := r.Size().X + 2*pad
		lc := draw.Crop(area, area.Size().X-w, 0, 0, -pad)
		f.legend.Top, f.legend.Left = true, true
		f.legend.Draw(draw.Crop(lc, pad, 0, 0, 0))
		area = draw.Crop(area, 0, -w, 0, 0)
	}
	tiles := draw.Tiles{Rows: 1, Cols: len(f.panels), PadX: vg.Points(20)}
	for i, c := range plot.Align([][]*plot.Plot{f.panels}, tiles, area)[0] {
		f.panels[i].Draw(c)
	}

	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// measuredLine is the footer line every figure starts with.
func (r *Report) measuredLine() string {
	machine := r.Machine
	if machine == "" {
		machine = "a machine the results do not describe"
	}
	run := "full run"
	if r.Quick {
		run = "quick run (fewer, shorter repetitions: indicative only)"
	}
	return fmt.Sprintf("Measured %s on %s; %s.", r.When.UTC().Format("2006-01-02"), machine, run)
}

// paler is c with alpha a, for the second series of a pair (p99, 4 streams).
func paler(c color.Color, a uint8) color.Color {
	n := color.NRGBAModel.Convert(c).(color.NRGBA)
	n.A = a
	return n
}

// barLabels are value labels: one at the end of each bar, centred on it.
func barLabels(xys plotter.XYs, labels []string, size vg.Length, offset vg.Point, horizontal bool) (*plotter.Labels, error) {
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i] = textStyle(size)
		if horizontal {
			l.TextStyle[i].YAlign = draw.YCenter
		} else {
			l.TextStyle[i].XAlign = draw.XCenter
		}
	}
	l.Offset = offset
	return l, nil
}

// niceTicks labels an axis at about five round values (1, 2 or 5 × 10^k)
// written as plainly as they are ("50", not "50.00").
type niceTicks struct{}

func (niceTicks) Ticks(lo, hi float64) []plot.Tick {
	step := niceStep((hi - lo) / 5)
	prec := max(0, int(-math.Floor(math.Log10(step))))
	var ts []plot.Tick
	for i := math.Ceil(lo / step); i*step <= hi+step*1e-9; i++ {
		v := i * step
		ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', prec, 64)})
	}
	return ts
}

func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	switch m := x / p; {
	case m <= 1:
		return p
	case m <= 2:
		return 2 * p
	case m <= 5:
		return 5 * p
	}
	return 10 * p
}

// shortPlugin names a plugin on an axis.
func shortPlugin(name string) string {
	if strings.HasPrefix(name, "reference") {
		return "reference\n(bridge+host-local\n+portmap)"
	}
	return name
}

// PlotCNI draws one panel per operation, each on its own scale (ADD is a
// fraction of DEL and of the parallel ADDs): a bar per plugin, p50 solid
// and p99 paler, each with its value.
func (r *Report) PlotCNI(path string) error {
	var ops, names []string
	for _, l := range r.CNILatency {
		if !slices.Contains(ops, l.Op) {
			ops = append(ops, l.Op)
		}
		if !slices.Contains(names, l.Name) {
			names = append(names, l.Name)
		}
	}
	f := figure{title: "CNI operation latency through libcni, milliseconds (lower is better)", width: 15 * vg.Inch, height: 6.5 * vg.Inch}
	w := vg.Points(15)
	for _, op := range ops {
		p := plot.New()
		p.Title.Text = op
		if lo, hi, ok := r.cniRatios(op); ok {
			ratio := fmt.Sprintf("%.2f", lo)
			if h := fmt.Sprintf("%.2f", hi); h != ratio {
				ratio += "–" + h
			}
			p.Title.Text = fmt.Sprintf("%s: berth p50 = %s× the reference", op, ratio)
		}
		p.Title.TextStyle.Font.Size = 13
		p.Y.Label.Text = "ms"
		p.Y.Tick.Marker = niceTicks{}
		var ticks []string
		top := 0.0
		for i, name := range names {
			ticks = append(ticks, shortPlugin(name))
			l := r.latency(name, op)
			if l == nil || !strings.HasPrefix(l.Name, name) {
				continue
			}
			for k, d := range []time.Duration{l.P50, l.P99} {
				v := float64(d) / 1e6
				top = max(top, v)
				bars, err := plotter.NewBarChart(plotter.Values{v}, w)
				if err != nil {
					return err
				}
				bars.XMin = float64(i)
				bars.Color = plotutil.Color(i)
				if k == 1 {
					bars.Color = paler(plotutil.Color(i), 100)
				}
				bars.LineStyle.Width = 0
				bars.Offset = w * vg.Length(float64(k)-0.5)
				p.Add(bars)
				lbl, err := barLabels(plotter.XYs{{X: float64(i), Y: v}}, []string{strconv.FormatFloat(v, 'f', 1, 64)},
					8, vg.Point{X: bars.Offset, Y: vg.Points(2)}, false)
				if err != nil {
					return err
				}
				p.Add(lbl)
			}
		}
		p.NominalX(ticks...)
		p.X.Tick.Label.Font.Size = 9
		p.Y.Min, p.Y.Max = 0, top*1.12 // room for the labels
		f.panels = append(f.panels, p)
	}
	leg := plot.NewLegend()
	solid, _ := plotter.NewBarChart(plotter.Values{1}, w)
	solid.Color, solid.LineStyle.Width = color.Gray{Y: 90}, 0
	pale, _ := plotter.NewBarChart(plotter.Values{1}, w)
	pale.Color, pale.LineStyle.Width = paler(color.Gray{Y: 90}, 100), 0
	leg.Add("p50 (solid)", solid)
	leg.Add("p99 (pale)", pale)
	f.legend = &leg
	f.footer = []string{
		r.measuredLine(),
		"Baseline: the CNI reference plugins (bridge + host-local + portmap) doing the same job as each berth plugin (masquerade, one port mapping), interleaved run by run.",
		"Values: milliseconds per call; ADD x8 parallel is the time of each of 8 ADDs started at once.",
	}
	return f.save(path)
}

// cniRatios are the smallest and largest p50 of the berth plugins over
// the reference's, for op.
func (r *Report) cniRatios(op string) (lo, hi float64, ok bool) {
	base := r.latency("reference", op)
	if base == nil || base.P50 == 0 {
		return 0, 0, false
	}
	lo = math.Inf(1)
	for _, l := range r.CNILatency {
		if l.Op == op && !strings.HasPrefix(l.Name, "reference") {
			ratio := float64(l.P50) / float64(base.P50)
			lo, hi, ok = min(lo, ratio), max(hi, ratio), true
		}
	}
	return lo, hi, ok
}

// PlotDatapath draws, per row of the table, the throughput (1 and 4
// streams) and the round trip (p50, p99), each labelled with its value
// and, for the 1-stream throughput and the p50 round trip, its ratio to
// the row's baseline.
func (r *Report) PlotDatapath(path string) error {
	rows := slices.Clone(r.Datapath)
	slices.Reverse(rows) // NominalY counts from the bottom; the table's first row goes on top
	var names []string
	for _, d := range rows {
		n := d.Name
		if d.Baseline == "" {
			n += "  [baseline]"
		}
		names = append(names, n)
	}
	h := vg.Points(11)
	bars := func(p *plot.Plot, vals []float64, k int, c color.Color, labels []string) error {
		b, err := plotter.NewBarChart(plotter.Values(vals), h)
		if err != nil {
			return err
		}
		b.Horizontal = true
		b.Color, b.LineStyle.Width = c, 0
		b.Offset = h * vg.Length(0.5-float64(k))
		p.Add(b)
		var xys plotter.XYs
		for i, v := range vals {
			xys = append(xys, plotter.XY{X: v, Y: float64(i)})
		}
		lbl, err := barLabels(xys, labels, 8, vg.Point{X: vg.Points(3), Y: b.Offset}, true)
		if err != nil {
			return err
		}
		p.Add(lbl)
		return nil
	}

	thr := plot.New()
	thr.Title.Text = "TCP throughput, Gbit/s (higher is better)"
	var one, four []float64
	var oneL, fourL []string
	for _, d := range rows {
		one, four = append(one, d.Gbps1), append(four, d.Gbps4)
		l := fmt.Sprintf("%.1f", d.Gbps1)
		if base := r.datapathNamed(d.Baseline); base != nil && d.Baseline != "" && base.Gbps1 > 0 {
			l += fmt.Sprintf("  (%.0f%% of %s)", 100*d.Gbps1/base.Gbps1, baseShort(base.Name))
		}
		oneL, fourL = append(oneL, l), append(fourL, fmt.Sprintf("%.1f", d.Gbps4))
	}
	if err := bars(thr, one, 0, plotutil.Color(0), oneL); err != nil {
		return err
	}
	if err := bars(thr, four, 1, paler(plotutil.Color(0), 110), fourL); err != nil {
		return err
	}
	thr.NominalY(names...)
	thr.X.Tick.Marker = niceTicks{}
	thr.X.Min, thr.X.Max = 0, slices.Max(four)*1.3

	rtt := plot.New()
	rtt.Title.Text = "round trip of a 1-byte TCP request, µs (lower is better)"
	var p50, p99 []float64
	var p50L, p99L []string
	for _, d := range rows {
		a, b := float64(d.RTTP50)/1e3, float64(d.RTTP99)/1e3
		p50, p99 = append(p50, a), append(p99, b)
		l := fmt.Sprintf("%.0f", a)
		if base := r.datapathNamed(d.Baseline); base != nil && d.Baseline != "" && base.RTTP50 > 0 {
			l += fmt.Sprintf("  (%.2f× %s)", float64(d.RTTP50)/float64(base.RTTP50), baseShort(base.Name))
		}
		p50L, p99L = append(p50L, l), append(p99L, fmt.Sprintf("%.0f", b))
	}
	if err := bars(rtt, p50, 0, plotutil.Color(1), p50L); err != nil {
		return err
	}
	if err := bars(rtt, p99, 1, paler(plotutil.Color(1), 110), p99L); err != nil {
		return err
	}
	rtt.NominalY(names...)
	rtt.X.Tick.Marker = niceTicks{}
	rtt.Y.Tick.Label.Font.Size = 0.01 // the names are on the left panel's axis
	rtt.X.Min, rtt.X.Max = 0, slices.Max(p99)*1.45

	leg := plot.NewLegend()
	for _, e := range []struct {
		name string
		c    color.Color
	}{
		{"throughput, 1 stream (median)", plotutil.Color(0)},
		{"throughput, 4 streams", paler(plotutil.Color(0), 110)},
		{"round trip p50", plotutil.Color(1)},
		{"round trip p99", paler(plotutil.Color(1), 110)},
	} {
		b, _ := plotter.NewBarChart(plotter.Values{1}, h)
		b.Color, b.LineStyle.Width = e.c, 0
		leg.Add(e.name, b)
	}
	f := figure{
		title:  "Container-to-container datapath: throughput and round trip against the baseline",
		panels: []*plot.Plot{thr, rtt},
		legend: &leg,
		width:  16 * vg.Inch, height: 7 * vg.Inch,
		footer: []string{
			r.measuredLine(),
			"Baseline (100%, 1.00×), measured in the same run, interleaved: one node: two namespaces joined by one veth (raw veth);",
			"two nodes: the two node namespaces talking over the underlay, no CNI (raw underlay); bridge IPv6: the bridge row (IPv4). Percentages and ratios compare each row with its baseline.",
		},
	}
	return f.save(path)
}

// convergenceTarget is a target line of the control-plane plot.
type convergenceTarget struct {
	label string
	d     time.Duration
}

// convergenceTargets are the targets that apply to the modes drawn, so
// that the plot's legend names no line it does not draw.
func convergenceTargets(modes []string) []convergenceTarget {
	var ts []convergenceTarget
	if slices.Contains(modes, "vxlan") || slices.Contains(modes, "hostgw") {
		ts = append(ts, convergenceTarget{"target vxlan, hostgw", targetConvergence})
	}
	if slices.Contains(modes, "bgp") {
		ts = append(ts, convergenceTarget{"target bgp", targetConvergenceBG})
	}
	return ts
}

// higherMax reports whether another mode converged slower (max) than mode
// at the same cluster size.
func higherMax(cp *ControlPlane, mode string, nodes int) bool {
	var mine time.Duration
	for _, c := range cp.Convergence {
		if c.Mode == mode && c.Nodes == nodes {
			mine = c.Max
		}
	}
	for _, c := range cp.Convergence {
		if c.Mode != mode && c.Nodes == nodes && c.Max > mine && c.Max < 2*mine {
			return true
		}
	}
	return false
}

// baseShort names a baseline row in a label: "raw veth", "raw underlay".
func baseShort(name string) string {
	name, _, _ = strings.Cut(name, " (")
	return name
}

// plotControlPlane draws convergence p50 and max against the cluster size,
// one line pair per mode, on a logarithmic time axis, with the targets
// that apply to the modes drawn, across the whole size axis.
func (r *Report) plotControlPlane(path string) error {
	cp := r.ControlPlane
	p := plot.New()
	p.Title.Text = "time until every other node routes to a node that joins"
	p.X.Label.Text = "nodes in the cluster"
	p.Y.Label.Text = "milliseconds (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	leg := plot.NewLegend()
	var modes []string
	var sizes []float64
	for _, c := range cp.Convergence {
		if !slices.Contains(modes, c.Mode) {
			modes = append(modes, c.Mode)
		}
		if !slices.Contains(sizes, float64(c.Nodes)) {
			sizes = append(sizes, float64(c.Nodes))
		}
	}
	slices.Sort(sizes)
	if len(sizes) == 0 {
		return nil
	}
	p.X.Min, p.X.Max = sizes[0]-2, sizes[len(sizes)-1]+2
	if len(sizes) == 1 {
		p.X.Min, p.X.Max = sizes[0]-5, sizes[0]+5
	}
	lo, hi := math.Inf(1), 0.0
	for k, mode := range modes {
		for s, stat := range []string{"p50", "max"} {
			var pts plotter.XYs
			var labels []string
			for _, c := range cp.Convergence {
				if c.Mode != mode {
					continue
				}
				d := c.P50
				if stat == "max" {
					d = c.Max
				}
				// Log scale: a route faster than the clock's grain shows at 0.1 ms.
				v := max(float64(d)/1e6, 0.1)
				lo, hi = min(lo, v), max(hi, v)
				pts = append(pts, plotter.XY{X: float64(c.Nodes), Y: v})
				labels = append(labels, fmt.Sprintf("%.0f", v))
			}
			line, points, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			line.Color, points.Color = plotutil.Color(k), plotutil.Color(k)
			points.Shape = plotutil.Shape(s)
			if stat == "max" {
				line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			p.Add(line, points)
			leg.Add(mode+" "+stat, line, points)
			if stat == "max" {
				// The max at each size, the figure the targets are about,
				// in the mode's colour; where another mode's max is
				// higher, below the point, else above it.
				for i, pt := range pts {
					dy := vg.Points(6)
					if higherMax(cp, mode, int(pt.X)) {
						dy = vg.Points(-8)
					}
					lbl, err := barLabels(plotter.XYs{pt}, labels[i:i+1], 8, vg.Point{X: vg.Points(6), Y: dy}, true)
					if err != nil {
						return err
					}
					lbl.TextStyle[0].Color = plotutil.Color(k)
					p.Add(lbl)
				}
			}
		}
	}
	for k, t := range convergenceTargets(modes) {
		v := float64(t.d) / 1e6
		line, err := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: v}, {X: p.X.Max, Y: v}})
		if err != nil {
			return err
		}
		line.Color = color.Gray{Y: uint8(60 + 70*k)}
		line.Dashes = []vg.Length{vg.Points(1), vg.Points(3)}
		p.Add(line)
		leg.Add(fmt.Sprintf("%s: max < %s at %d nodes", t.label, t.d, targetNodes), line)
		hi = max(hi, v)
	}
	ticks := make([]plot.Tick, len(sizes))
	for i, s := range sizes {
		ticks[i] = plot.Tick{Value: s, Label: strconv.Itoa(int(s))}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	p.Y.Max = math.Pow(10, math.Ceil(math.Log10(hi*1.5)))
	f := figure{
		title:  "Control plane: route convergence after a node joins (lower is better)",
		panels: []*plot.Plot{p},
		legend: &leg,
		width:  11 * vg.Inch, height: 6 * vg.Inch,
		footer: []string{
			r.measuredLine(),
			"From the joining node's lease appearing in etcd to the route to its subnet in each other node's kernel; p50 and max over",
			"all (joining node, other node) pairs, labels give the max. No baseline: absolute times against the targets.",
		},
	}
	return f.save(path)
}
