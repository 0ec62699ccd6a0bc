package netd

import (
	"context"
	"log/slog"
	"time"

	"github.com/berthnet/berth/netd/cluster"
)

// KubernetesStore is the Kubernetes datastore (package kubestore) as
// netd uses it.
type KubernetesStore interface {
	cluster.Store
	Holder(ttl time.Duration) cluster.Holder
}

// OpenKubernetes opens the Kubernetes datastore (kubestore.Open). Only a
// netd built for Kubernetes sets it: cmd/netd with the kubernetes build
// tag, the one `make image` puts in berth's image. Linking client-go
// cost every other netd 20 MiB of resident memory and half again its
// start-up time (its package init registers every API type).
var OpenKubernetes func(ctx context.Context, kubeconfig, nodeName string, log *slog.Logger) (KubernetesStore, error)

// kubeLeaseAnnotation is kubestore.LeaseAnnotation, for --help without
// importing kubestore (a test checks that they agree).
const kubeLeaseAnnotation = "berth.berthnet.io/lease"
