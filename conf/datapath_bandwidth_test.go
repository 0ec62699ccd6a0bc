package conf

import (
	"errors"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/cnierr"
)

func TestCheckBandwidth(t *testing.T) {
	shaped := &Bandwidth{IngressRate: 1e6, IngressBurst: 1e6}
	for _, tt := range []struct {
		name     string
		datapath string
		b        *Bandwidth
		refused  bool
	}{
		{"iptables shapes", DatapathIptables, shaped, false},
		{"ebpf without shaping", DatapathEBPF, nil, false},
		{"ebpf would bypass the shaping", DatapathEBPF, shaped, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := (&Bridge{Datapath: tt.datapath}).CheckBandwidth(tt.b)
			if refused := err != nil; refused != tt.refused {
				t.Fatalf("got %v, want refused %v", err, tt.refused)
			}
			if tt.refused && (!errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), "runtimeConfig.bandwidth")) {
				t.Errorf("got %v, want an invalid config (7) naming runtimeConfig.bandwidth", err)
			}
		})
	}
}
