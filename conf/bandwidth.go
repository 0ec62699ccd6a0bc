package conf

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Bandwidth is the CNI bandwidth capability (runtimeConfig.bandwidth),
// what Kubernetes' kubernetes.io/ingress-bandwidth and egress-bandwidth
// pod annotations become: rates in bits per second, bursts in bits.
// Ingress is traffic to the container, egress traffic from it. A zero
// rate leaves that direction alone.
type Bandwidth struct {
	IngressRate  uint64 `json:"ingressRate"`
	IngressBurst uint64 `json:"ingressBurst"`
	EgressRate   uint64 `json:"egressRate"`
	EgressBurst  uint64 `json:"egressBurst"`
}

// Limits of the bandwidth capability.
const (
	// MinRate is the smallest rate shaped, Kubernetes' lower bound for
	// the annotations (1k).
	MinRate = 1000
	// UnsetBurst is what containerd and CRI-O pass as the burst of a pod
	// that gives none (the annotations have no burst): berth then uses
	// DefaultBurst instead of letting 512 MiB through unshaped.
	UnsetBurst = math.MaxUint32
	// MaxBurstTime is the most traffic a burst may hold, in time at the
	// rate: the kernel keeps tbf's bucket as a 32-bit count of 64 ns ticks.
	MaxBurstTime = 270 * time.Second
	// defaultBurstTime and minBurstBytes make the default burst: 10 ms of
	// traffic at the rate, at least 64 KiB (one GSO packet).
	defaultBurstTime = 10 * time.Millisecond
	minBurstBytes    = 64 << 10
)

// ParseBandwidth reads runtimeConfig.bandwidth from a plugin's stdin; nil
// when the runtime passed none or every rate is zero.
func ParseBandwidth(stdin []byte) (*Bandwidth, error) {
	var raw struct {
		RuntimeConfig struct {
			Bandwidth *Bandwidth `json:"bandwidth"`
		} `json:"runtimeConfig"`
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, invalid("runtimeConfig.bandwidth", fmt.Sprintf("not a bandwidth object: %v", err))
	}
	b := raw.RuntimeConfig.Bandwidth
	if b == nil || b.IngressRate == 0 && b.EgressRate == 0 {
		return nil, nil
	}
	var err error
	if b.IngressBurst, err = burstFor("runtimeConfig.bandwidth.ingress", b.IngressRate, b.IngressBurst); err != nil {
		return nil, err
	}
	if b.EgressBurst, err = burstFor("runtimeConfig.bandwidth.egress", b.EgressRate, b.EgressBurst); err != nil {
		return nil, err
	}
	return b, nil
}

// burstFor validates one direction's rate and burst and returns the burst
// to use (bits).
func burstFor(field string, rate, burst uint64) (uint64, error) {
	if rate == 0 {
		return 0, nil
	}
	if rate < MinRate {
		return 0, invalid(field+"Rate", fmt.Sprintf("%d bits/s is below the smallest rate berth shapes, %d bits/s", rate, MinRate))
	}
	if burst == 0 || burst == UnsetBurst {
		bytes := max(float64(rate)/8*defaultBurstTime.Seconds(), minBurstBytes)
		return uint64(bytes) * 8, nil
	}
	if burst < 8*1500 {
		return 0, invalid(field+"Burst", fmt.Sprintf("%d bits is less than one 1500-byte packet", burst))
	}
	if time.Duration(float64(burst)/float64(rate)*float64(time.Second)) > MaxBurstTime {
		return 0, invalid(field+"Burst", fmt.Sprintf("%d bits is more than %s of traffic at %d bits/s, which the kernel's tbf cannot hold",
			burst, MaxBurstTime, rate))
	}
	return burst, nil
}
