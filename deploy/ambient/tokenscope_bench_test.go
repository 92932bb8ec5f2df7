package ambient_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// BenchmarkAgentTokenRequest measures one TokenRequest by the agent while the
// target namespace holds a given number of pods. The token-scope policy runs
// once per pod in that namespace, so the cost grows with it. The "admin"
// variant is the same request by a client the policy does not match.
func BenchmarkAgentTokenRequest(b *testing.B) {
	tb := testbed.Get(b)
	installDefault(b, tb)
	node := testbed.NewNode(b, tb, "bench-a")
	agent := testbed.NewPod(b, tb, node, testbed.PodSpec{Namespace: ambient.DefaultNamespace, Name: "mazu-ztunnel-bench", ServiceAccount: agentServiceAccount})
	agentCS := agentClient(b, tb, agent)

	for _, pods := range []int{1, 100, 1000} {
		namespace := fmt.Sprintf("bench-pods-%d", pods)
		target := addBarePods(b, tb, namespace, node.Name, pods)
		request := tokenRequest(&testbed.Pod{Namespace: namespace, Name: target.Name, UID: target.UID, ServiceAccount: "app"})
		for _, variant := range []struct {
			name   string
			client kubernetes.Interface
		}{{"agent", agentCS}, {"admin", tb.Client()}} {
			b.Run(fmt.Sprintf("pods=%d/%s", pods, variant.name), func(b *testing.B) {
				ctx := context.Background()
				for b.Loop() {
					if _, err := variant.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "app", request, metav1.CreateOptions{}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// addBarePods creates n Pod objects on node in a new namespace, without the
// testbed's network namespaces (the policy reads only the objects), and
// returns the first. They are deleted when the benchmark ends.
func addBarePods(b *testing.B, tb *testbed.Testbed, namespace, node string, n int) *corev1.Pod {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := tb.EnsureNamespace(ctx, namespace); err != nil {
		b.Fatal(err)
	}
	if err := tb.EnsureServiceAccount(ctx, namespace, "app"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		zero := int64(0)
		err := tb.Client().CoreV1().Pods(namespace).DeleteCollection(context.Background(),
			metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		if err != nil {
			b.Errorf("delete pods in %s: %v", namespace, err)
		}
	})
	var first *corev1.Pod
	for i := range n {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("app-%d", i)},
			Spec: corev1.PodSpec{
				NodeName:           node,
				ServiceAccountName: "app",
				Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/mazu-testbed/app:latest"}},
			},
		}
		created, err := tb.Client().CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if first == nil {
			first = created
		}
	}
	return first
}
