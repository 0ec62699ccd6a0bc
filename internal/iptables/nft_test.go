package iptables

import (
	"bytes"
	byteorder "encoding/binary"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// The rules berth writes directly are the ones iptables-nft-restore
// writes for the same lines, expression by expression, and every
// iptables tool takes them as its own.
func TestDirectWriteIsIptables(t *testing.T) {
	if !isInstalled("iptables-nft-restore") {
		t.Skip("needs iptables-nft")
	}
	b := Backend{Name: NFTables, Variant: "-nft"}
	b.Version = b.version()
	if !b.writesDirect() {
		t.Skipf("iptables-nft %s is older than berth writes for", b.Version)
	}
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
			c := begin(t, n)
			inNS(t, n, func() error {
				ts, err := c.Save(f)
				if err != nil {
					return err
				}
				w, ok := planDirect(f, ts, []*Batch{byBerth})
				if !ok {
					return fmt.Errorf("%q: not written directly", byBerth.lines)
				}
				if err := w.commit(); err != nil {
					return err
				}
				return b.Apply(f, byIptables)
			})
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

// planDirect takes what the everyday path writes and leaves everything
// else to iptables-restore.
func TestPlanDirect(t *testing.T) {
	saved, _ := Parse([]byte("*nat\n:BERTH-HOSTPORTS - [0:0]\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"))
	tests := []struct {
		name  string
		f     Family
		lines []string
		table string
		want  bool
	}{
		{"a DNAT chain and its jump", IPv4, []string{":BERTH-DN-1 - [0:0]",
			"-A BERTH-DN-1 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080",
			"-A BERTH-DN-1 -d 10.1.1.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2:53",
			"-A BERTH-HOSTPORTS -j BERTH-DN-1"}, "nat", true},
		{"IPv6", IPv6, []string{":BERTH-DN-1 - [0:0]",
			"-A BERTH-DN-1 -d fd00::1/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::2]:8080",
			"-I BERTH-HOSTPORTS 1 -j BERTH-DN-1"}, "nat", true},
		{"a table that does not exist yet", IPv4, []string{":BERTH-FWD - [0:0]"}, "filter", false},
		{"a chain that does not exist", IPv4, []string{"-A BERTH-NONE -j ACCEPT"}, "nat", false},
		{"a builtin chain", IPv4, []string{":PREROUTING - [0:0]"}, "nat", false},
		{"a deletion", IPv4, []string{"-D BERTH-HOSTPORTS -j BERTH-DN-1"}, "nat", false},
		{"a chain removed", IPv4, []string{"-X BERTH-DN-1"}, "nat", false},
		{"an insertion lower down", IPv4, []string{"-I BERTH-HOSTPORTS 2 -j ACCEPT"}, "nat", false},
		{"another match", IPv4, []string{"-A BERTH-HOSTPORTS -m conntrack --ctstate DNAT -j ACCEPT"}, "nat", false},
		{"a source", IPv4, []string{"-A BERTH-HOSTPORTS -s 10.0.0.0/8 -j ACCEPT"}, "nat", false},
		{"a destination subnet", IPv4, []string{"-A BERTH-HOSTPORTS -d 10.0.0.0/8 -j ACCEPT"}, "nat", false},
		{"DROP", IPv4, []string{"-A BERTH-HOSTPORTS -j DROP"}, "nat", false},
		{"another target", IPv4, []string{"-A BERTH-HOSTPORTS -j MASQUERADE"}, "nat", false},
		{"a jump out of berth's chains", IPv4, []string{"-A BERTH-HOSTPORTS -j KUBE-SERVICES"}, "nat", false},
		{"sctp", IPv4, []string{"-A BERTH-HOSTPORTS -p sctp -m sctp --dport 80 -j DNAT --to-destination 10.0.0.2:80"}, "nat", false},
		{"DNAT without a port", IPv4, []string{"-A BERTH-HOSTPORTS -p tcp -j DNAT --to-destination 10.0.0.2"}, "nat", false},
		{"a port without its match", IPv4, []string{"-A BERTH-HOSTPORTS -p tcp --dport 80 -j DNAT --to-destination 10.0.0.2:80"}, "nat", false},
		{"the other family's address", IPv4, []string{"-A BERTH-HOSTPORTS -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::2]:80"}, "nat", false},
		{"an inverted match", IPv4, []string{"-A BERTH-HOSTPORTS ! -d 10.0.0.1/32 -j ACCEPT"}, "nat", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBatch(tt.table)
			b.lines = tt.lines
			w, ok := planDirect(tt.f, saved, []*Batch{b})
			if ok != tt.want {
				t.Fatalf("planDirect(%q) = %v, want %v", tt.lines, ok, tt.want)
			}
			if ok && len(w.msgs) != len(tt.lines)+1 { // a chain: created, then flushed
				t.Errorf("%d messages for %d lines", len(w.msgs), len(tt.lines))
			}
		})
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

// dumpRules returns the expressions (NFTA_RULE_EXPRESSIONS, as the
// kernel dumps them) of every rule of a chain, in order.
func dumpRules(f Family, table, chain string) ([][]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	family := uint8(unix.NFPROTO_IPV4)
	if f == IPv6 {
		family = unix.NFPROTO_IPV6
	}
	req := nfMessage(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family, 0,
		concat([][]byte{attr(unix.NFTA_RULE_TABLE, cstr(table)), attr(unix.NFTA_RULE_CHAIN, cstr(chain))}))
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var rules [][]byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return rules, nil
			case unix.NLMSG_ERROR:
				return nil, fmt.Errorf("dumping %s %s: %w", table, chain, syscall.Errno(-int32(byteorder.NativeEndian.Uint32(m.Data))))
			}
			for a := m.Data[4:]; len(a) >= unix.NLA_HDRLEN; {
				l := int(byteorder.NativeEndian.Uint16(a))
				if l < unix.NLA_HDRLEN || l > len(a) {
					break
				}
				if byteorder.NativeEndian.Uint16(a[2:])&^unix.NLA_F_NESTED == unix.NFTA_RULE_EXPRESSIONS {
					rules = append(rules, bytes.Clone(a[unix.NLA_HDRLEN:l]))
				}
				a = a[min((l+3)&^3, len(a)):]
			}
		}
	}
}
