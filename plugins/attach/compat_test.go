package attach_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// Every cniVersion runtimes' configs carry works for every command the
// version has, and results come back in that version (0.3.x had no
// CHECK, 1.0.0 no GC or STATUS: libcni does not send them). Before, 0.3.0
// and 0.3.1 were refused, even for DEL, so a runtime holding such a
// config could not clean up.
func TestCNIVersions(t *testing.T) {
	n := newNode(t)
	for i, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			list := strings.Replace(n.conflist("ver", "berth0", "10.90.0.0/24", `"promiscMode":true,`), `"cniVersion":"1.1.0"`, `"cniVersion":"`+v+`"`, 1)
			rt := testenv.NewRuntime(t, n.ns, list)
			mac := fmt.Sprintf("02:42:ac:11:00:%02x", i+1)
			c := container(t, "v"+v, port(25000+i, 80, "tcp"))
			c.Caps["mac"] = mac
			res, err := rt.Add(c)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Interfaces[2].Mac != mac {
				t.Errorf("container MAC %s, want %s from the mac capability", res.Interfaces[2].Mac, mac)
			}
			out, _ := testenv.InNS(n.ns, "ip", "link", "show", "berth0")
			if !strings.Contains(string(out), "PROMISC") {
				t.Errorf("promiscMode: bridge is %s", out)
			}
			if v != "0.3.0" && v != "0.3.1" {
				if err := rt.Check(c); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if v == "1.1.0" {
				if err := rt.Status(); err != nil {
					t.Errorf("STATUS: %v", err)
				}
				if err := rt.GC(c); err != nil {
					t.Errorf("GC: %v", err)
				}
			}
			if err := rt.Del(c); err != nil {
				t.Errorf("DEL: %v", err)
			}
		})
	}
	t.Run("result printed in the config's version", func(t *testing.T) {
		cont := testenv.NewNS(t)
		conf := strings.Replace(n.conflistPlugin("raw", "berth0", "10.91.0.0/24"), `"cniVersion":"1.1.0"`, `"cniVersion":"0.3.1"`, 1)
		env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "raw1", "CNI_NETNS": cont.Path(), "CNI_IFNAME": "eth0"}
		res, err := execPlugin(t, n, env, conf)
		if err != nil {
			t.Fatalf("ADD at 0.3.1: %v %v", err, res)
		}
		ips, _ := res["ips"].([]any)
		if res["cniVersion"] != "0.3.1" || len(ips) != 1 || ips[0].(map[string]any)["version"] != "4" {
			t.Errorf("result of a 0.3.1 ADD: %v; want cniVersion 0.3.1 with the 0.3 form of ips (\"version\": \"4\")", res)
		}
		env["CNI_COMMAND"] = "DEL"
		if res, err := execPlugin(t, n, env, conf); err != nil {
			t.Errorf("DEL at 0.3.1: %v %v", err, res)
		}
	})
}

// The reference bridge exec's berth-ipam as its IPAM, at 0.3.1 too (it
// failed with code 1: berth-ipam refused the version).
func TestInteropReferenceBridgeWithBerthIPAM(t *testing.T) {
	testenv.ReferenceCNIDir(t, "bridge")
	n := newNode(t)
	for i, v := range []string{"0.3.1", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			list := fmt.Sprintf(`{"cniVersion":%q,"name":"refbr","plugins":[
				{"type":"bridge","bridge":"cni-ref%d","isGateway":true,"ipMasq":true,
				 "ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.81.%d.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`, v, i, n.dataDir, i)
			rt := testenv.NewRuntime(t, n.ns, list)
			c1, c2 := container(t, "r1"), container(t, "r2")
			r1, err := rt.Add(c1)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if _, err := rt.Add(c2); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if err := testenv.Ping(c2.Netns, ipOf(t, r1)); err != nil {
				t.Error(err)
			}
			for _, c := range []*testenv.Attachment{c1, c2} {
				if err := rt.Del(c); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			if out, _ := testenv.InNS(n.ns, "sh", "-c", "ls "+n.dataDir+"/refbr | grep -v lock"); strings.Contains(string(out), "10.81.") {
				t.Errorf("reservations left after DEL: %s", out)
			}
		})
	}
}

// podman run --mac-address passes CNI_ARGS=...;MAC=<mac>, as the
// reference bridge reads it; the mac capability and args.cni.mac win.
func TestMACFromCNIArgs(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("mac", "berth0", "10.89.0.0/24", ""))
	podmanArgs := [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web"}, {"MAC", "02:00:00:aa:bb:01"}}
	tests := []struct {
		name string
		caps map[string]any
		want string
	}{
		{"CNI_ARGS MAC", nil, "02:00:00:aa:bb:01"},
		{"the mac capability wins", map[string]any{"mac": "02:00:00:aa:bb:02"}, "02:00:00:aa:bb:02"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := container(t, fmt.Sprintf("mac%d", i))
			c.Args, c.Caps = podmanArgs, tt.caps
			res, err := rt.Add(c)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			defer rt.Del(c)
			var got net.HardwareAddr
			c.Netns.Do(func(ns.NetNS) error {
				ifc, err := net.InterfaceByName("eth0")
				if err == nil {
					got = ifc.HardwareAddr
				}
				return err
			})
			if got.String() != tt.want || res.Interfaces[2].Mac != tt.want {
				t.Errorf("eth0 has %s (result %s), want %s", got, res.Interfaces[2].Mac, tt.want)
			}
		})
	}
}

// IPv6 and dual-stack ADD do not wait for duplicate address detection
// (it took 1.2-2.1 s; DAD alone takes at least a second), and the
// addresses are usable as soon as ADD returns: the container's and the
// gateway on the bridge.
func TestIPv6AddDoesNotWaitForDAD(t *testing.T) {
	n := newNode(t)
	list := n.conflistRanges("v6", "berth0", []string{"10.88.0.0/24", "fd00:88::/64"}, "") // IPv6: the iptables datapath
	rt := testenv.NewRuntime(t, n.ns, list)
	var ips []string
	for i := range 2 {
		c := container(t, fmt.Sprintf("six%d", i))
		start := time.Now()
		res, err := rt.Add(c)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		defer rt.Del(c)
		if took > 900*time.Millisecond {
			t.Errorf("dual-stack ADD took %v: it waits for DAD", took)
		}
		for _, ipc := range res.IPs {
			if ipc.Address.IP.To4() == nil {
				ips = append(ips, ipc.Address.IP.String())
			}
		}
		out, _ := testenv.InNS(c.Netns, "ip", "-6", "addr", "show", "dev", "eth0")
		if strings.Contains(string(out), "tentative") {
			t.Errorf("container address still tentative after ADD:\n%s", out)
		}
		// Added without DAD, not left to the kernel's address work:
		// usable from the moment it is there.
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, ips[len(ips)-1]+"/") && !strings.Contains(line, "nodad") {
				t.Errorf("container address added with DAD: %s", line)
			}
		}
		// Right away, not after DAD: the gateway and the other container.
		targets := append([]string{"fd00:88::1"}, ips[:len(ips)-1]...)
		for _, to := range targets {
			if out, err := testenv.InNS(c.Netns, "ping", "-6", "-c", "1", "-W", "1", to); err != nil {
				t.Errorf("ping %s right after ADD: %v\n%s", to, err, out)
			}
		}
	}
	if len(ips) != 2 {
		t.Fatalf("IPv6 addresses %v", ips)
	}
}
