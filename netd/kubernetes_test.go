package netd

import (
	"testing"

	"github.com/berthnet/berth/netd/kubestore"
)

func TestKubeLeaseAnnotation(t *testing.T) {
	if kubeLeaseAnnotation != kubestore.LeaseAnnotation {
		t.Errorf("--help names %q, kubestore writes %q", kubeLeaseAnnotation, kubestore.LeaseAnnotation)
	}
}
