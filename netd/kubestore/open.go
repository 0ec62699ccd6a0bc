package kubestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Open connects to the Kubernetes API (kubeconfig, else the pod's
// service account, else $KUBECONFIG) as node nodeName and watches the
// Nodes until ctx ends.
func Open(ctx context.Context, kubeconfig, nodeName string, log *slog.Logger) (*Store, error) {
	rc, err := kubeRESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "berth-netd/" + nodeName
	// No rc.Timeout: it would cut the informer's watch. Requests are
	// bounded by their contexts (retry's etcdTimeout).
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	log.Info("using the Kubernetes API as datastore", "server", rc.Host, "node", nodeName)
	return New(ctx, cs, nodeName, log)
}

func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		rc, err := rest.InClusterConfig()
		if err == nil {
			return rc, nil
		}
		if !errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("in-cluster Kubernetes config: %w", err)
		}
		if kubeconfig = os.Getenv("KUBECONFIG"); kubeconfig == "" {
			return nil, errors.New("--datastore=kubernetes: not in a pod (no KUBERNETES_SERVICE_HOST) and no --kubeconfig or $KUBECONFIG: give the kubeconfig netd uses")
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	return rc, nil
}
