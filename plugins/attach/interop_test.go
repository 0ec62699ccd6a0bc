package attach_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/testenv"
)

// The reference portmap plugin chained after berth-bridge takes berth's
// result as its prevResult and publishes the port itself.
func TestInteropReferencePortmapAfterBerthBridge(t *testing.T) {
	testenv.ReferenceCNIDir(t, "portmap")
	n := newNode(t)
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"interop","plugins":[
		{"type":"berth-bridge","isDefaultGateway":true,"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.80.0.0/24"}]]}},
		{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`, n.stateDir, n.dataDir)
	rt := testenv.NewRuntime(t, n.ns, list)
	c := container(t, "pm1", port(8088, 80, "tcp"))
	if _, err := rt.Add(c); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	testenv.Serve(t, c.Netns, "0.0.0.0:80")
	if _, err := testenv.Dial(n.outside, nodeIP+":8088"); err != nil {
		out, _ := testenv.InNS(n.ns, "iptables-save")
		t.Errorf("port published by reference portmap: %v\n%s", err, out)
	}
	if err := rt.Del(c); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestStatus(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("status", "berth0", "10.82.0.0/24", ""))
	if err := rt.Status(); err != nil {
		t.Fatalf("STATUS of a usable network: %v", err)
	}
	// An IPAM store that cannot be written: STATUS says the plugin is unavailable.
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	n.dataDir = filepath.Join(blocker, "ipam")
	broken := testenv.NewRuntime(t, n.ns, n.conflist("status", "berth0", "10.82.0.0/24", ""))
	err := broken.Status()
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != 50 {
		t.Errorf("STATUS with a broken store: %v, want code 50", err)
	}
}
