// Package k8s tests berth as a Kubernetes cluster's network: a real
// cluster (test/kubecluster: kube-apiserver, controller manager,
// scheduler, and kubelet + containerd on each node, all inside the test
// bed's namespaces), berth installed with deploy/kubernetes/berth.yaml
// from the image `make image` writes, and removed with uninstall.yaml.
// `make test-k8s` builds Kubernetes and runs it; elsewhere it skips.
package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/kubecluster"
	"github.com/berthnet/berth/test/testbed"
)

// The pods' network, dual-stack: the controller manager's --cluster-cidr
// and netd's network-cidr.
var (
	clusterCIDR   = netip.MustParsePrefix("10.244.0.0/16")
	clusterCIDRv6 = netip.MustParsePrefix("fd00:244::/56")
)

// Rate of the bandwidth-annotated pod, both ways (Kubernetes' "10M").
const shapedRate = 10e6

func TestKubernetes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	image := filepath.Join(testenv.BinDir(t, "netd"), "images", "berth.tar")
	start := time.Now()
	c := kubecluster.ForTest(t, ctx, kubecluster.Options{Nodes: 2, ClusterCIDR: clusterCIDR, ClusterCIDRv6: clusterCIDRv6})
	t.Logf("FIGURE cluster up (control plane, %d kubelets registered) in %s", len(c.Nodes), time.Since(start).Round(time.Millisecond))
	if _, err := os.Stat(image); err != nil {
		t.Fatalf("berth's image: %v (make image writes it)", err)
	}
	start = time.Now()
	if err := c.LoadTestImages(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportImages(ctx, image); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE images built and imported into %d nodes in %s", len(c.Nodes), time.Since(start).Round(time.Millisecond))

	manifest := readManifest(t, "berth.yaml")
	uninstall := readManifest(t, "uninstall.yaml")
	// The eBPF datapath handles IPv4 only: its network is IPv4 (the
	// cluster stays dual-stack; pods get IPv4 only).
	for _, run := range []struct {
		name, mode string
		ebpf       bool
	}{{"vxlan", "vxlan", false}, {"hostgw", "hostgw", false}, {"bgp", "bgp", false}, {"vxlan-ebpf", "vxlan", true}} {
		ok := t.Run(run.name, func(t *testing.T) {
			m := &modeRun{c: c, name: run.name, mode: run.mode, ebpf: run.ebpf}
			m.manifest = m.install(t, ctx, manifest)
			t.Cleanup(func() { m.uninstall(t, ctx, uninstall) })
			if run.name == "vxlan" {
				t.Run("manifest applies with dry-run=server", func(t *testing.T) {
					if out, err := c.Apply(ctx, m.manifest, "--dry-run=server"); err != nil {
						t.Fatalf("%v\n%s", err, out)
					}
				})
				t.Run("netd may change only its own Node's annotation", m.ownNodeOnly)
			}
			m.startPods(t, ctx)
			t.Run("pods reach each other across nodes", m.podToPod)
			if m.mode == "vxlan" {
				t.Run("netd guards the VTEPs without iptables tools", m.vtepGuard)
			}
			if m.ebpf {
				t.Run("the eBPF programs carry the pods' traffic", m.fastPath)
			}
			t.Run("hostPort answers on the node address", m.hostPort)
			if m.ebpf {
				t.Run("bandwidth annotations are refused, naming the field", m.bandwidthRefused)
			} else {
				t.Run("bandwidth annotations shape the pod", m.bandwidth)
			}
			t.Run("netd restarted by the DaemonSet loses no packet", m.restartNetd)
			t.Run("node deletion removes its routes", m.nodeDeletion)
		})
		if !ok && ctx.Err() != nil {
			return
		}
	}
}

// modeRun is berth installed in one mode, with its test pods.
type modeRun struct {
	c        *kubecluster.Cluster
	name     string // of the run, in figures: the mode, -ebpf on that datapath
	mode     string
	ebpf     bool   // the eBPF datapath, on an IPv4 network
	manifest []byte // as applied
	pods     map[string]*kubecluster.PodObject
}

