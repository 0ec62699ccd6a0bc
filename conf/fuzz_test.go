package conf

import (
	"errors"
	"testing"

	"github.com/berthnet/berth/internal/cnierr"
)

// Whatever a runtime passes, parsing returns a config or a typed error
// (one that maps to a CNI code), and never panics.
func FuzzParseBridge(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"berth-bridge","ipam":{"type":"berth-ipam","subnet":"10.1.0.0/24"}}`,
		`{"cniVersion":"1.0.0","name":"n","mtu":1400,"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"udp","hostIP":"10.0.0.1"}],"mac":"02:00:00:00:00:01"}}`,
		`{"cniVersion":"0.4.0","name":"n","bridge":"br-x","isolation":false,"ipMasq":false}`,
		`{"name":`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseBridge(data, "")
		if err != nil {
			if !errors.As(err, new(*cnierr.Kind)) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if c.BridgeName == "" || len(c.BridgeName) > 15 || c.Name == "" {
			t.Fatalf("accepted an unusable config: %+v", c)
		}
		for _, p := range c.Ports() {
			if p.HostPort < 1 || p.HostPort > 65535 || p.Protocol == "" {
				t.Fatalf("accepted port mapping %+v", p)
			}
		}
	})
}

func FuzzParseIPAM(f *testing.F) {
	for _, s := range []string{
		`{"ipam":{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20","gateway":"10.1.0.1"}}`,
		`{"ipam":{"ranges":[[{"subnet":"10.2.0.0/16"},{"subnet":"10.3.0.0/30"}],[{"subnet":"fd00::/64"}]],"routes":[{"dst":"0.0.0.0/0"}]},"args":{"cni":{"ips":["10.2.0.9"]}}}`,
		`{"ipam":{"ranges":[[]]}}`, `{"ipam":null}`,
	} {
		f.Add([]byte(s), "IP=10.2.0.7")
	}
	f.Fuzz(func(t *testing.T, data []byte, cniArgs string) {
		c, err := ParseIPAM(data, cniArgs)
		if err != nil {
			if !errors.As(err, new(*cnierr.Kind)) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for _, set := range c.RangeSets {
			for _, r := range set {
				if !r.Subnet.Contains(r.Start) || !r.Subnet.Contains(r.End) || r.Start.Compare(r.End) > 0 {
					t.Fatalf("accepted a broken range %+v", r)
				}
			}
		}
		for _, a := range c.Requested {
			if c.SetFor(a) < 0 {
				t.Fatalf("accepted requested %s outside every range", a)
			}
		}
	})
}
