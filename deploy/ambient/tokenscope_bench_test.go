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
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
)

// nodePolicyBinding is the binding of the default release's node policy.
const nodePolicyBinding = "mazu-ztunnel-istio-system-token-node"

// BenchmarkTokenRequest measures one TokenRequest while the target namespace
// holds 1, 100 or 1000 pods, by the agent and by a client the policies do
// not match (the admin, standing in for the kubelet), with the node policy
// bound and with it unbound. The node policy runs once per pod of the
// namespace, so its cost grows with the pod count.
func BenchmarkTokenRequest(b *testing.B) {
	tb := testbed.Get(b)
	objects := installDefault(b, tb)
	nodeA := testbed.NewNode(b, tb, "bench-a")
	nodeB := testbed.NewNode(b, tb, "bench-b")
	agent := testbed.NewPod(b, tb, nodeA, testbed.PodSpec{Namespace: ambient.DefaultNamespace, Name: "mazu-ztunnel-bench", ServiceAccount: agentServiceAccount})
	agentCS := agentClient(b, tb, agent)

	type target struct {
		pods      int
		namespace string
		own       *testbed.Pod // on node A
		other     *testbed.Pod // on node B, to probe the node policy
	}
	var targets []target
	for _, pods := range []int{1, 100, 1000} {
		namespace := fmt.Sprintf("bench-pods-%d", pods)
		own := addBarePods(b, tb, namespace, nodeA.Name, "app", pods)
		other := addBarePods(b, tb, namespace, nodeB.Name, "other", 1)
		targets = append(targets, target{pods, namespace, own, other})
	}

	for _, state := range []string{"node-policy", "shape-only"} {
		setNodePolicy(b, tb, objects, state == "node-policy", agentCS, targets[0].other)
		for _, tg := range targets {
			for _, variant := range []struct {
				name   string
				client kubernetes.Interface
			}{{"agent", agentCS}, {"admin", tb.Client()}} {
				b.Run(fmt.Sprintf("%s/pods=%d/%s", state, tg.pods, variant.name), func(b *testing.B) {
					ctx := context.Background()
					request := tokenRequest(tg.own)
					for b.Loop() {
						if _, err := variant.client.CoreV1().ServiceAccounts(tg.namespace).CreateToken(ctx, tg.own.ServiceAccount, request, metav1.CreateOptions{}); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
	setNodePolicy(b, tb, objects, true, agentCS, targets[0].other)
}

// setNodePolicy binds or unbinds the node policy and waits until the API
// server acts on the change, probing with a token for a pod on another node.
func setNodePolicy(b *testing.B, tb *testbed.Testbed, objects []*unstructured.Unstructured, bound bool, agent kubernetes.Interface, other *testbed.Pod) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if !bound {
		err := tb.Client().AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, nodePolicyBinding, metav1.DeleteOptions{})
		if err != nil {
			b.Fatalf("unbind the node policy: %v", err)
		}
		for {
			if _, err := agent.CoreV1().ServiceAccounts(other.Namespace).CreateToken(ctx, other.ServiceAccount, tokenRequest(other), metav1.CreateOptions{}); err == nil {
				return
			}
			select {
			case <-ctx.Done():
				b.Fatal("the node policy still applies a minute after its binding was deleted")
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	a, err := newApplier(tb)
	if err != nil {
		b.Fatal(err)
	}
	for _, obj := range objects {
		if obj.GetKind() == "ValidatingAdmissionPolicyBinding" && obj.GetName() == nodePolicyBinding {
			clean := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": obj.GetAPIVersion(), "kind": obj.GetKind(),
				"metadata": map[string]any{"name": obj.GetName(), "labels": obj.GetLabels()},
				"spec":     obj.Object["spec"],
			}}
			if _, err := a.apply(ctx, clean); err != nil {
				b.Fatalf("bind the node policy: %v", err)
			}
		}
	}
	waitRejection(b, agent, other, tokenRequest(other), ownNodeMessage)
}

// addBarePods creates n Pod objects on node, named prefix-0 and up, with
// service account "app", in namespace, without the testbed's network
// namespaces (the policy reads only the objects), and returns the first as a
// testbed.Pod. They are deleted when the benchmark ends.
func addBarePods(b *testing.B, tb *testbed.Testbed, namespace, node, prefix string, n int) *testbed.Pod {
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
	var first *testbed.Pod
	for i := range n {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("%s-%d", prefix, i)},
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
			first = &testbed.Pod{Namespace: namespace, Name: created.Name, UID: created.UID, ServiceAccount: "app"}
		}
	}
	return first
}
