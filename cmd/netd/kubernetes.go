//go:build kubernetes

package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/netd/kubestore"
)

// A netd built with the kubernetes tag (make image) has the Kubernetes
// datastore; see netd.OpenKubernetes.
func init() {
	netd.OpenKubernetes = func(ctx context.Context, kubeconfig, nodeName string, log *slog.Logger) (netd.KubernetesStore, error) {
		s, err := kubestore.Open(ctx, kubeconfig, nodeName, log)
		if err != nil {
			return nil, err
		}
		return kubeStore{s}, nil
	}
}

// kubeStore gives kubestore.Store's Holder the cluster.Holder type.
type kubeStore struct{ *kubestore.Store }

func (k kubeStore) Holder(ttl time.Duration) cluster.Holder { return k.Store.Holder(ttl) }