func readManifest(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "deploy", "kubernetes", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// withNetdConfig replaces the netd.json of the manifest's ConfigMap, as a
// user edits it before applying.
func withNetdConfig(t *testing.T, manifest []byte, netdJSON string) []byte {
	t.Helper()
	lines := strings.Split(string(manifest), "\n")
	var out []string
	replaced := false
	for i := 0; i < len(lines); i++ {
		out = append(out, lines[i])
		if strings.TrimSpace(lines[i]) != "netd.json: |" {
			continue
		}
		indent := strings.Repeat(" ", len(lines[i])-len(strings.TrimLeft(lines[i], " "))+2)
		for i+1 < len(lines) && (strings.HasPrefix(lines[i+1], indent) || strings.TrimSpace(lines[i+1]) == "") && !strings.HasPrefix(lines[i+1], "---") {
			i++
		}
		for _, l := range strings.Split(strings.TrimSpace(netdJSON), "\n") {
			out = append(out, indent+l)
		}
		replaced = true
	}
	if !replaced {
		t.Fatal("berth.yaml has no netd.json in its ConfigMap")
	}
	return []byte(strings.Join(out, "\n"))
}

func (m *modeRun) install(t *testing.T, ctx context.Context, base []byte) []byte {
	t.Helper()
	c := m.c
	settings := map[string]any{
		"datastore":    "kubernetes",
		"mode":         m.mode,
		"network-cidr": clusterCIDR.String() + "," + clusterCIDRv6.String(),
	}
	if m.ebpf {
		settings["datapath"] = "ebpf"
		settings["network-cidr"] = clusterCIDR.String()
	}
	netdJSON, _ := json.MarshalIndent(settings, "", "  ")
	manifest := withNetdConfig(t, base, string(netdJSON))
	// The apiserver for pods of the host network: the service IP needs
	// kube-proxy, which this cluster does not run.
	manifest = append(manifest, fmt.Appendf(nil, `
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: berth-kubernetes-endpoint
  namespace: berth-system
data:
  KUBERNETES_SERVICE_HOST: "%s"
  KUBERNETES_SERVICE_PORT: "%d"
`, testbed.UnderlayIP, kubecluster.APIServerPort)...)
	start := time.Now()
	if out, err := c.Apply(ctx, manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "berth-system", "rollout", "status", "daemonset/berth-node", "--timeout=4m"); err != nil {
		logs, _ := c.Kubectl(ctx, "-n", "berth-system", "logs", "-l", "app.kubernetes.io/name=berth-node", "-c", "netd", "--tail=20", "--previous")
		t.Fatalf("berth's DaemonSet did not roll out: %v\n%s\nnetd's last logs:\n%s", err, out, logs)
	}
	if err := c.WaitNodesReady(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE %s: kubectl apply to every node Ready in %s", m.name, time.Since(start).Round(time.Millisecond))
	return manifest
}

const testNamespace = "default"

// startPods runs, on node1: srv-1 (web and iperf3 server, hostPort
// 30080) and bw-1 (iperf3 server shaped by the bandwidth annotations);
// on node2: srv-2.
func (m *modeRun) startPods(t *testing.T, ctx context.Context) {
	t.Helper()
	var b bytes.Buffer
	for _, p := range []struct {
		name, node, extra string
	}{
		{"srv-1", "node1", "\n    ports: [{containerPort: 8080, hostPort: 30080}]"},
		{"srv-2", "node2", ""},
		{"bw-1", "node1", ""},
	} {
		annotations := "{}"
		if p.name == "bw-1" {
			annotations = fmt.Sprintf(`{kubernetes.io/ingress-bandwidth: "%d", kubernetes.io/egress-bandwidth: "%d"}`, int(shapedRate), int(shapedRate))
		}
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels: {app: berth-test}
  annotations: %s
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: [sh, -c, "httpd -p 8080 -h /www && iperf3 -s -D && exec sleep 2147483647"]%s
`, p.name, testNamespace, annotations, p.node, kubecluster.ToolsImage, p.extra)
	}
	if out, err := m.c.Apply(ctx, b.Bytes()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ready := []string{"srv-1", "srv-2", "bw-1"}
	if m.ebpf { // bw-1 is refused: bandwidthRefused
		ready = ready[:2]
	}
	pods, err := m.c.WaitPodsReady(ctx, 3*time.Minute, testNamespace, ready...)
	if err != nil {
		t.Fatal(err)
	}
	m.pods = map[string]*kubecluster.PodObject{}
	for _, p := range pods {
		m.pods[p.Metadata.Name] = p
		t.Logf("pod %s on %s: %s", p.Metadata.Name, p.Spec.NodeName, p.Status.PodIP)
	}
}

func (m *modeRun) ip(name string) string { return m.pods[name].Status.PodIP }

// ipv6 is the pod's IPv6 address ("" when it has none).
func (m *modeRun) ipv6(name string) string {
	for _, a := range m.pods[name].Status.PodIPs {
		if strings.Contains(a.IP, ":") {
			return a.IP
		}
	}
	return ""
}

func (m *modeRun) exec(ctx context.Context, pod string, cmd ...string) (string, error) {
	return m.c.Exec(ctx, testNamespace, pod, cmd...)
}

// get fetches url from inside pod. (busybox 1.35's wget -T crashes:
// timeout bounds it instead.)
func (m *modeRun) get(ctx context.Context, pod, url string) (string, error) {
	return m.exec(ctx, pod, "timeout", "10", "wget", "-qO-", url)
}

// clientAddr is the address the whoami CGI printed, without the
// IPv4-mapped IPv6 form of busybox httpd's dual-stack socket.
func clientAddr(body string) string {
	s := strings.Trim(strings.TrimSpace(body), "[]")
	return strings.TrimPrefix(s, "::ffff:")
}

// podToPod: ICMP and TCP between pods on node1 and node2, over IPv4 and
// IPv6 (the cluster is dual-stack; IPv4 only on the eBPF datapath, whose
// pods must then have no IPv6 address), and the server sees the client
// pod's own address (no NAT between pods).
func (m *modeRun) podToPod(t *testing.T) {
	ctx := context.Background()
	families := []struct {
		name     string
		ip       func(string) string
		hostport func(string) string
	}{
		{"IPv4", m.ip, func(ip string) string { return ip }},
		{"IPv6", m.ipv6, func(ip string) string { return "[" + ip + "]" }},
	}
	if m.ebpf {
		for _, p := range []string{"srv-1", "srv-2"} {
			if a := m.ipv6(p); a != "" {
				t.Errorf("%s has IPv6 address %s on the IPv4 network of the eBPF datapath", p, a)
			}
		}
		families = families[:1]
	}
	for _, d := range [][2]string{{"srv-1", "srv-2"}, {"srv-2", "srv-1"}} {
		from, to := d[0], d[1]
		for _, family := range families {
			src, dst := family.ip(from), family.ip(to)
			if src == "" || dst == "" {
				t.Errorf("%s: %s has %q, %s has %q: want both pods dual-stack", family.name, from, src, to, dst)
				continue
			}
			if out, err := m.exec(ctx, from, "ping", "-c", "3", "-W", "2", dst); err != nil {
				t.Errorf("ping %s → %s (%s): %v\n%s", from, to, dst, err, out)
			}
			out, err := m.get(ctx, from, "http://"+family.hostport(dst)+":8080/cgi-bin/ip")
			if err != nil {
				t.Errorf("TCP %s → %s (%s): %v", from, to, dst, err)
			} else if got := clientAddr(out); got != src {
				t.Errorf("%s saw the connection from %s over %s coming from %q, want the pod's own %s", to, from, family.name, got, src)
			}
		}
	}
}

// fastPath: a transfer from srv-2 (node2) to srv-1 (node1) goes through
// berth's eBPF programs on both nodes, netd's pod and the plugins sharing
// the node's BPF filesystem: node2's encapsulate it, node1's deliver it
// into the pod.
func (m *modeRun) fastPath(t *testing.T) {
	n1, n2 := m.c.Nodes[0], m.c.Nodes[1]
	a1, a2 := fastpathStats(t, n1), fastpathStats(t, n2)
	if _, err := m.iperf(context.Background(), "srv-2", m.ip("srv-1"), false); err != nil {
		t.Fatal(err)
	}
	b1, b2 := fastpathStats(t, n1), fastpathStats(t, n2)
	if b2.Encapsulated-a2.Encapsulated < 100 || b1.Arrived-a1.Arrived < 100 {
		t.Errorf("iperf3 srv-2 → srv-1: node2's programs encapsulated %d packets, node1's delivered %d: want the transfer on the eBPF datapath",
			b2.Encapsulated-a2.Encapsulated, b1.Arrived-a1.Arrived)
	}
}

// fastpathStats reads the counters of the eBPF programs on node n.
func fastpathStats(t *testing.T, n *kubecluster.Node) fastpath.Stats {
	t.Helper()
	f, err := fastpath.OpenExisting(n.BPFFSDir(), conf.DefaultNetworkName)
	if err != nil || f == nil {
		t.Fatalf("%s: the network's pins in its BPF filesystem: %v %v", n.Name, f, err)
	}
	defer f.Close()
	s, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// vtepGuard: netd, in berth's image (no iptables or nft tools), wrote
// the VTEP guard on every node, and logged no error about it.
func (m *modeRun) vtepGuard(t *testing.T) {
	ctx := context.Background()
	for _, n := range m.c.Nodes {
		var s firewall.VTEPGuardState
		if err := n.Do(func() (err error) { s, err = firewall.ReadVTEPGuard(conf.DefaultNetworkName); return err }); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		if !s.Exists() || len(s.Rules) == 0 {
			t.Errorf("%s has no VTEP guard: %+v", n.Name, s)
		}
	}
	logs, err := m.c.Kubectl(ctx, "-n", "berth-system", "logs", "-l", "app.kubernetes.io/name=berth-node", "-c", "netd", "--tail=-1", "--prefix")
	if err != nil {
		t.Fatalf("netd's logs: %v\n%s", err, logs)
	}
	var written []string
	for _, l := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(l, "VTEP guard") && strings.Contains(l, "level=ERROR"):
			t.Errorf("netd: %s", l)
		case strings.Contains(l, "VTEP guard inet "+firewall.GuardTable):
			written = append(written, l)
		}
	}
	if len(written) < len(m.c.Nodes) {
		t.Errorf("netd logged the guard written %d times, want at least once per node:\n%s", len(written), logs)
	}
	t.Logf("netd's guard changes:\n%s", strings.Join(written, "\n"))
}

// hostPort: srv-1's hostPort 30080 answers on node1's address, from a
// machine on the underlay (its address kept) and from a pod on node2.
func (m *modeRun) hostPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := fmt.Sprintf("http://%s:30080/cgi-bin/ip", m.c.Nodes[0].IP)
	body, err := m.c.TB.Underlay.Get(ctx, url)
	if err != nil {
		t.Errorf("GET %s from the underlay: %v", url, err)
	} else if got := clientAddr(string(body)); got != testbed.UnderlayIP.String() {
		t.Errorf("srv-1 saw the underlay's request coming from %q, want %s", got, testbed.UnderlayIP)
	}
	if out, err := m.get(ctx, "srv-2", url); err != nil || clientAddr(out) == "" {
		t.Errorf("GET %s from srv-2 on node2: %q, %v", url, out, err)
	}
}

// bandwidth: iperf3 from srv-2 (node2) to bw-1 (node1, shaped to 10
// Mbit/s both ways) stays within 10% of the limit; to srv-1, unshaped on
// the same node, it runs far faster.
func (m *modeRun) bandwidth(t *testing.T) {
	ctx := context.Background()
	for _, d := range []struct {
		what    string
		reverse bool
	}{{"into bw-1 (ingress)", false}, {"out of bw-1 (egress)", true}} {
		got, err := m.iperf(ctx, "srv-2", m.ip("bw-1"), d.reverse)
		if err != nil {
			t.Error(err)
			continue
		}
		t.Logf("FIGURE %s: %s %.2f Mbit/s (annotation %.0f Mbit/s)", m.name, d.what, got/1e6, shapedRate/1e6)
		if got < 0.9*shapedRate || got > 1.1*shapedRate {
			t.Errorf("%s: %.2f Mbit/s, want %.0f ± 10%%", d.what, got/1e6, shapedRate/1e6)
		}
	}
	if got, err := m.iperf(ctx, "srv-2", m.ip("srv-1"), false); err != nil {
		t.Error(err)
	} else if got < 5*shapedRate {
		t.Errorf("unshaped srv-1: %.1f Mbit/s, expected far above the shaped pod's %.0f", got/1e6, shapedRate/1e6)
	}
}

// bandwidthRefused: the eBPF datapath's programs bypass tc shaping, so
// the plugin refuses the annotated pod bw-1 (error 7) rather than run it
// unshaped, and the pod's events say why.
func (m *modeRun) bandwidthRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const want = `runtimeConfig.bandwidth: not enforced on "datapath": "ebpf"`
	for {
		var events struct {
			Items []struct {
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"items"`
		}
		err := m.c.KubectlJSON(ctx, &events, "get", "events", "-n", testNamespace, "--field-selector", "involvedObject.name=bw-1")
		for _, e := range events.Items {
			if e.Reason == "FailedCreatePodSandBox" && strings.Contains(e.Message, want) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("bw-1 (bandwidth annotations) on the eBPF datapath: no event saying %q after a minute (%v): %+v", want, err, events.Items)
		case <-time.After(time.Second):
		}
	}
}

// iperf measures TCP throughput from pod to ip (ip to pod with reverse)
// in bits/s, leaving out the first second.
func (m *modeRun) iperf(ctx context.Context, pod, ip string, reverse bool) (float64, error) {
	args := []string{"iperf3", "-c", ip, "-t", "5", "-O", "1", "-J"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := m.exec(ctx, pod, args...)
	if err != nil {
		return 0, fmt.Errorf("%s in %s: %v\n%s", strings.Join(args, " "), pod, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %v: %s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`)

// restartNetd: every netd pod is restarted by the DaemonSet (rollout
// restart) while srv-1 pings srv-2 five times a second; not one packet
// may be lost: netd leaves the datapath in place when it stops, and
// adopts it when it starts.
func (m *modeRun) restartNetd(t *testing.T) {
	ctx := context.Background()
	before, err := m.c.Pods(ctx, "berth-system", "app.kubernetes.io/name=berth-node")
	if err != nil {
		t.Fatal(err)
	}
	const window = 60 * time.Second
	type result struct {
		out string
		err error
	}
	ping := make(chan result, 1)
	go func() {
		out, err := m.exec(ctx, "srv-1", "ping", "-i", "0.2", "-w", strconv.Itoa(int(window.Seconds())), "-W", "1", m.ip("srv-2"))
		ping <- result{out, err}
	}()
	time.Sleep(2 * time.Second)
	start := time.Now()
	if out, err := m.c.Kubectl(ctx, "-n", "berth-system", "rollout", "restart", "daemonset/berth-node"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := m.c.Kubectl(ctx, "-n", "berth-system", "rollout", "status", "daemonset/berth-node", "--timeout=3m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	took := time.Since(start)
	t.Logf("FIGURE %s: rollout restart of %d netd pods took %s", m.name, len(before), took.Round(time.Millisecond))
	if took > window-5*time.Second {
		t.Errorf("the restart took %s, longer than the ping that watches it", took)
	}
	r := <-ping
	s := pingStats.FindStringSubmatch(r.out)
	if s == nil {
		t.Fatalf("ping during the restart: %v\n%s", r.err, r.out)
	}
	sent, got := s[1], s[2]
	t.Logf("FIGURE %s: %s of %s pings answered while every netd restarted", m.name, got, sent)
	if sent != got || sent == "0" {
		t.Errorf("%s of %s pings answered while netd restarted", got, sent)
	}
	after, err := m.c.Pods(ctx, "berth-system", "app.kubernetes.io/name=berth-node")
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]bool{}
	for _, p := range before {
		old[p.Metadata.Name] = true
	}
	for _, p := range after {
		if old[p.Metadata.Name] {
			t.Errorf("netd pod %s was not restarted", p.Metadata.Name)
		}
	}
}

// uninstall deletes the test pods and berth, runs uninstall.yaml, and
// checks that no trace of berth is left on any node.
func (m *modeRun) uninstall(t *testing.T, ctx context.Context, uninstall []byte) {
	c := m.c
	if out, err := c.Kubectl(ctx, "delete", "pods", "-n", testNamespace, "-l", "app=berth-test", "--wait", "--timeout=2m"); err != nil {
		t.Errorf("deleting the test pods: %v\n%s", err, out)
	}
	start := time.Now()
	if out, err := c.Delete(ctx, m.manifest, "--timeout=3m"); err != nil {
		t.Errorf("kubectl delete -f berth.yaml: %v\n%s", err, out)
	}
	if out, err := c.Apply(ctx, uninstall); err != nil {
		t.Fatalf("kubectl apply -f uninstall.yaml: %v\n%s", err, out)
	}
	if out, err := c.Kubectl(ctx, "-n", "berth-uninstall", "rollout", "status", "daemonset/berth-uninstall", "--timeout=4m"); err != nil {
		logs, _ := c.Kubectl(ctx, "-n", "berth-uninstall", "logs", "-l", "app.kubernetes.io/name=berth-uninstall", "-c", "uninstall", "--tail=20")
		t.Errorf("uninstall did not finish: %v\n%s\n%s", err, out, logs)
	}
	if out, err := c.Delete(ctx, uninstall, "--timeout=2m"); err != nil {
		t.Errorf("kubectl delete -f uninstall.yaml: %v\n%s", err, out)
	}
	t.Logf("FIGURE %s: uninstall (delete berth.yaml, uninstall.yaml until every node is clean) took %s", m.name, time.Since(start).Round(time.Millisecond))
	for _, n := range c.Nodes {
		if left := berthLeftOn(ctx, n); len(left) > 0 {
			t.Errorf("left on %s after uninstall:\n%s", n.Name, strings.Join(left, "\n"))
		}
	}
}

// berthLeftOn lists what berth made that is still on node n.
func berthLeftOn(ctx context.Context, n *kubecluster.Node) []string {
	var left []string
	for _, glob := range []string{"/opt/cni/bin/berth-*", "/etc/cni/net.d/*berth*", "/run/berth", "/var/lib/cni/networks/berth", "/var/lib/cni/results/berth-*"} {
		found, _ := filepath.Glob(n.HostPath(glob))
		for _, f := range found {
			left = append(left, "file "+f)
		}
	}
	links, err := n.Exec(ctx, "ip", "-o", "link", "show")
	if err != nil {
		left = append(left, err.Error())
	}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 && regexp.MustCompile(`^(berth|bv|bw)`).MatchString(f[1]) {
			left = append(left, "link "+strings.TrimSuffix(f[1], ":"))
		}
	}
	if _, err := os.Stat(filepath.Join(n.BPFFSDir(), "berth")); err == nil {
		left = append(left, "eBPF pins in "+filepath.Join(n.BPFFSDir(), "berth"))
	}
	err = n.Do(func() error {
		l, err := netlink.LinkByName(n.Iface)
		if err != nil {
			return err
		}
		progs, err := testenv.TCXIngressNames(l.Attrs().Index)
		if len(progs) > 0 {
			left = append(left, fmt.Sprintf("eBPF programs on %s: %v", n.Iface, progs))
		}
		return err
	})
	if err != nil {
		left = append(left, err.Error())
	}
	if routes, err := n.Exec(ctx, "ip", "route", "show", "proto", "73"); err != nil || strings.TrimSpace(routes) != "" {
		left = append(left, fmt.Sprintf("routes of protocol 73: %s %v", routes, err))
	}
	err = n.Do(func() error {
		s, err := firewall.ReadVTEPGuard(conf.DefaultNetworkName)
		if err == nil && (s.Exists() || len(s.Rules) > 0) {
			left = append(left, fmt.Sprintf("VTEP guard (nftables inet %s) %v", firewall.GuardTable, s.Rules))
		}
		return err
	})
	if err != nil {
		left = append(left, err.Error())
	}
	rules, err := n.Exec(ctx, "iptables-save")
	if err != nil {
		left = append(left, err.Error())
	}
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, "BERTH") {
			left = append(left, "iptables "+l)
		}
	}
	return left
}

// nodeDeletion: node2's Node is deleted from the cluster: node1 drops
// the routes to node2's pod subnet at once (with the Node gone, nothing
// holds the subnet). node2's kubelet then registers the Node again, and
// node1 routes to its (new) podCIDR again.
func (m *modeRun) nodeDeletion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, n2 := m.c.Nodes[0], m.c.Nodes[1]
	cidrs := m.podCIDRs(t, ctx, n2.Name)
	for _, cidr := range cidrs {
		if routes := routesTo(ctx, n1, cidr); routes == "" {
			t.Fatalf("%s has no route to %s's pod subnet %s before the deletion", n1.Name, n2.Name, cidr)
		}
	}
	start := time.Now()
	if out, err := m.c.Kubectl(ctx, "delete", "node", n2.Name, "--wait"); err != nil {
		t.Fatalf("kubectl delete node: %v\n%s", err, out)
	}
	var left string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		left = ""
		for _, cidr := range cidrs {
			left += routesTo(ctx, n1, cidr)
		}
		if left == "" {
			break
		}
	}
	if left != "" {
		t.Errorf("%s still routes to deleted node %s's pod subnets %v after 30s:\n%s", n1.Name, n2.Name, cidrs, left)
	} else {
		t.Logf("FIGURE %s: node deleted → its routes gone on the other node in %s", m.name, time.Since(start).Round(time.Millisecond))
	}

	// Back to a cluster of two nodes for what follows (uninstall).
	if err := n2.RestartKubelet(); err != nil {
		t.Fatal(err)
	}
	if err := m.c.WaitNodesReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if out, err := m.c.Kubectl(ctx, "-n", "berth-system", "rollout", "status", "daemonset/berth-node", "--timeout=2m"); err != nil {
		t.Fatalf("berth's DaemonSet after node2 came back: %v\n%s", err, out)
	}
	for _, again := range m.podCIDRs(t, ctx, n2.Name) {
		for deadline := time.Now().Add(time.Minute); routesTo(ctx, n1, again) == ""; time.Sleep(500 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s has no route to %s's pod subnet %s a minute after it registered again", n1.Name, n2.Name, again)
			}
		}
	}
}

// podCIDRs are node's spec.podCIDRs of the network's families (the
// cluster allocates both), waiting for the controller manager to
// allocate them.
func (m *modeRun) podCIDRs(t *testing.T, ctx context.Context, node string) []string {
	t.Helper()
	for {
		var n kubecluster.NodeObject
		err := m.c.KubectlJSON(ctx, &n, "get", "node", node)
		if err == nil && len(n.Spec.PodCIDRs) == 2 {
			if m.ebpf { // an IPv4 network
				return slices.DeleteFunc(n.Spec.PodCIDRs, func(c string) bool { return strings.Contains(c, ":") })
			}
			return n.Spec.PodCIDRs
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s has no podCIDR: %v", node, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// routesTo lists node's routes to exactly cidr ("" when none).
func routesTo(ctx context.Context, n *kubecluster.Node, cidr string) string {
	family := "-4"
	if strings.Contains(cidr, ":") {
		family = "-6"
	}
	out, err := n.Exec(ctx, "ip", family, "route", "show", "exact", cidr)
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(out)
}

// ownNodeOnly: netd's service account, from a pod on node1, may change
// node1's lease annotation and nothing else of any Node (RBAC grants
// patch on every Node; the manifest's admission policy narrows it).
// Server-side dry runs: the API admits or refuses, nothing changes.
func (m *modeRun) ownNodeOnly(t *testing.T) {
	ctx := context.Background()
	asNetd := []string{"--as=system:serviceaccount:berth-system:berth-node", "--as-user-extra=authentication.kubernetes.io/node-name=node1", "--dry-run=server"}
	for _, tc := range []struct {
		what    string
		args    []string
		allowed bool
	}{
		{"its own lease annotation", []string{"annotate", "--overwrite", "node", "node1", "berth.berthnet.io/lease={}"}, true},
		{"another node's lease annotation", []string{"annotate", "--overwrite", "node", "node2", "berth.berthnet.io/lease={}"}, false},
		{"another annotation of its own node", []string{"annotate", "--overwrite", "node", "node1", "example.com/x=y"}, false},
		{"a label of its own node", []string{"label", "--overwrite", "node", "node1", "example.com/x=y"}, false},
		{"its own node's taints", []string{"taint", "node", "node1", "example.com/x=y:NoSchedule"}, false},
	} {
		out, err := m.c.Kubectl(ctx, append(tc.args, asNetd...)...)
		switch {
		case tc.allowed && err != nil:
			t.Errorf("netd may not change %s: %v\n%s", tc.what, err, out)
		case !tc.allowed && err == nil:
			t.Errorf("netd may change %s:\n%s", tc.what, out)
		case !tc.allowed && !strings.Contains(err.Error()+out, "ValidatingAdmissionPolicy 'berth-node-own-annotation'"):
			t.Errorf("changing %s: refused, but not by berth's policy: %v\n%s", tc.what, err, out)
		}
	}
}
