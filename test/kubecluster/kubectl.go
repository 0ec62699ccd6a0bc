package kubecluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Kubectl runs kubectl as the cluster's admin from the underlay namespace
// (the apiserver is not reachable from the machine's own) and returns its
// stdout; the error carries stderr.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with stdin, e.g. for apply -f -.
func (c *Cluster) KubectlStdin(ctx context.Context, stdin []byte, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	err := c.TB.Underlay.Do(func() error {
		cmd := exec.CommandContext(ctx, c.bin("kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		return cmd.Run()
	})
	if err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// KubectlJSON runs kubectl with -o json and decodes its output into v.
func (c *Cluster) KubectlJSON(ctx context.Context, v any, args ...string) error {
	out, err := c.Kubectl(ctx, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("kubectl %s: decoding: %w", strings.Join(args, " "), err)
	}
	return nil
}

// Condition is one entry of an object's status.conditions.
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// NodeObject is the part of a Node object the tests read.
type NodeObject struct {
	Metadata struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR  string   `json:"podCIDR"`
		PodCIDRs []string `json:"podCIDRs"`
	} `json:"spec"`
	Status struct {
		Conditions []Condition `json:"conditions"`
		Addresses  []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

// Ready reports the node's Ready condition, with its message when it is
// not.
func (n *NodeObject) Ready() (bool, string) {
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True", c.Reason + ": " + c.Message
		}
	}
	return false, "no Ready condition yet"
}

// NodeList is the cluster's nodes.
type NodeList struct {
	Items []NodeObject `json:"items"`
}

// NodeList returns the Node objects.
func (c *Cluster) NodeList(ctx context.Context) (*NodeList, error) {
	var l NodeList
	return &l, c.KubectlJSON(ctx, &l, "get", "nodes")
}

// WaitNodesReady waits until every node is Ready.
func (c *Cluster) WaitNodesReady(ctx context.Context, timeout time.Duration) error {
	return c.poll(ctx, timeout, "every node Ready", func() error {
		l, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		if len(l.Items) < len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes registered", len(l.Items), len(c.Nodes))
		}
		for _, n := range l.Items {
			if ok, why := n.Ready(); !ok {
				return fmt.Errorf("node %s is not Ready: %s", n.Metadata.Name, why)
			}
		}
		return nil
	})
}

// PodObject is the part of a Pod object the tests read.
type PodObject struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		Phase  string `json:"phase"`
		PodIP  string `json:"podIP"`
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs"`
		HostIP     string      `json:"hostIP"`
		Conditions []Condition `json:"conditions"`
	} `json:"status"`
}

// Ready reports whether the pod's Ready condition is true.
func (p *PodObject) Ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// Pod returns the pod namespace/name.
func (c *Cluster) Pod(ctx context.Context, namespace, name string) (*PodObject, error) {
	var p PodObject
	return &p, c.KubectlJSON(ctx, &p, "get", "pod", "-n", namespace, name)
}

// Pods returns the pods of namespace matching the label selector.
func (c *Cluster) Pods(ctx context.Context, namespace, selector string) ([]PodObject, error) {
	var l struct {
		Items []PodObject `json:"items"`
	}
	args := []string{"get", "pods", "-n", namespace}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	return l.Items, c.KubectlJSON(ctx, &l, args...)
}

// WaitPodsReady waits until the pods are Ready and returns them.
func (c *Cluster) WaitPodsReady(ctx context.Context, timeout time.Duration, namespace string, names ...string) ([]*PodObject, error) {
	pods := make([]*PodObject, len(names))
	err := c.poll(ctx, timeout, "pods "+strings.Join(names, ", ")+" Ready", func() error {
		for i, name := range names {
			p, err := c.Pod(ctx, namespace, name)
			if err != nil {
				return err
			}
			if !p.Ready() {
				events, _ := c.Kubectl(ctx, "get", "events", "-n", namespace, "--field-selector", "involvedObject.name="+name, "-o", "custom-columns=REASON:.reason,MESSAGE:.message", "--no-headers")
				return fmt.Errorf("pod %s is %s, not Ready; events:\n%s", name, p.Status.Phase, lastLines(events, 5))
			}
			pods[i] = p
		}
		return nil
	})
	return pods, err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Exec runs a command in a pod's container (kubectl exec: apiserver →
// kubelet → containerd's stream server, all inside the test bed).
func (c *Cluster) Exec(ctx context.Context, namespace, pod string, cmd ...string) (string, error) {
	return c.Kubectl(ctx, append([]string{"exec", "-n", namespace, pod, "--"}, cmd...)...)
}

// Apply applies a manifest given as bytes.
func (c *Cluster) Apply(ctx context.Context, manifest []byte, extra ...string) (string, error) {
	return c.KubectlStdin(ctx, manifest, append([]string{"apply", "-f", "-"}, extra...)...)
}

// Delete deletes what a manifest describes and waits for it to be gone.
func (c *Cluster) Delete(ctx context.Context, manifest []byte, extra ...string) (string, error) {
	return c.KubectlStdin(ctx, manifest, append([]string{"delete", "--ignore-not-found", "--wait", "-f", "-"}, extra...)...)
}
