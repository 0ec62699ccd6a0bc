package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/netnsdir"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/containernetworking/plugins/pkg/ns"
)

// The rules berth writes directly are the ones iptables-nft-restore
// writes for the same lines, expression by expression, and every
// iptables tool takes them as its own.
func TestDirectWriteIsIptables(t *testing.T) {
	b := directBackend(t)
	rules := map[Family][]string{
		IPv4: {
			"-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
			"-d 192.168.1.5/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2:5353",
			"-j BERTH-OTHER", "-j RETURN", "-j ACCEPT",
		},
		IPv6: {
			"-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::2]:80",
			"-d fd00::5/128 -p udp -m udp --dport 65535 -j DNAT --to-destination [fd00:1::2]:1",
			"-j BERTH-OTHER", "-j RETURN",
		},
	}
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			n := testenv.NewNS(t)
			// The table and the chains the rules go to exist, as on the
			// everyday path.
			base := NewBatch("nat")
			for _, c := range []string{"BERTH-OTHER", "BERTH-BY-IPTABLES", "BERTH-BY-BERTH"} {
				base.Chain(c)
			}
			inNS(t, n, func() error { return b.Apply(f, base) })
			// The same lines, written each way.
			byIptables, byBerth := NewBatch("nat"), NewBatch("nat")
			byBerth.Chain("BERTH-DN-X")
			for _, r := range rules[f] {
				byIptables.Append("BERTH-BY-IPTABLES", r)
				byBerth.Append("BERTH-BY-BERTH", r)
				byBerth.Append("BERTH-DN-X", r)
			}
			byBerth.Insert("BERTH-BY-BERTH", "-j BERTH-DN-X")
			byIptables.Insert("BERTH-BY-IPTABLES", "-j BERTH-DN-X")
			if err := writeDirect(t, n, b, f, byBerth); err != nil {
				t.Fatal(err)
			}
			inNS(t, n, func() error { return b.Apply(f, byIptables) })
			var got, want [][]byte
			inNS(t, n, func() error {
				var err error
				if got, err = dumpRules(f, "nat", "BERTH-BY-BERTH"); err != nil {
					return err
				}
				want, err = dumpRules(f, "nat", "BERTH-BY-IPTABLES")
				return err
			})
			if len(got) != len(want) || len(got) != len(rules[f])+1 {
				t.Fatalf("%d rules written directly, %d by iptables-nft-restore, want %d", len(got), len(want), len(rules[f])+1)
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Errorf("rule %d: berth wrote\n%x\niptables-nft-restore wrote\n%x", i, got[i], want[i])
				}
			}
			// iptables-save prints both chains alike, and the ones
			// written directly are known to iptables -D.
			out, err := testenv.InNS(n, f.String()+"-nft-save", "-t", "nat")
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			saved, _ := Parse(out)
			nat := saved.Get("nat")
			if g, w := fmt.Sprint(nat.Rules("BERTH-BY-BERTH")), fmt.Sprint(nat.Rules("BERTH-BY-IPTABLES")); g != w || g != fmt.Sprint(append([]string{"-j BERTH-DN-X"}, rules[f]...)) {
				t.Errorf("iptables-save: written directly\n%s\nby iptables-nft-restore\n%s", g, w)
			}
			if g := fmt.Sprint(nat.Rules("BERTH-DN-X")); g != fmt.Sprint(rules[f]) {
				t.Errorf("iptables-save: BERTH-DN-X holds %s", g)
			}
			for _, r := range rules[f] {
				args := append([]string{"-t", "nat", "-D", "BERTH-DN-X"}, strings.Fields(r)...)
				if out, err := testenv.InNS(n, f.String()+"-nft", args...); err != nil {
					t.Errorf("%s -D %s: %v: %s", f, r, err, out)
				}
			}
		})
	}
}

