package testenv

import (
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Written here rather than imported: internal/iptables' own tests use
// this package.
const (
	ruleCache   = "iptables-rules.json" // internal/iptables' cacheFile
	berthChains = "BERTH-"              // internal/iptables.Prefix
)

// Snapshot describes what a leak would change in netns n: its links and
// their addresses, its iptables and ip6tables rules and chains (both
// backends), its routes, the plugins' files of the namespace (host port
// claims) and the files under dirs (IPAM and state). Compare a snapshot before and after a test's containers come
// and go.
func Snapshot(t testing.TB, n ns.NetNS, dirs ...string) string {
	t.Helper()
	dirs = append(dirs, NetnsDir(t, n))
	var b strings.Builder
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			fmt.Fprintf(&b, "link %s\n", l.Attrs().Name)
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
			for _, a := range addrs {
				if a.IP.IsGlobalUnicast() {
					fmt.Fprintf(&b, "address %s %s\n", l.Attrs().Name, a.IPNet)
				}
			}
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.IsGlobalUnicast() {
				fmt.Fprintf(&b, "route %s dev %d\n", r.Dst, r.LinkIndex)
			}
		}
		return err
	})
	if err != nil {
		t.Fatalf("listing links: %v", err)
	}
	// Every table of both families, in both backends when the node has
	// them: a rule or a chain berth left in either is a leak. Builtin
	// chains (a policy, not "-") are left out: a table a call created
	// stays with them, and asking for a table by name (-t) would create
	// it in the legacy backend.
	for _, tool := range []string{"iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(tool); err != nil && strings.Contains(tool, "legacy") {
			continue
		}
		out, err := InNS(n, tool)
		if err != nil {
			t.Fatalf("%s: %v: %s", tool, err, out)
		}
		table := ""
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "*") {
				table = line[1:]
			}
			if strings.HasPrefix(line, "-A") || strings.HasPrefix(line, ":") && strings.Contains(line, " - [") {
				fmt.Fprintf(&b, "%s %s %s\n", tool, table, line)
			}
		}
	}
	// berth's cache of the namespace's rules (internal/iptables) is kept
	// or dropped by each call, depending on whether anything else
	// committed to nf_tables during it: while berth has rules here its
	// presence is timing, not a leak. Once the last rule is gone, it
	// must be gone too.
	berthRules := strings.Contains(b.String(), " :"+berthChains) || strings.Contains(b.String(), " -A "+berthChains)
	var files []string
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() && !strings.HasSuffix(p, ".lock") && filepath.Base(p) != "lock" &&
				!strings.HasPrefix(filepath.Base(p), "last_reserved_ip") && filepath.Base(p) != ".berth-index" &&
				filepath.Base(p) != "iptables-backend" && // decided once per namespace (internal/iptables.Open)
				!(berthRules && filepath.Base(p) == ruleCache) {
				files = append(files, p)
			}
			return nil
		})
	}
	sort.Strings(files)
	for _, f := range files {
		fmt.Fprintf(&b, "file %s\n", f)
	}
	return stripCounters(b.String())
}

// stripCounters removes the packet counters iptables-save prints on chains.
func stripCounters(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if j := strings.Index(l, " ["); j > 0 && strings.Contains(l, " :") {
			lines[i] = l[:j]
		}
	}
	return strings.Join(lines, "\n")
}

// Diff lists the lines only in before (-) or only in after (+): what a
// leak or an over-eager cleanup changed. Empty when they match.
func Diff(before, after string) string {
	count := map[string]int{}
	for _, l := range strings.Split(before, "\n") {
		count[l]--
	}
	for _, l := range strings.Split(after, "\n") {
		count[l]++
	}
	var out []string
	for l, c := range count {
		switch {
		case c < 0:
			out = append(out, "- "+l)
		case c > 0:
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
