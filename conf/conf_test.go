package conf

import (
	"errors"
	"net/netip"
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