// planDirect takes what the everyday paths write and leaves everything
// else to iptables-restore.
func TestPlanDirect(t *testing.T) {
	saved, _ := Parse([]byte("*nat\n:BERTH-HOSTPORTS - [0:0]\n:PREROUTING ACCEPT [0:0]\n:BERTH-DN-1 - [0:0]\n" +
		"-A BERTH-HOSTPORTS -j BERTH-DN-1\n-A BERTH-DN-1 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080\nCOMMIT\n"))
	tests := []struct {
		name  string
		f     Family
		lines []string
		table string
		steps int // 0: not written directly
	}{
		{"a DNAT chain and its jump", IPv4, []string{":BERTH-DN-2 - [0:0]",
			"-A BERTH-DN-2 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080",
			"-A BERTH-DN-2 -d 10.1.1.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2:53",
			"-A BERTH-HOSTPORTS -j BERTH-DN-2"}, "nat", 2 + 3},
		{"IPv6", IPv6, []string{":BERTH-DN-2 - [0:0]",
			"-A BERTH-DN-2 -d fd00::1/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::2]:8080",
			"-I BERTH-HOSTPORTS 1 -j BERTH-DN-2"}, "nat", 2 + 2},
		{"a DNAT chain and its jump removed", IPv4, []string{"-D BERTH-HOSTPORTS -j BERTH-DN-1",
			"-D BERTH-DN-1 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080", "-X BERTH-DN-1"}, "nat", 1 + 2},
		{"a jump out of a builtin chain removed", IPv4, []string{"-D PREROUTING -j BERTH-HOSTPORTS"}, "nat", 1},
		{"a table that does not exist yet", IPv4, []string{":BERTH-FWD - [0:0]"}, "filter", 0},
		{"a chain that does not exist", IPv4, []string{"-A BERTH-NONE -j ACCEPT"}, "nat", 0},
		{"a builtin chain", IPv4, []string{":PREROUTING - [0:0]"}, "nat", 0},
		{"a builtin chain removed", IPv4, []string{"-X PREROUTING"}, "nat", 0},
		{"a chain that does not exist removed", IPv4, []string{"-X BERTH-NONE"}, "nat", 0},
		{"a deletion by a spec", IPv4, []string{"-D BERTH-HOSTPORTS -p tcp -j BERTH-DN-1"}, "nat", 0},
		{"a jump to a chain not berth's removed", IPv4, []string{"-D BERTH-HOSTPORTS -j ACCEPT"}, "nat", 0},
		{"an insertion lower down", IPv4, []string{"-I BERTH-HOSTPORTS 2 -j ACCEPT"}, "nat", 0},
		{"another match", IPv4, []string{"-A BERTH-HOSTPORTS -m conntrack --ctstate DNAT -j ACCEPT"}, "nat", 0},
		{"a source", IPv4, []string{"-A BERTH-HOSTPORTS -s 10.0.0.0/8 -j ACCEPT"}, "nat", 0},
		{"a destination subnet", IPv4, []string{"-A BERTH-HOSTPORTS -d 10.0.0.0/8 -j ACCEPT"}, "nat", 0},
		{"DROP", IPv4, []string{"-A BERTH-HOSTPORTS -j DROP"}, "nat", 0},
		{"another target", IPv4, []string{"-A BERTH-HOSTPORTS -j MASQUERADE"}, "nat", 0},
		{"a jump out of berth's chains", IPv4, []string{"-A BERTH-HOSTPORTS -j KUBE-SERVICES"}, "nat", 0},
		{"sctp", IPv4, []string{"-A BERTH-HOSTPORTS -p sctp -m sctp --dport 80 -j DNAT --to-destination 10.0.0.2:80"}, "nat", 0},
		{"DNAT without a port", IPv4, []string{"-A BERTH-HOSTPORTS -p tcp -j DNAT --to-destination 10.0.0.2"}, "nat", 0},
		{"a port without its match", IPv4, []string{"-A BERTH-HOSTPORTS -p tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80"}, "nat", 0},
		{"the other family's address", IPv4, []string{"-A BERTH-HOSTPORTS -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::2]:80"}, "nat", 0},
		{"an inverted match", IPv4, []string{"-A BERTH-HOSTPORTS ! -d 10.0.0.1/32 -j ACCEPT"}, "nat", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBatch(tt.table)
			b.lines = tt.lines
			w, ok := planDirect(tt.f, saved, []*Batch{b})
			if steps := 0; ok {
				steps = len(w.steps)
				if steps != tt.steps {
					t.Errorf("planDirect(%q): %d steps, want %d", tt.lines, steps, tt.steps)
				}
			} else if tt.steps != 0 {
				t.Errorf("planDirect(%q): not written directly", tt.lines)
			}
		})
	}
	big := NewBatch("nat")
	for range maxDirectSteps + 1 {
		big.Append("BERTH-HOSTPORTS", "-j RETURN")
	}
	if _, ok := planDirect(IPv4, saved, []*Batch{big}); ok {
		t.Errorf("%d rules written directly: more than the socket's buffers hold with the answers", maxDirectSteps+1)
	}
	for v, want := range map[string]bool{"1.8.9": true, "1.8.11": true, "1.10.0": true, "1.8.8": false, "1.6.2": false, "": false} {
		if got := (Backend{Name: NFTables, Version: v}).writesDirect(); got != want {
			t.Errorf("iptables-nft %q writes directly: %v, want %v", v, got, want)
		}
	}
	if (Backend{Name: Legacy, Version: "1.8.9"}).writesDirect() {
		t.Error("legacy iptables written directly")
	}
}

