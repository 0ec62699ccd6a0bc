package netd

import (
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/berthnet/berth/netd/kubestore"
)

func TestKubeLeaseAnnotation(t *testing.T) {
	if kubeLeaseAnnotation != kubestore.LeaseAnnotation {
		t.Errorf("--help names %q, kubestore writes %q", kubeLeaseAnnotation, kubestore.LeaseAnnotation)
	}
}

// The one-off commands on the network read etcd: with the Kubernetes
// datastore they refuse, before they look for (or start) an etcd.
func TestNetworkCommandsRefuseKubernetes(t *testing.T) {
	// No such interface: without the check, the command fails finding
	// its underlay, and touches nothing of this machine's.
	cfg := &Config{Datastore: DatastoreKubernetes, Iface: "berth-none0"}
	log := slog.New(slog.DiscardHandler)
	for name, run := range map[string]func() error{
		"show":   func() error { return ShowNetwork(t.Context(), cfg, log, io.Discard) },
		"delete": func() error { return DeleteNetwork(t.Context(), cfg, log) },
	} {
		if err := run(); !errors.Is(err, errNetworkInCluster) {
			t.Errorf("netd network %s --datastore=kubernetes: %v, want %v", name, err, errNetworkInCluster)
		}
	}
}
