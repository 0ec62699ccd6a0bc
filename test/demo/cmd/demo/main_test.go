package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/testenv"
)

// Every mode of `make demo` runs to the end, shows what it claims, and
// leaves nothing behind.
func TestDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.BinDir(t, "netd", "runner", "berth-vxlan", "berth-hostgw")
	for name, m := range modes {
		t.Run(name, func(t *testing.T) {
			var out strings.Builder
			d := &demo{mode: m, name: name, nodes: 3, out: &out}
			err := d.run(context.Background())
			d.cleanup()
			t.Log(out.String())
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"hello from web1, you came from 10.244.", // the client's own address
				"hello from web1, you came from 192.168.50.2\n",
				"hello from web1, you came from 192.168.50.250\n",
				"3 packets transmitted, 3 packets received",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
			if left, _ := filepath.Glob(filepath.Join("/run/netns", d.tb.ID+"*")); len(left) > 0 {
				t.Errorf("namespaces left: %v", left)
			}
			if _, err := os.Stat(d.tb.Dir); !os.IsNotExist(err) {
				t.Errorf("%s left: %v", d.tb.Dir, err)
			}
		})
	}
}