// A jump deleted directly goes as iptables -D takes it: the first rule
// that only jumps there, not a duplicate; a jump that is not there
// refuses the whole transaction, which then changes nothing.
func TestDirectDelete(t *testing.T) {
	b := directBackend(t)
	n := testenv.NewNS(t)
	setup := NewBatch("nat")
	for _, c := range []string{"BERTH-HOSTPORTS", "BERTH-DN-A", "BERTH-DN-B"} {
		setup.Chain(c)
	}
	for _, r := range []string{"-p tcp -j BERTH-DN-A", "-j BERTH-DN-A", "-j BERTH-DN-B", "-j BERTH-DN-A"} {
		setup.Append("BERTH-HOSTPORTS", r)
	}
	setup.Append("BERTH-DN-B", "-p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80")
	inNS(t, n, func() error { return b.Apply(IPv4, setup) })
	hostports := func() string {
		out, err := testenv.InNS(n, "iptables-nft-save", "-t", "nat")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		ts, _ := Parse(out)
		return strings.Join(ts.Get("nat").Rules("BERTH-HOSTPORTS"), ", ") + fmt.Sprintf(" (BERTH-DN-B there: %v)", ts.Get("nat").HasChain("BERTH-DN-B"))
	}
	write := func(lines ...string) error {
		batch := NewBatch("nat")
		batch.lines = lines
		return writeDirect(t, n, b, IPv4, batch)
	}
	if err := write("-D BERTH-HOSTPORTS -j BERTH-DN-A"); err != nil {
		t.Fatal(err)
	}
	if got, want := hostports(), "-p tcp -j BERTH-DN-A, -j BERTH-DN-B, -j BERTH-DN-A (BERTH-DN-B there: true)"; got != want {
		t.Errorf("after -D -j BERTH-DN-A: %s, want %s", got, want)
	}
	if err := write("-D BERTH-HOSTPORTS -j BERTH-DN-B", "-D BERTH-DN-B -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80", "-X BERTH-DN-B"); err != nil {
		t.Fatal(err)
	}
	if got, want := hostports(), "-p tcp -j BERTH-DN-A, -j BERTH-DN-A (BERTH-DN-B there: false)"; got != want {
		t.Errorf("after BERTH-DN-B removed: %s, want %s", got, want)
	}
	if err := write("-D BERTH-DN-A -j BERTH-DN-B"); !errors.Is(err, errNotApplied) {
		t.Errorf("a jump that is not there: %v, want a refusal", err)
	}
	// The kernel refuses to remove a chain that rules jump to, and
	// then applies nothing of the transaction.
	if err := write("-A BERTH-HOSTPORTS -j RETURN", "-X BERTH-DN-A"); !errors.Is(err, errNotApplied) {
		t.Errorf("a chain in use removed: %v, want a refusal", err)
	}
	if got, want := hostports(), "-p tcp -j BERTH-DN-A, -j BERTH-DN-A (BERTH-DN-B there: false)"; got != want {
		t.Errorf("after a refused transaction: %s, want %s", got, want)
	}
}

// writeDirect writes batch to family f in n as planDirect and commit do,
// failing the test unless it is written directly, and returns commit's
// error.
func writeDirect(t *testing.T, n ns.NetNS, b Backend, f Family, batch *Batch) error {
	t.Helper()
	var err error
	inNS(t, n, func() error {
		ts, serr := b.Save(f)
		if serr != nil {
			return serr
		}
		w, ok := planDirect(f, ts, []*Batch{batch})
		if !ok {
			return fmt.Errorf("%q: not written directly", batch.lines)
		}
		err = w.commit()
		return nil
	})
	return err
}

