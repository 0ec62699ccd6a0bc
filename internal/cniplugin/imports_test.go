package cniplugin_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The CNI plugins are exec'd for every container: they link neither a
// datastore client (etcd, Kubernetes) nor GoBGP; what they need from
// netd is in the node lease file.
func TestPluginsImportNoDatastore(t *testing.T) {
	forbidden := []string{"go.etcd.io/", "k8s.io/client-go", "k8s.io/api/", "k8s.io/apimachinery", "github.com/osrg/gobgp"}
	for _, p := range []string{"berth-bridge", "berth-vxlan", "berth-hostgw", "berth-bgp", "berth-ipam"} {
		out, err := exec.Command("go", "list", "-deps", "github.com/berthnet/berth/cmd/"+p).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps cmd/%s: %v\n%s", p, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s imports %s", p, dep)
				}
			}
		}
	}
}
