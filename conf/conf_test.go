package conf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/cnierr"
)

func TestParseIPAM(t *testing.T) {
	tests := []struct {
		name    string
		stdin   string
		args    string
		wantErr error
		check   func(t *testing.T, c *IPAM)
	}{
		{name: "legacy subnet", stdin: `{"ipam":{"type":"berth-ipam","subnet":"10.1.0.0/24"}}`, check: func(t *testing.T, c *IPAM) {
			r := c.RangeSets[0][0]
			if r.Start != netip.MustParseAddr("10.1.0.1") || r.End != netip.MustParseAddr("10.1.0.254") || r.Gateway != netip.MustParseAddr("10.1.0.1") {
				t.Errorf("range = %+v", r)
			}
			if c.DataDir != DefaultIPAMDataDir {
				t.Errorf("dataDir = %q", c.DataDir)
			}
		}},
		{name: "ranges with bounds", stdin: `{"ipam":{"ranges":[[{"subnet":"10.2.0.0/16","rangeStart":"10.2.1.10","rangeEnd":"10.2.1.20","gateway":"10.2.0.254"}]]}}`, check: func(t *testing.T, c *IPAM) {
			r := c.RangeSets[0][0]
			if r.Start != netip.MustParseAddr("10.2.1.10") || r.End != netip.MustParseAddr("10.2.1.20") || r.Gateway != netip.MustParseAddr("10.2.0.254") {
				t.Errorf("range = %+v", r)
			}
		}},
		{name: "dual stack", stdin: `{"ipam":{"ranges":[[{"subnet":"10.3.0.0/24"}],[{"subnet":"fd00::/120"}]]}}`, check: func(t *testing.T, c *IPAM) {
			if len(c.RangeSets) != 2 || c.RangeSets[1][0].End != netip.MustParseAddr("fd00::ff") {
				t.Errorf("sets = %+v", c.RangeSets)
			}
		}},
		{name: "requested from all sources", stdin: `{"ipam":{"subnet":"10.4.0.0/24"},"runtimeConfig":{"ips":["10.4.0.5/24"]},"args":{"cni":{"ips":["10.4.0.6"]}}}`, args: "IgnoreUnknown=1;IP=10.4.0.7", check: func(t *testing.T, c *IPAM) {
			if len(c.Requested) != 3 {
				t.Errorf("requested = %v", c.Requested)
			}
		}},
		{name: "missing ipam", stdin: `{}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "malformed json", stdin: `{"ipam":`, wantErr: cnierr.ErrDecode},
		{name: "bad cidr", stdin: `{"ipam":{"subnet":"10.0.0.0/33"}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "no ranges", stdin: `{"ipam":{"type":"berth-ipam"}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "overlapping ranges", stdin: `{"ipam":{"ranges":[[{"subnet":"10.5.0.0/24"}],[{"subnet":"10.5.0.0/25"}]]}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "start after end", stdin: `{"ipam":{"subnet":"10.6.0.0/24","rangeStart":"10.6.0.9","rangeEnd":"10.6.0.3"}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "gateway outside", stdin: `{"ipam":{"subnet":"10.7.0.0/24","gateway":"10.8.0.1"}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "requested outside", stdin: `{"ipam":{"subnet":"10.9.0.0/24"},"args":{"cni":{"ips":["10.10.0.1"]}}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "requested garbage", stdin: `{"ipam":{"subnet":"10.9.0.0/24"}}`, args: "IP=nope", wantErr: cnierr.ErrInvalidConfig},
		{name: "subnet too small", stdin: `{"ipam":{"subnet":"10.9.0.0/32"}}`, wantErr: cnierr.ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseIPAM([]byte(tt.stdin), tt.args)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestParseBridge(t *testing.T) {
	tests := []struct {
		name    string
		stdin   string
		wantErr error
	}{
		{name: "minimal", stdin: `{"cniVersion":"1.1.0","name":"n","type":"berth-bridge"}`},
		{name: "ports", stdin: `{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"}]}}`},
		{name: "0.3.0", stdin: `{"cniVersion":"0.3.0","name":"n"}`},
		{name: "0.3.1", stdin: `{"cniVersion":"0.3.1","name":"n"}`},
		{name: "wrong version", stdin: `{"cniVersion":"0.2.0","name":"n"}`, wantErr: cnierr.ErrIncompatibleVersion},
		{name: "unknown version", stdin: `{"cniVersion":"9.9.9","name":"n"}`, wantErr: cnierr.ErrIncompatibleVersion},
		{name: "malformed", stdin: `{"name":`, wantErr: cnierr.ErrDecode},
		{name: "no name", stdin: `{"cniVersion":"1.1.0"}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "mtu low", stdin: `{"cniVersion":"1.1.0","name":"n","mtu":100}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "mtu high", stdin: `{"cniVersion":"1.1.0","name":"n","mtu":70000}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "bridge name too long", stdin: `{"cniVersion":"1.1.0","name":"n","bridge":"abcdefghijklmnopq"}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "bad port", stdin: `{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "bad protocol", stdin: `{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "duplicate host port", stdin: `{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81}]}}`, wantErr: cnierr.ErrInvalidConfig},
		{name: "bad mac", stdin: `{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"mac":"zz"}}`, wantErr: cnierr.ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseBridge([]byte(tt.stdin), "")
			if tt.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestValidIfName(t *testing.T) {
	for name, ok := range map[string]bool{"eth0": true, "net1.2": true, "": false, "abcdefghijklmnop": false, "a/b": false, "a b": false, "..": false} {
		if err := ValidIfName("ifName", name); (err == nil) != ok {
			t.Errorf("ValidIfName(%q) = %v", name, err)
		}
	}
}

// A value of the wrong JSON type is code 7 naming the field as the user
// wrote it, not Go's struct path (it was code 6 "Bridge.mtu").
func TestDecodeNamesTheField(t *testing.T) {
	tests := []struct{ stdin, field string }{
		{`{"cniVersion":"1.0.0","name":"n","mtu":"1500"}`, "mtu: a string given, a whole number expected"},
		{`{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":10}]]}}`, "ipam.ranges[0][1].subnet:"},
		{`{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":80},{"hostPort":{"x":1}}]}}`, "runtimeConfig.portMappings[1].hostPort: an object given"},
		{`{"cniVersion":"1.0.0","name":"n","isGateway":"yes"}`, "isGateway: a string given, true or false expected"},
		{`{"cniVersion":"1.0.0","name":"n","ipam":{"routes":[{"dst":"nope"}]}}`, "nope"},
		{`[1,2]`, "config: an array given"},
	}
	for _, tt := range tests {
		_, err := ParseBridge([]byte(tt.stdin), "")
		if err == nil {
			c := &Bridge{}
			err = c.ParseIPAMFor([]byte(tt.stdin), "")
		}
		if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: %v, want code 7 naming %q", tt.stdin, err, tt.field)
		}
	}
	if _, err := ParseBridge([]byte(`{"name":"n",`), ""); !errors.Is(err, cnierr.ErrDecode) {
		t.Errorf("truncated JSON: %v, want code 6", err)
	}
}

func TestResolveMAC(t *testing.T) {
	const base = `{"cniVersion":"1.0.0","name":"n"`
	tests := []struct{ stdin, args, want string }{
		{base + `}`, "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=02:00:00:00:00:01", "02:00:00:00:00:01"},
		{base + `,"args":{"cni":{"mac":"02:00:00:00:00:02"}}}`, "MAC=02:00:00:00:00:01", "02:00:00:00:00:02"},
		{base + `,"runtimeConfig":{"mac":"02:00:00:00:00:03"},"args":{"cni":{"mac":"02:00:00:00:00:02"}}}`, "MAC=02:00:00:00:00:01", "02:00:00:00:00:03"},
		{base + `}`, "", ""},
	}
	for _, tt := range tests {
		c, err := ParseBridge([]byte(tt.stdin), tt.args)
		if err != nil || c.MAC != tt.want {
			t.Errorf("%s with CNI_ARGS %q: MAC %q, %v; want %q", tt.stdin, tt.args, c.MAC, err, tt.want)
		}
	}
	if _, err := ParseBridge([]byte(base+`}`), "MAC=nope"); !errors.Is(err, cnierr.ErrInvalidEnv) {
		t.Errorf("CNI_ARGS MAC=nope: %v, want code 4", err)
	}
}

func TestMTUForIPv6(t *testing.T) {
	stdin := []byte(`{"cniVersion":"1.0.0","name":"n","mtu":1200,"ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}}`)
	c, err := ParseBridge(stdin, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ParseIPAMFor(stdin, ""); !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), "mtu:") {
		t.Errorf("mtu 1200 with an IPv6 range: %v, want code 7 naming mtu", err)
	}
}

// Host addresses of port mappings, per family: "" is both, 0.0.0.0 and ::
// one each, ::1 refused, IPv4-mapped addresses read as IPv4.
func TestPortHostIPs(t *testing.T) {
	for _, tt := range []struct {
		hostIP, want string
		err          string
	}{
		{"", "", ""}, {"0.0.0.0", "0.0.0.0", ""}, {"::", "::", ""},
		{"192.0.2.1", "192.0.2.1", ""}, {"2001:DB8::1", "2001:db8::1", ""}, {"::ffff:192.0.2.1", "192.0.2.1", ""},
		{"::1", "", "::1"}, {"fe80::1%eth0", "", "not an IP address"}, {"nonsense", "", "not an IP address"},
	} {
		p := PortMapping{HostPort: 80, ContainerPort: 80, HostIP: tt.hostIP}
		err := p.validate("pm")
		if tt.err != "" {
			if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), "pm.hostIP") || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("hostIP %q: %v, want an error naming pm.hostIP and %q", tt.hostIP, err, tt.err)
			}
			continue
		}
		if err != nil || p.HostIP != tt.want {
			t.Errorf("hostIP %q: %q, %v; want %q", tt.hostIP, p.HostIP, err, tt.want)
		}
	}
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"", "", true}, {"", "::", true}, {"", "192.0.2.1", true}, {"0.0.0.0", "::", false},
		{"0.0.0.0", "192.0.2.1", true}, {"::", "2001:db8::1", true}, {"::", "192.0.2.1", false},
		{"192.0.2.1", "192.0.2.2", false}, {"2001:db8::1", "2001:db8::1", true},
	} {
		if got := HostsOverlap(tt.a, tt.b); got != tt.want || HostsOverlap(tt.b, tt.a) != tt.want {
			t.Errorf("HostsOverlap(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// A network's families come from its range sets, and a host address of
// a family it lacks is refused naming the mapping.
func TestPortFamilies(t *testing.T) {
	parse := func(ranges, ports string) (*Bridge, error) {
		stdin := `{"cniVersion":"1.0.0","name":"n","type":"berth-bridge","ipam":{"ranges":` + ranges + `},"runtimeConfig":{"portMappings":` + ports + `}}`
		c, err := ParseBridge([]byte(stdin), "")
		if err != nil {
			return nil, err
		}
		return c, c.ParseIPAMFor([]byte(stdin), "")
	}
	c, err := parse(`[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]]`, `[{"hostPort":80,"containerPort":80,"hostIP":"::"},{"hostPort":80,"containerPort":80,"hostIP":"0.0.0.0"}]`)
	if err != nil || c.CheckPortFamilies() != nil {
		t.Fatalf("dual-stack: %v, %v", err, c.CheckPortFamilies())
	}
	if c.Scope != netip.MustParsePrefix("10.1.0.0/24") || c.Scope6 != netip.MustParsePrefix("fd00:1::/64") || c.Subnet(true) != c.Scope6 {
		t.Errorf("scopes %s %s", c.Scope, c.Scope6)
	}
	for _, tt := range []struct{ ranges, ports, field string }{
		{`[[{"subnet":"fd00:1::/64"}]]`, `[{"hostPort":80,"containerPort":80},{"hostPort":81,"containerPort":80,"hostIP":"192.0.2.1"}]`, "runtimeConfig.portMappings[1].hostIP"},
		{`[[{"subnet":"fd00:1::/64"}]]`, `[{"hostPort":80,"containerPort":80,"hostIP":"0.0.0.0"}]`, "runtimeConfig.portMappings[0].hostIP"},
		{`[[{"subnet":"10.1.0.0/24"}]]`, `[{"hostPort":80,"containerPort":80,"hostIP":"::"}]`, "runtimeConfig.portMappings[0].hostIP"},
	} {
		c, err := parse(tt.ranges, tt.ports)
		if err == nil {
			err = c.CheckPortFamilies()
		}
		if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s with %s: %v, want an error naming %s", tt.ranges, tt.ports, err, tt.field)
		}
	}
}

// The bridge datapath protects one subnet per family: more range sets
// of a family, or another subnet in a set, are refused at ADD naming the
// field (DEL and GC still parse them: an older berth took them); ranges
// of one subnet in a set are fine.
func TestOneSubnetPerFamily(t *testing.T) {
	for _, tt := range []struct{ ranges, field string }{
		{`[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]]`, ""},
		{`[[{"subnet":"fd00:1::/64","rangeEnd":"fd00:1::ff"},{"subnet":"fd00:1::/64","rangeStart":"fd00:1::1:0"}]]`, ""},
		{`[[{"subnet":"fd00:1::/64"}],[{"subnet":"fd00:2::/64"}]]`, "ipam.ranges[1]: a second IPv6 range set"},
		{`[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}],[{"subnet":"10.2.0.0/24"}]]`, "ipam.ranges[2]: a second IPv4 range set"},
		{`[[{"subnet":"10.1.0.0/24"},{"subnet":"10.2.0.0/24"}]]`, "ipam.ranges[0][1].subnet: 10.2.0.0/24 is not the set's subnet"},
	} {
		stdin := []byte(`{"cniVersion":"1.0.0","name":"n","type":"berth-bridge","ipam":{"ranges":` + tt.ranges + `}}`)
		c, err := ParseBridge(stdin, "")
		if err == nil {
			err = c.ParseIPAMFor(stdin, "") // DEL and GC: must parse
		}
		if err != nil {
			t.Errorf("%s: %v, want DEL and GC to parse it", tt.ranges, err)
			continue
		}
		err = c.CheckAddressing() // ADD
		if tt.field == "" && err != nil {
			t.Errorf("%s: %v", tt.ranges, err)
		}
		if tt.field != "" && (!errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field)) {
			t.Errorf("%s: %v, want code 7 naming %q", tt.ranges, err, tt.field)
		}
	}
	// berth-ipam on its own still takes them, as host-local does.
	if _, err := ParseIPAM([]byte(`{"ipam":{"ranges":[[{"subnet":"fd00:1::/64"}],[{"subnet":"fd00:2::/64"}]]}}`), ""); err != nil {
		t.Errorf("berth-ipam: %v", err)
	}
}

// Addressing errors name the field as the config spells it: the legacy
// single range's fields are ipam.subnet, ipam.gateway ...; a subnet no
// container address can come from is refused, not left to fail half-way
// through ADD.
func TestIPAMFieldsAsWritten(t *testing.T) {
	for _, tt := range []struct{ ipam, want string }{
		{`"subnet":"fd00:1::/129"`, "ipam.subnet: "},
		{`"subnet":"fd00:1::/64","gateway":"fd00:2::1"`, "ipam.gateway: fd00:2::1 is outside subnet fd00:1::/64"},
		{`"subnet":"fd00:1::/64","rangeStart":"fd00:1::9","rangeEnd":"fd00:1::3"`, "ipam.rangeStart: "},
		{`"subnet":"fd00:1::/64","rangeEnd":"10.0.0.1"`, "ipam.rangeEnd: "},
		{`"ranges":[[{"subnet":"::ffff:10.1.0.0/120"}]]`, "ipam.ranges[0][0].subnet: ::ffff:10.1.0.0/120 is an IPv4-mapped IPv6 prefix: write the IPv4 subnet 10.1.0.0/24"},
		{`"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fe80::/64"}]]`, "ipam.ranges[1][0].subnet: fe80::/64 is link-local"},
		{`"ranges":[[{"subnet":"ff05::/64"}]]`, "ipam.ranges[0][0].subnet: ff05::/64 is a multicast prefix"},
		{`"subnet":"224.1.0.0/24"`, "ipam.subnet: 224.1.0.0/24 is a multicast prefix"},
		{`"subnet":"127.1.0.0/24"`, "ipam.subnet: 127.1.0.0/24 is a loopback prefix"},
	} {
		c, err := ParseIPAM([]byte(`{"ipam":{`+tt.ipam+`}}`), "")
		if err == nil {
			err = c.CheckAllocatable()
		}
		if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want code 7 with %q", tt.ipam, err, tt.want)
		}
	}
}

// A relative stateDir or berth-ipam dataDir is refused at ADD naming the
// field as written; DEL, CHECK and GC still parse it, to clean up what an
// earlier berth recorded there. Another IPAM plugin's dataDir is its own.
func TestRelativePathsRefusedAtAdd(t *testing.T) {
	for _, tt := range []struct{ fields, ipam, want string }{
		{`"stateDir":"/run/berth",`, `"dataDir":"/var/lib/cni/networks",`, ""},
		{``, ``, ""},
		{`"stateDir":"state",`, ``, `stateDir: "state" is not an absolute path`},
		{`"stateDir":"./run/berth",`, ``, `stateDir: "./run/berth" is not an absolute path`},
		{``, `"dataDir":"networks",`, `ipam.dataDir: "networks" is not an absolute path`},
		{``, `"type":"host-local","dataDir":"networks",`, ""},
	} {
		stdin := []byte(`{"cniVersion":"1.0.0","name":"n","type":"berth-bridge",` + tt.fields +
			`"ipam":{` + tt.ipam + `"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`)
		c, err := ParseBridge(stdin, "")
		if err == nil {
			err = c.ParseIPAMFor(stdin, "") // DEL, CHECK and GC: must parse
		}
		if err != nil {
			t.Errorf("%s%s: %v, want DEL, CHECK and GC to parse it", tt.fields, tt.ipam, err)
			continue
		}
		err = c.CheckPaths() // ADD
		if tt.want == "" && err != nil {
			t.Errorf("%s%s: %v", tt.fields, tt.ipam, err)
		}
		if tt.want != "" && (!errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s%s: %v, want code 7 with %q", tt.fields, tt.ipam, err, tt.want)
		}
	}
}
