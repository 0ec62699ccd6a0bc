package netd

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/netd/backend"
)

func TestBGPFlags(t *testing.T) {
	c, err := parse(t, "--bgp-peers", "192.168.50.254:64600:pa:ss,192.168.60.254:64601", "--bgp-hold-time", "90s", "--bgp-edge")
	if err != nil {
		t.Fatal(err)
	}
	want := []backend.BGPPeer{
		{Address: netip.MustParseAddr("192.168.50.254"), ASN: 64600, Password: "pa:ss"},
		{Address: netip.MustParseAddr("192.168.60.254"), ASN: 64601},
	}
	if len(c.BGP.Peers) != 2 || c.BGP.Peers[0] != want[0] || c.BGP.Peers[1] != want[1] {
		t.Errorf("peers %+v, want %+v", c.BGP.Peers, want)
	}
	if c.BGP.HoldTime != 90*time.Second || c.BGP.KeepaliveInterval != 30*time.Second || !c.BGP.Edge {
		t.Errorf("timers %s/%s edge %v", c.BGP.HoldTime, c.BGP.KeepaliveInterval, c.BGP.Edge)
	}
	c, err = parse(t)
	if err != nil || c.BGP.HoldTime != 9*time.Second || c.BGP.KeepaliveInterval != 3*time.Second || c.BGP.Edge {
		t.Errorf("defaults: %+v %v", c.BGP, err)
	}
}

func TestBGPFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--bgp-hold-time", "2s"}, "--bgp-hold-time: 2s"},
		{[]string{"--bgp-hold-time", "0"}, "--bgp-hold-time: 0s"},
		{[]string{"--bgp-hold-time", "9500ms"}, "whole seconds"},
		{[]string{"--bgp-hold-time", "9s", "--bgp-keepalive-interval", "4s"}, "more than a third"},
		{[]string{"--bgp-restart-time", "2h"}, "--bgp-restart-time"},
		{[]string{"--bgp-asn", "0"}, "--bgp-asn"},
		{[]string{"--bgp-peers", "fd00::1:64600"}, "write an IPv6 address in brackets"},
		{[]string{"--bgp-peers", "[fd00::1]:64600,[fd00::1]:64601"}, "given twice"},
		{[]string{"--bgp-peers", "192.168.50.254"}, "want ADDRESS:ASN"},
		{[]string{"--bgp-peers", "192.168.50.254:1,192.168.50.254:2"}, "given twice"},
	} {
		_, err := parse(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want an error about %s", tt.args, err, tt.want)
		}
	}
}

// Per-router settings in the config file: passwords with commas and
// colons, read from a file, per-router AS and port.
func TestBGPPeersConfigFile(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "tor2.pw")
	os.WriteFile(pwFile, []byte("from,a:file\n"), 0o600)
	path := filepath.Join(dir, "netd.json")
	os.WriteFile(path, []byte(`{"mode": "bgp", "bgp-hold-time": "30s", "bgp-peers": [
		{"address": "192.168.50.254", "asn": 4200000000, "password": "a,b:c", "name": "tor1"},
		{"address": "192.168.60.254", "asn": 64601, "port": 1179, "password-file": "`+pwFile+`"},
		"192.168.70.254:64602", {"address": "fd00:50::254", "asn": 64600, "name": "tor1-v6"}]}`), 0o644)
	c, err := parse(t, "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	want := []backend.BGPPeer{
		{Address: netip.MustParseAddr("192.168.50.254"), ASN: 4200000000, Password: "a,b:c", Name: "tor1"},
		{Address: netip.MustParseAddr("192.168.60.254"), ASN: 64601, Port: 1179, Password: "from,a:file"},
		{Address: netip.MustParseAddr("192.168.70.254"), ASN: 64602},
		{Address: netip.MustParseAddr("fd00:50::254"), ASN: 64600, Name: "tor1-v6"},
	}
	if len(c.BGP.Peers) != len(want) {
		t.Fatalf("peers %+v", c.BGP.Peers)
	}
	for i := range want {
		if c.BGP.Peers[i] != want[i] {
			t.Errorf("peer %d: %+v, want %+v", i, c.BGP.Peers[i], want[i])
		}
	}
	if c.BGP.HoldTime != 30*time.Second {
		t.Errorf("hold time %s", c.BGP.HoldTime)
	}
	for content, wantErr := range map[string]string{
		`{"bgp-peers": [{"address": "192.168.50.254", "asn": 1, "password": "x", "password-file": "/f"}]}`: "give one",
		`{"bgp-peers": [{"address": "192.168.50.254", "asn": 1, "pasword": "x"}]}`:                         `unknown field "pasword"`,
		`{"bgp-peers": [{"address": "192.168.50.254"}]}`:                                                   "asn: missing",
		`{"bgp-peers": [{"address": "fe80::1%eth0", "asn": 1}]}`:                                           "not an IP address",
		`{"bgp-peers": [{"address": "192.168.50.254", "asn": 1, "password-file": "/nonexistent"}]}`:        "password-file",
	} {
		os.WriteFile(path, []byte(content), 0o644)
		if _, err := parse(t, "--config", path); err == nil || !strings.Contains(err.Error(), wantErr) || !strings.Contains(err.Error(), "bgp-peers") {
			t.Errorf("%s: got %v, want an error naming bgp-peers and %q", content, err, wantErr)
		}
	}
}
