package bench

import (
	"fmt"
	"strings"
)

// The eBPF datapath's figures ("datapath": "ebpf", internal/fastpath) are
// rows of their own, measured in the same run as the iptables rows and
// interleaved with them; here each is set beside its iptables row.

// ebpfMaxLatency is how much slower than the iptables datapath's a CNI
// operation on the eBPF datapath may be.
const ebpfMaxLatency = 1.2

// ebpfLatencyTargets compares berth-bridge's ADD and DEL on the eBPF
// datapath with the same on the iptables datapath.
func (r *Report) ebpfLatencyTargets() []Target {
	var ts []Target
	for _, op := range []string{"ADD", "DEL"} {
		e, base := r.latency(BridgeEBPFPlugin, op), r.latency("berth-bridge", op)
		if e == nil || base == nil || base == e || base.P50 == 0 {
			continue
		}
		ratio := float64(e.P50) / float64(base.P50)
		ts = append(ts, Target{What: BridgeEBPFPlugin + " " + op + " p50", Goal: fmt.Sprintf("≤ %.1f× iptables datapath", ebpfMaxLatency),
			Measured: fmt.Sprintf("%.2f× (%s vs %s)", ratio, ms(e.P50), ms(base.P50)), Met: ratio <= ebpfMaxLatency})
	}
	return ts
}

// ebpfPairs are the eBPF rows and the iptables rows they are set beside.
var ebpfPairs = [][2]string{
	{BridgeEBPF, "bridge (one node)"},
	{"vxlan, eBPF (2 nodes)", "vxlan (2 nodes)"},
	{"hostgw, eBPF (2 nodes)", "hostgw (2 nodes)"},
	{"bgp, eBPF (2 nodes)", "bgp (2 nodes)"},
}

// ebpfMarkdown is the table of what the eBPF datapath buys over the
// iptables one, mode by mode; empty when the run has no eBPF row.
func (r *Report) ebpfMarkdown() string {
	var b strings.Builder
	for _, p := range ebpfPairs {
		e, base := r.datapathNamed(p[0]), r.datapathNamed(p[1])
		if e == nil || base == nil || base.Gbps1 == 0 || base.Gbps4 == 0 || base.RTTP50 == 0 {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\n**eBPF datapath vs iptables datapath**, each mode's two rows above side by side (same run): throughput and round trip of eBPF over iptables.\n\n")
			b.WriteString("| mode | 1 stream | 4 streams | RTT p50 | RTT p99 |\n|---|---|---|---|---|\n")
		}
		fmt.Fprintf(&b, "| %s | %+.0f%% (%.2f vs %.2f Gbit/s) | %+.0f%% (%.2f vs %.2f Gbit/s) | %.2f× (%.0f vs %.0f µs) | %.2f× (%.0f vs %.0f µs) |\n",
			strings.Replace(p[0], ", eBPF", "", 1),
			100*(e.Gbps1/base.Gbps1-1), e.Gbps1, base.Gbps1, 100*(e.Gbps4/base.Gbps4-1), e.Gbps4, base.Gbps4,
			float64(e.RTTP50)/float64(base.RTTP50), float64(e.RTTP50)/1e3, float64(base.RTTP50)/1e3,
			float64(e.RTTP99)/float64(base.RTTP99), float64(e.RTTP99)/1e3, float64(base.RTTP99)/1e3)
	}
	return b.String()
}