// directBackend is the nf_tables backend, skipping the test where its
// iptables is missing or too old for berth to write directly.
func directBackend(t *testing.T) Backend {
	if !isInstalled("iptables-nft-restore") {
		t.Skip("needs iptables-nft")
	}
	b := Backend{Name: NFTables, Variant: "-nft"}
	b.noteVersion()
	if !b.writesDirect() {
		t.Skipf("iptables-nft %s is older than berth writes for", b.Version)
	}
	return b
}

// dumpRules returns the expressions (NFTA_RULE_EXPRESSIONS, as the
// kernel lists them) of every rule of a chain, in order.
func dumpRules(f Family, table, chain string) ([][]byte, error) {
	family := uint8(unix.NFPROTO_IPV4)
	if f == IPv6 {
		family = unix.NFPROTO_IPV6
	}
	rules, err := listRules(family, table, chain)
	var exprs [][]byte
	for _, r := range rules {
		exprs = append(exprs, r.exprs)
	}
	return exprs, err
}

// The largest transaction written directly fits a netlink socket's
// default buffers, also where they cannot be forced larger (in a user
// namespace, as rootless podman's network namespace is), and a larger
// one (a container publishing a thousand ports) goes through
// iptables-restore whole. (In a user namespace iptables-nft-restore
// itself cannot send that one: "Message too long".)
func TestDirectWriteLargeTransaction(t *testing.T) {
	if os.Getenv("BERTH_TEST_IN_USERNS") != "" {
		largeTransactions(t, false)
		return
	}
	directBackend(t)
	t.Run("privileged", func(t *testing.T) {
		n := testenv.NewNS(t)
		inNS(t, n, func() error { largeTransactions(t, true); return nil })
	})
	t.Run("user namespace", func(t *testing.T) {
		// A new user and network namespace: the test binary runs this
		// test again in there.
		cmd := exec.Command("unshare", "--user", "--map-root-user", "--net", os.Args[0], "-test.run=^TestDirectWriteLargeTransaction$", "-test.v")
		cmd.Env = append(os.Environ(), "BERTH_TEST_IN_USERNS=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("in a user namespace: %v\n%s", err, out)
		}
	})
}

// largeTransactions writes the largest direct transaction, then, with
// aRange, 1000 port mappings, in the calling thread's namespace, and
// reads them back.
func largeTransactions(t *testing.T, aRange bool) {
	b := directBackend(t)
	dir, err := netnsdir.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	base := NewBatch("nat")
	base.Chain("BERTH-HOSTPORTS")
	if err := b.Apply(IPv4, base); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		chain  string
		rules  int
		direct bool
	}{
		{"BERTH-DN-LARGEST", maxDirectSteps - 3, true}, // the chain made and flushed, the jump to it
		{"BERTH-DN-RANGE", 1000, false},
	} {
		if tc.rules > maxDirectSteps && !aRange {
			continue
		}
		c := b.Begin()
		ts, err := c.Save(IPv4)
		if err != nil {
			t.Fatal(err)
		}
		w := NewBatch("nat")
		w.Chain(tc.chain)
		var want []string
		for p := range tc.rules {
			want = append(want, fmt.Sprintf("-p tcp -m tcp --dport %d -j DNAT --to-destination 10.0.0.2:%d", 10000+p, 10000+p))
			w.Append(tc.chain, want[p])
		}
		w.Append("BERTH-HOSTPORTS", "-j "+tc.chain)
		if _, ok := planDirect(IPv4, ts, []*Batch{w}); ok != tc.direct {
			t.Errorf("%d rules written directly: %v, want %v", tc.rules, ok, tc.direct)
		}
		err = c.Apply(IPv4, w)
		c.Close()
		if err != nil {
			t.Fatalf("%d port mappings: %v", tc.rules, err)
		}
		saved, err := b.Save(IPv4)
		if err != nil {
			t.Fatal(err)
		}
		if got := saved.Get("nat").Rules(tc.chain); !slices.Equal(got, want) {
			t.Errorf("%d rules in the kernel, want %d", len(got), len(want))
		}
	}
}
