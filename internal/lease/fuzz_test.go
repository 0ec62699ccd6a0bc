package lease

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A lease file, whatever its bytes, reads as a valid lease or as one of the
// three typed errors; never a panic, never an unvalidated lease.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"network":"v","mode":"vxlan","networkCIDR":"10.244.0.0/16","subnet":"10.244.1.0/24","mtu":1450,"ipMasq":true,"nodeName":"n1","nodeIP":"192.168.50.1"}`))
	f.Add([]byte(`{"network":"v","mode":"bgp","networkCIDR":"10.0.0.0/8","subnet":"11.0.0.0/24","mtu":1}`))
	f.Add([]byte(`{"network":"v","mode":"hostgw","networkCIDR":"10.244.0.0/16","subnet":"10.244.1.0/24","networkCIDRv6":"fd00:244::/56","subnetV6":"fd00:244:0:1::/64","mtu":1500,"nodeName":"n1","nodeIP":"192.168.50.1","nodeIPv6":"fd00:50::1"}`))
	f.Add([]byte(`{"network":"v","mode":"bgp","networkCIDRv6":"fd00::/48","subnetV6":"fd00:0:0:7::/64","mtu":1500,"nodeName":"n1","nodeIPv6":"fd00:50::1"}`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		n, err := Read(path, time.Now())
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrStale) && !errors.Is(err, ErrMissing) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("Read returned an invalid lease: %v", err)
		}
	})
}
