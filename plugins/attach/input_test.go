package attach_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// exec runs the plugin binary as a runtime would, inside the node.
func execPlugin(t *testing.T, n *node, env map[string]string, stdin string) (map[string]any, error) {
	t.Helper()
	return execPluginIn(t, n, t.TempDir(), env, stdin) // a relative path in the config must not land in the source tree
}

// execPluginIn is execPlugin in the working directory dir.
func execPluginIn(t *testing.T, n *node, dir string, env map[string]string, stdin string) (map[string]any, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(testenv.BinDir(t, "berth-bridge"), "berth-bridge"))
	cmd.Env = []string{"CNI_PATH=" + testenv.BinDir(t)}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	var err error
	n.ns.Do(func(ns.NetNS) error { err = cmd.Run(); return nil })
	var res map[string]any
	json.Unmarshal(out.Bytes(), &res)
	return res, err
}

func TestBadInputGivesErrorAndLeavesNothing(t *testing.T) {
	n := newNode(t)
	cont := testenv.NewNS(t)
	good := func(mutate func(m map[string]any)) string {
		m := map[string]any{}
		json.Unmarshal([]byte(n.conflistPlugin("bad", "berth0", "10.70.0.0/24")), &m)
		mutate(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	// withIPv6 gives m ranges with IPv6, on the iptables datapath: the
	// eBPF one refuses IPv6 (TestEBPFConfigErrors), and these cases are
	// about other errors.
	withIPv6 := func(m map[string]any, ranges ...string) {
		var sets [][]map[string]any
		for _, r := range ranges {
			sets = append(sets, []map[string]any{{"subnet": r}})
		}
		m["ipam"].(map[string]any)["ranges"] = sets
		delete(m, "datapath")
		delete(m, "bpffs")
	}
	env := func(over map[string]string) map[string]string {
		e := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad1", "CNI_NETNS": cont.Path(), "CNI_IFNAME": "eth0"}
		for k, v := range over {
			if v == "" {
				delete(e, k)
			} else {
				e[k] = v
			}
		}
		return e
	}
	notNS := filepath.Join(t.TempDir(), "plain-file")
	os.WriteFile(notNS, nil, 0o644)
	// A container that already has eth0 (a previous attachment).
	busy := testenv.NewNS(t)
	testenv.Link(t, busy, "eth0", "", testenv.NewNS(t), "x", "")

	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		code  float64
		field string
	}{
		{"malformed JSON", env(nil), `{"cniVersion":"1.1.0",`, 6, "JSON"},
		{"wrong cniVersion", env(nil), good(func(m map[string]any) { m["cniVersion"] = "0.2.0" }), 1, "0.2.0"},
		{"bad CIDR", env(nil), good(func(m map[string]any) {
			m["ipam"].(map[string]any)["ranges"] = [][]map[string]any{{{"subnet": "10.0.0.0/40"}}}
		}), 7, "subnet"},
		{"overlapping ranges", env(nil), good(func(m map[string]any) {
			m["ipam"].(map[string]any)["ranges"] = [][]map[string]any{{{"subnet": "10.1.0.0/24"}}, {{"subnet": "10.1.0.0/16"}}}
		}), 7, "overlaps"},
		{"MTU out of range", env(nil), good(func(m map[string]any) { m["mtu"] = 99999 }), 7, "mtu"},
		{"invalid port", env(nil), good(func(m map[string]any) {
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}}}
		}), 7, "hostPort"},
		{"invalid protocol", env(nil), good(func(m map[string]any) {
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "protocol": "gre"}}}
		}), 7, "protocol"},
		{"unknown ipam type", env(nil), good(func(m map[string]any) { m["ipam"].(map[string]any)["type"] = "no-such-ipam" }), 7, "ipam.type"},
		{"mtu of the wrong JSON type", env(nil), good(func(m map[string]any) { m["mtu"] = "1500" }), 7, "mtu:"},
		{"subnet of the wrong JSON type", env(nil), good(func(m map[string]any) {
			m["ipam"].(map[string]any)["ranges"] = []any{[]any{map[string]any{"subnet": "10.70.0.0/24"}, map[string]any{"subnet": 10}}}
		}), 7, "ipam.ranges[0][1].subnet:"},
		{"port of the wrong JSON type", env(nil), good(func(m map[string]any) {
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": "80", "containerPort": 80}}}
		}), 7, "runtimeConfig.portMappings[0].hostPort:"},
		{"MTU too small for an IPv6 range", env(nil), good(func(m map[string]any) {
			m["mtu"] = 1200
			withIPv6(m, "10.70.0.0/24", "fd00:70::/64")
		}), 7, "mtu:"},
		{"IPv4 hostIP on an IPv6-only network", env(nil), good(func(m map[string]any) {
			withIPv6(m, "fd00:70::/64")
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "hostIP": "192.0.2.2"}}}
		}), 7, "runtimeConfig.portMappings[0].hostIP"},
		{"0.0.0.0 hostIP on an IPv6-only network", env(nil), good(func(m map[string]any) {
			withIPv6(m, "fd00:70::/64")
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80}, {"hostPort": 81, "containerPort": 80, "hostIP": "0.0.0.0"}}}
		}), 7, "runtimeConfig.portMappings[1].hostIP"},
		{"IPv6 hostIP on an IPv4-only network", env(nil), good(func(m map[string]any) {
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "hostIP": "2001:db8::2"}}}
		}), 7, "runtimeConfig.portMappings[0].hostIP"},
		{"hostIP ::1", env(nil), good(func(m map[string]any) {
			withIPv6(m, "10.70.0.0/24", "fd00:70::/64")
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "hostIP": "::1"}}}
		}), 7, "runtimeConfig.portMappings[0].hostIP: ::1"},
		{"one port twice on overlapping host addresses", env(nil), good(func(m map[string]any) {
			m["runtimeConfig"] = map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "hostIP": "::"}, {"hostPort": 80, "containerPort": 81}}}
		}), 7, "runtimeConfig.portMappings[1]"},
		{"relative stateDir", env(nil), good(func(m map[string]any) { m["stateDir"] = "state" }), 7, `stateDir: "state" is not an absolute path`},
		{"relative ipam dataDir", env(nil), good(func(m map[string]any) { m["ipam"].(map[string]any)["dataDir"] = "networks" }), 7,
			`ipam.dataDir: "networks" is not an absolute path`},
		{"CNI_NETNS is the plugin's own", env(map[string]string{"CNI_NETNS": "/proc/self/ns/net"}), good(func(map[string]any) {}), 4, "CNI_NETNS"},
		{"CNI_ARGS MAC not a MAC", env(map[string]string{"CNI_ARGS": "IgnoreUnknown=1;MAC=02:xx"}), good(func(map[string]any) {}), 4, "MAC"},
		{"missing netns", env(map[string]string{"CNI_NETNS": "/proc/nonexistent/ns/net"}), good(func(map[string]any) {}), 4, "CNI_NETNS"},
		{"netns not a namespace", env(map[string]string{"CNI_NETNS": notNS}), good(func(map[string]any) {}), 4, "CNI_NETNS"},
		{"ifName too long", env(map[string]string{"CNI_IFNAME": "averyveryverylongname"}), good(func(map[string]any) {}), 4, "interface name"},
		{"ifName odd characters", env(map[string]string{"CNI_IFNAME": "eth/0"}), good(func(map[string]any) {}), 4, "interface name"},
		{"ifName in use", env(map[string]string{"CNI_NETNS": busy.Path()}), good(func(map[string]any) {}), 103, "eth0"},
		{"missing container id", env(map[string]string{"CNI_CONTAINERID": ""}), good(func(map[string]any) {}), 4, "CNI_CONTAINERID"},
	}
	before := n.snapshot(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := execPlugin(t, n, tt.env, tt.stdin)
			if err == nil {
				t.Fatalf("ADD succeeded: %v", res)
			}
			code, _ := res["code"].(float64)
			details, _ := res["details"].(string)
			msg, _ := res["msg"].(string)
			text := details + " " + msg
			// Runtimes print "msg; details": saying the kind twice is noise.
			if msg == "" || strings.Contains(details, msg) {
				t.Errorf("details %q repeat msg %q", details, msg)
			}
			if tt.code != 0 && code != tt.code {
				t.Errorf("code = %v, want %v (%v)", code, tt.code, res)
			}
			if !strings.Contains(text, tt.field) {
				t.Errorf("message %q does not name %q", text, tt.field)
			}
			if after := n.snapshot(t); after != before {
				t.Errorf("failed ADD left:\n%s\nvs\n%s", after, before)
			}
		})
	}
}

