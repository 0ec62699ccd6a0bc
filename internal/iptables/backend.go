package iptables

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/netnsdir"
)

// Backend is the kernel interface a namespace's rules go through, and the
// tools that speak it. Since iptables 1.8 a node may have two: nf_tables
// (iptables-nft, the default of current distributions) and the legacy
// xtables (iptables-legacy). The kernel evaluates the rules of both, but
// each set of tools only sees its own, and the two are not ordered with
// each other: an ACCEPT berth put in nf_tables does not get a packet past
// a legacy FORWARD chain whose policy Docker set to DROP. So berth writes
// its rules next to the node's, never in the other backend (see Open).
type Backend struct {
	// Name is "nf_tables" or "legacy".
	Name string `json:"name"`
	// Variant is the tools' infix, "-nft" or "-legacy" (iptables-nft-save),
	// or "" on a node whose iptables predates 1.8 and has one backend.
	Variant string `json:"variant"`
	// RandomFully says whether MASQUERADE takes --random-fully
	// (iptables 1.6.2 and later): source ports picked at random, so that
	// two connections masqueraded at once never race for one port.
	RandomFully bool `json:"randomFully"`
	// Version is the tools' version, "1.8.9"; "" when unknown. On
	// nf_tables it says whether berth may write the everyday changes
	// itself (see directWrite).
	Version string `json:"version,omitempty"`
	// VersionOf identifies the iptables binary Version was read from
	// (toolStamp): when iptables is upgraded or downgraded, Open reads
	// the version again.
	VersionOf string `json:"versionOf,omitempty"`
}

// Backend names as iptables --version prints them.
const (
	NFTables = "nf_tables"
	Legacy   = "legacy"
)

// backendFile caches a namespace's choice in its netnsdir directory: it
// is decided once, before berth's first rule there, and then kept for the
// namespace's life, so that berth's rules never end up in both backends.
const backendFile = "iptables-backend"

// Open returns the backend of the calling thread's network namespace:
// the one its cache names, else the one Detect picks (then cached).
func Open() (Backend, error) {
	dir, err := netnsdir.Current()
	if err != nil {
		return Backend{}, err
	}
	path := filepath.Join(dir, backendFile)
	var b Backend
	data, err := os.ReadFile(path)
	if err == nil && json.Unmarshal(data, &b) == nil && b.Name != "" {
		if b.Name != NFTables || b.VersionOf == b.toolStamp() {
			return b, nil
		}
		// iptables changed since the version was read (or a berth that
		// did not note it chose): the choice stays, the version is read
		// again. Direct writes need 1.8.9 to read them back.
		b.noteVersion()
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Backend{}, fmt.Errorf("%w: reading %s: %v", cnierr.ErrIO, path, err)
	} else {
		b = Detect()
	}
	data, _ = json.Marshal(b)
	// Written in place, not through a temporary file and a rename, which
	// a plugin killed in between would leave behind for good. Callers
	// hold the namespace's iptables lock, but CHECKs share it, so a
	// reader may find the file half-written: that is not JSON, and it
	// decides again. The answer is the same, as it is berth's chains
	// that decide once there are any.
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return Backend{}, fmt.Errorf("%w: writing %s: %v", cnierr.ErrIO, path, err)
	}
	return b, nil
}

// Detect picks the backend of the calling thread's namespace, in this
// order:
//  1. the only one installed;
//  2. the one holding berth's chains (berth was here before);
//  3. the one holding kubelet's KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY
//     chain (the kubelet's choice, which kube-proxy follows);
//  4. the one holding more rules (Docker, firewalld, kube-proxy ...),
//     as Kubernetes' iptables-wrapper decides;
//  5. with no rules anywhere, the one the node's iptables command uses
//     (the distribution's or the administrator's choice).
//
// It reads both backends' rules of both families once, which is why Open
// caches the answer.
func Detect() Backend {
	b := detect()
	b.noteVersion()
	return b
}

func detect() Backend {
	var installed []Backend
	for _, b := range []Backend{{Name: NFTables, Variant: "-nft"}, {Name: Legacy, Variant: "-legacy"}} {
		// Both variants came with iptables 1.8, which has --random-fully.
		b.RandomFully = true
		if isInstalled("iptables" + b.Variant + "-restore") {
			installed = append(installed, b)
		}
	}
	switch len(installed) {
	case 0:
		return plain()
	case 1:
		return installed[0]
	}
	type use struct{ berth, kubelet, rules int }
	uses := make([]use, len(installed))
	for i, b := range installed {
		for _, f := range []Family{IPv4, IPv6} {
			out, err := exec.Command(binary(b.tool(f, "save"))).Output()
			if err != nil {
				continue // a kernel without this backend's tables has no rules in it
			}
			u := countUse(out)
			uses[i].berth += u.berth
			uses[i].kubelet += u.kubelet
			uses[i].rules += u.rules
		}
	}
	for _, key := range []func(use) int{
		func(u use) int { return u.berth },
		func(u use) int { return u.kubelet },
		func(u use) int { return u.rules },
	} {
		if a, b := key(uses[0]), key(uses[1]); a != b {
			if a > b {
				return installed[0]
			}
			return installed[1]
		}
	}
	if plain().Name == Legacy {
		return installed[1]
	}
	return installed[0]
}

