package conf

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/berthnet/berth/internal/cnierr"
)

func TestParseBandwidth(t *testing.T) {
	for _, tt := range []struct {
		name, stdin string
		want        *Bandwidth
		field       string // of the error, "" for none
	}{
		{name: "none", stdin: `{}`},
		{name: "zero rates", stdin: `{"runtimeConfig":{"bandwidth":{"ingressRate":0,"egressRate":0}}}`},
		{name: "containerd without burst", stdin: `{"runtimeConfig":{"bandwidth":{"ingressRate":10000000,"ingressBurst":4294967295}}}`,
			// 10 ms at 10 Mbit/s is 12.5 kB, less than the 64 KiB floor.
			want: &Bandwidth{IngressRate: 10e6, IngressBurst: 64 << 10 * 8}},
		{name: "fast rate default burst", stdin: `{"runtimeConfig":{"bandwidth":{"egressRate":1000000000}}}`,
			want: &Bandwidth{EgressRate: 1e9, EgressBurst: 1e7}},
		{name: "burst given", stdin: `{"runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":80000,"egressRate":2000000,"egressBurst":160000}}}`,
			want: &Bandwidth{IngressRate: 1e6, IngressBurst: 80000, EgressRate: 2e6, EgressBurst: 160000}},
		{name: "rate too small", stdin: `{"runtimeConfig":{"bandwidth":{"ingressRate":999}}}`, field: "runtimeConfig.bandwidth.ingressRate"},
		{name: "burst below a packet", stdin: `{"runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":800}}}`, field: "runtimeConfig.bandwidth.egressBurst"},
		{name: "burst beyond tbf", stdin: `{"runtimeConfig":{"bandwidth":{"ingressRate":1000000,"ingressBurst":1000000000}}}`, field: "runtimeConfig.bandwidth.ingressBurst"},
		{name: "not a number", stdin: `{"runtimeConfig":{"bandwidth":{"ingressRate":"1M"}}}`, field: "runtimeConfig.bandwidth"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBandwidth([]byte(tt.stdin))
			if tt.field != "" {
				if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field+":") {
					t.Fatalf("err %v, want invalid config naming %s", err, tt.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if UnsetBurst != math.MaxUint32 {
		t.Fatal("containerd's no-burst value is math.MaxUint32")
	}
}

// netd's conflist declares the bandwidth capability, so that runtimes
// pass the pods' bandwidth annotations.
func TestNodeConflistBandwidth(t *testing.T) {
	data, err := NodeConflist{Network: "pods", Mode: "bgp", LeaseDir: "/run/berth", StateDir: "/run/berth", IPAMDataDir: "/var/lib/cni/networks"}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	if !list.Plugins[0].Network.Capabilities["bandwidth"] {
		t.Fatalf("bandwidth capability missing: %s", data)
	}
}