// An earlier berth took a relative stateDir and dataDir, which ADD now
// refuses: DEL still removes what such an ADD recorded, run from the
// directory the paths resolve in.
func TestRelativePathsStillDeleted(t *testing.T) {
	n := newNode(t)
	dir := filepath.Dir(n.stateDir)
	if filepath.Dir(n.dataDir) != dir {
		t.Fatalf("stateDir %s and dataDir %s are in different directories", n.stateDir, n.dataDir)
	}
	before := n.snapshot(t)
	cont := testenv.NewNS(t)
	env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "rel1", "CNI_NETNS": cont.Path(), "CNI_IFNAME": "eth0"}
	if res, err := execPluginIn(t, n, dir, env, n.conflistPlugin("rel", "berth0", "10.71.0.0/24")); err != nil {
		t.Fatalf("ADD with absolute paths: %v %v", err, res)
	}
	relative := map[string]any{}
	json.Unmarshal([]byte(n.conflistPlugin("rel", "berth0", "10.71.0.0/24")), &relative)
	relative["stateDir"] = filepath.Base(n.stateDir)
	relative["ipam"].(map[string]any)["dataDir"] = filepath.Base(n.dataDir)
	stdin, _ := json.Marshal(relative)
	env["CNI_COMMAND"] = "DEL"
	if res, err := execPluginIn(t, n, dir, env, string(stdin)); err != nil {
		t.Fatalf("DEL with relative paths: %v %v", err, res)
	}
	n.checkNothingLeft(t, before, "berth0")
}