// countUse counts what iptables-save output says about who uses a backend.
func countUse(out []byte) (u struct{ berth, kubelet, rules int }) {
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, ":"+Prefix):
			u.berth++
		case strings.HasPrefix(line, ":KUBE-IPTABLES-HINT "), strings.HasPrefix(line, ":KUBE-KUBELET-CANARY "):
			u.kubelet++
		case strings.HasPrefix(line, "-A "):
			u.rules++
		}
	}
	return u
}

// plain is the backend of the node's iptables command, for nodes whose
// iptables has no -nft/-legacy variants: `iptables --version` names the
// backend ("iptables v1.8.9 (nf_tables)"), or nothing before 1.8 (legacy).
func plain() Backend {
	out, _ := exec.Command(binary("iptables"), "--version").Output()
	return parseVersion(out)
}

var versionRe = regexp.MustCompile(`v(\d+)\.(\d+)\.(\d+)(?:\s+\((\w+)\))?`)

func parseVersion(out []byte) Backend {
	b := Backend{Name: Legacy}
	m := versionRe.FindSubmatch(out)
	if m == nil {
		return b
	}
	if string(m[4]) == NFTables {
		b.Name = NFTables
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(string(m[i+1]))
	}
	b.RandomFully = v[0] > 1 || v[0] == 1 && (v[1] > 6 || v[1] == 6 && v[2] >= 2)
	return b
}

// noteVersion asks b's iptables for its version ("1.8.9", or "" if it
// does not say) and notes which binary answered.
func (b *Backend) noteVersion() {
	b.Version, b.VersionOf = "", b.toolStamp()
	out, _ := exec.Command(binary("iptables"+b.Variant), "--version").Output()
	if m := versionRe.FindSubmatch(out); m != nil {
		b.Version = fmt.Sprintf("%s.%s.%s", m[1], m[2], m[3])
	}
}

// toolStamp identifies the binary b's iptables command runs: its path
// (after symlinks, such as Debian's alternatives), size and modification
// time, which a package upgrade or downgrade changes. "" when there is
// none.
func (b Backend) toolStamp() string {
	path, err := filepath.EvalSymlinks(binary("iptables" + b.Variant))
	if err != nil {
		return ""
	}
	info, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s %d %d", path, info.Size(), info.ModTime().UnixNano())
}

// writesDirect says whether berth writes b's everyday changes through
// nf_tables' netlink API itself (directWrite): on nf_tables, with an
// iptables that reads them back.
func (b Backend) writesDirect() bool {
	if b.Name != NFTables {
		return false
	}
	var v [3]int
	parts := strings.Split(b.Version, ".")
	if len(parts) != 3 {
		return false
	}
	for i, p := range parts {
		v[i], _ = strconv.Atoi(p)
	}
	return slices.Compare(v[:], minDirectVersion[:]) >= 0
}

// tool is the name of family f's save or restore command on b:
// "ip6tables-nft-restore".
func (b Backend) tool(f Family, op string) string { return f.String() + b.Variant + "-" + op }

// Installed reports whether b has family f's tools: a node may have
// iptables without ip6tables.
func (b Backend) Installed(f Family) bool {
	return isInstalled(b.tool(f, "save")) && isInstalled(b.tool(f, "restore"))
}

// Save reads all tables of family f with one iptables-save.
func (b Backend) Save(f Family) (Tables, error) {
	cmd := exec.Command(binary(b.tool(f, "save")))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v: %s", cnierr.ErrDatapath, b.tool(f, "save"), err, strings.TrimSpace(stderr.String()))
	}
	return Parse(out)
}

// Apply commits the batches to family f with one iptables-restore
// --noflush: one exec and one kernel transaction per table, whatever the
// number of rules.
func (b Backend) Apply(f Family, batches ...*Batch) error {
	input := Restore(batches...)
	if input == "" {
		return nil
	}
	cmd := exec.Command(binary(b.tool(f, "restore")), "--noflush", "-w", "5")
	cmd.Stdin = strings.NewReader(input)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s: %v: %s\ninput:\n%s", cnierr.ErrDatapath, b.tool(f, "restore"), err, strings.TrimSpace(stderr.String()), input)
	}
	return nil
}

// binary finds an iptables tool. Runtimes may exec plugins without PATH
// (the CNI spec does not promise one), so the usual places are tried too.
func binary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	return name // exec reports it missing, naming it
}

func isInstalled(name string) bool { return binary(name) != name }

func isExecutable(p string) bool {
	info, err := os.Stat(p)
	return err == nil && !info.IsDir() && info.Mode()&0o111 != 0
}
