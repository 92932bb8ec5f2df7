package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// chartAccessKinds are the chart objects that make up the agent's access
// to the API server, with where the dynamic client finds them.
var chartAccessKinds = map[string]schema.GroupVersionResource{
	"ServiceAccount":                   {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Role":                             {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"RoleBinding":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	"ValidatingAdmissionPolicy":        {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"},
	"ValidatingAdmissionPolicyBinding": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"},
}

// chartInstall is what applyChartAccess installed.
type chartInstall struct {
	// Namespace, ServiceAccount and Audience are the release namespace,
	// the agent's service account and its registration token audience, as
	// the DaemonSet gives them to the agent.
	Namespace, ServiceAccount, Audience string
}

// applyChartAccess renders the chart with default values and server-side
// applies its RBAC objects and admission policies, and removes them when
// the test ends.
func applyChartAccess(t *testing.T, tb *testbed.Testbed) chartInstall {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	manifest, err := ambient.Render(ambient.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objects, err := ambient.Objects(manifest)
	if err != nil {
		t.Fatal(err)
	}

	install := chartInstall{Namespace: ambient.DefaultNamespace}
	ensureNamespace(t, tb, install.Namespace)

	dyn := dynamicClient(t, tb)
	applied := 0
	for _, obj := range objects {
		if obj.GetKind() == "DaemonSet" {
			install.ServiceAccount, install.Audience = daemonSetAccess(t, obj)
		}
	}
	if install.ServiceAccount == "" || install.Audience == "" {
		t.Fatalf("the chart's DaemonSet names service account %q and audience %q; want both", install.ServiceAccount, install.Audience)
	}
	for _, obj := range objects {
		// The agent's objects carry its name; the curator's and the
		// witnesses' have their own.
		gvr, ok := chartAccessKinds[obj.GetKind()]
		if !ok || obj.GetLabels()["app.kubernetes.io/name"] != install.ServiceAccount {
			continue
		}
		res := dyn.Resource(gvr)
		var client interface {
			Apply(context.Context, string, *unstructured.Unstructured, metav1.ApplyOptions, ...string) (*unstructured.Unstructured, error)
			Delete(context.Context, string, metav1.DeleteOptions, ...string) error
		} = res
		if obj.GetNamespace() != "" {
			client = res.Namespace(obj.GetNamespace())
		}
		if _, err := client.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "mazu-chart-access-test", Force: true}); err != nil {
			t.Fatalf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		name := obj.GetName()
		t.Cleanup(func() { _ = client.Delete(context.Background(), name, metav1.DeleteOptions{}) })
		applied++
	}
	// ServiceAccount, ClusterRole and its binding, three admission policies
	// and their bindings.
	if applied < 9 {
		t.Fatalf("applied %d of the agent's access objects from the chart, want at least 9", applied)
	}
	return install
}

// daemonSetAccess returns the service account and the registration token
// audience (MAZU_CURATOR_AUDIENCE) of the chart's agent DaemonSet.
func daemonSetAccess(t *testing.T, ds *unstructured.Unstructured) (serviceAccount, audience string) {
	t.Helper()
	serviceAccount, _, _ = unstructured.NestedString(ds.Object, "spec", "template", "spec", "serviceAccountName")
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		container, _ := c.(map[string]any)
		env, _, _ := unstructured.NestedSlice(container, "env")
		for _, e := range env {
			v, _ := e.(map[string]any)
			if v["name"] == "MAZU_CURATOR_AUDIENCE" {
				audience, _ = v["value"].(string)
			}
		}
	}
	return serviceAccount, audience
}

// ensureNamespace creates the namespace unless it exists, and deletes it
// at the end only if it created it.
func ensureNamespace(t *testing.T, tb *testbed.Testbed, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err := tb.Client().CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
	case err != nil:
		t.Fatal(err)
	default:
		t.Cleanup(func() {
			_ = tb.Client().CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}
}

// agentPodREST creates the agent pod of node as the DaemonSet would. It
// returns an API server configuration whose only credential is a token
// bound to that pod for the API server's default audience, as the kubelet
// projects it into the kube-api-access volume.
func agentPodREST(t *testing.T, tb *testbed.Testbed, install chartInstall, node *testbed.Node) (*rest.Config, *testbed.Pod) {
	t.Helper()
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{
		Namespace: install.Namespace, Name: install.ServiceAccount + "-" + node.Name, ServiceAccount: install.ServiceAccount,
	})
	seconds := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		// No audience: the API server's default, as for kube-api-access.
		ExpirationSeconds: &seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := tb.Client().CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.ServiceAccount, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("request the agent pod's token: %v", err)
	}
	return &rest.Config{
		Host:            tb.APIServerURL(),
		BearerToken:     resp.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: tb.CACertFile()},
	}, pod
}

// Parts of the chart's admission policy messages, for rejections this
// file expects.
const (
	otherNodeTokenMessage = "may request tokens only for pods on its own node"
	audienceMessage       = "are not allowed"
	otherNodePodMessage   = "may change only pods on its own node"
)

// curatorTokenRequest builds a request for a token bound to pod for
// audience, as the agent makes it for a key registration.
func curatorTokenRequest(pod *testbed.Pod, audience string) *authenticationv1.TokenRequest {
	seconds := int64(3600)
	return &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{audience},
		ExpirationSeconds: &seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
}

// waitPoliciesEnforced waits until the API server enforces the chart's
// token and pod policies for agent, whose node is not otherNodePod's. The
// API server loads a new policy, its binding and the node policy's Pod
// parameters from informers after they are created, and until then admits
// what RBAC allows. Both probes change nothing if they are admitted (the
// token is dropped, and the patch removes an annotation the pod lacks).
// A probe that relabels the agent's own pod does not work: once one
// attempt is admitted before the policy loads, every later attempt is a
// no-op that the policy allows, so the wait never gets a rejection.
func waitPoliciesEnforced(t *testing.T, agent kubernetes.Interface, otherNodePod *testbed.Pod, audience string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	noOpPatch := []byte(`{"metadata":{"annotations":{"mazu-mesh.io/policy-probe":null}}}`)
	probes := []struct {
		name, message string
		call          func() error
	}{
		{"token for another node's pod", otherNodeTokenMessage, func() error {
			_, err := agent.CoreV1().ServiceAccounts(otherNodePod.Namespace).CreateToken(ctx, otherNodePod.ServiceAccount, curatorTokenRequest(otherNodePod, audience), metav1.CreateOptions{})
			return err
		}},
		{"patch of another node's pod", otherNodePodMessage, func() error {
			_, err := agent.CoreV1().Pods(otherNodePod.Namespace).Patch(ctx, otherNodePod.Name, types.MergePatchType, noOpPatch, metav1.PatchOptions{})
			return err
		}},
	}
	for _, probe := range probes {
		var last error
		for {
			last = probe.call()
			if apierrors.IsForbidden(last) && strings.Contains(last.Error(), probe.message) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the chart's policies still admitted the %s after 60 s, last result: %v", probe.name, last)
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	t.Logf("the chart's admission policies were enforced %v after the probes started", time.Since(start).Round(time.Millisecond))
}

// TestAgentRunsWithChartAccess runs two node agents with only what the
// chart grants them: each authenticates with a token bound to its own
// agent pod, and the chart's RBAC and admission policies decide what it
// may do. Enrollment, registration through pod-bound tokens, the peer
// verifier's liveness checks and HBONE traffic then all have to work, so
// a permission the chart lacks fails this test. Requests that break the
// admission policies must be Forbidden.
func TestAgentRunsWithChartAccess(t *testing.T) {
	tb := testbed.Get(t)
	ctx := context.Background()
	install := applyChartAccess(t, tb)
	// The chart's curator reviews registration tokens for its log origin,
	// which the DaemonSet hands to the agent as its audience.
	mesh, err := meshtest.StartCurator(ctx, meshtest.CuratorOptions{Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2, Audience: install.Audience})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	cni := buildCNI(t)
	nodeA := testbed.NewNode(t, tb, "rbac-a")
	nodeB := testbed.NewNode(t, tb, "rbac-b")
	restA, _ := agentPodREST(t, tb, install, nodeA)
	restB, agentPodB := agentPodREST(t, tb, install, nodeB)
	clientA, err := kubernetes.NewForConfig(restA)
	if err != nil {
		t.Fatal(err)
	}
	// The agents must not start before the policies bind them, or this
	// test would pass with RBAC alone.
	waitPoliciesEnforced(t, clientA, agentPodB, install.Audience)
	agentA := startAgentWith(t, tb, mesh, nodeA, agentOptions{REST: restA, Audience: install.Audience})
	agentB := startAgentWith(t, tb, mesh, nodeB, agentOptions{REST: restB, Audience: install.Audience})
	ambientNamespace(t, tb, "rbac")

	server := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{
		Namespace: "rbac", Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}, OnNetwork: cniAdd(cni, agentB.socket),
	})
	startServer(t, server)
	client := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: "rbac", Name: "client", ServiceAccount: "client", OnNetwork: cniAdd(cni, agentA.socket)})
	svc, err := tb.AddService(ctx, "rbac", "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intOrString(8080)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.WaitEndpoints(ctx, "rbac", "web", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// The agents annotate the pods they enroll.
	waitEnrolled(t, tb, server)
	waitEnrolled(t, tb, client)

	const requests = 5
	expectOK(t, client, "http://"+svc.Spec.ClusterIP+":80/", requests, "hello from web")
	// The server's agent verified the client through the registry and the
	// API server (TokenReview, pod lookup): the traffic went through HBONE.
	if n := counterSum(t, agentB.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"}); n < 1 {
		t.Errorf("server agent verified %v peers, want at least the client", n)
	}
	if n := counterSum(t, agentA.registry, "mazu_peer_verifications_total", map[string]string{"result": "accepted"}); n < 1 {
		t.Errorf("client agent verified %v servers, want at least 1", n)
	}
	if n := counterSum(t, agentB.registry, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination"}); n < requests {
		t.Errorf("server agent counted %v inbound connections, want at least %d", n, requests)
	}

	// The agent that registered its pods through the policies is still
	// held to them. These requests pass RBAC but break a policy.
	t.Run("policies forbid", func(t *testing.T) {
		forbidden := []struct {
			name, message string
			call          func() error
		}{
			{"token for another node's pod", otherNodeTokenMessage, func() error {
				_, err := clientA.CoreV1().ServiceAccounts(server.Namespace).CreateToken(ctx, server.ServiceAccount, curatorTokenRequest(server, install.Audience), metav1.CreateOptions{})
				return err
			}},
			{"token with another audience", audienceMessage, func() error {
				_, err := clientA.CoreV1().ServiceAccounts(client.Namespace).CreateToken(ctx, client.ServiceAccount, curatorTokenRequest(client, tb.APIServerURL()), metav1.CreateOptions{})
				return err
			}},
			{"annotation on another node's pod", otherNodePodMessage, func() error {
				patch := []byte(`{"metadata":{"annotations":{"mazu-mesh.io/enrolled":"false"}}}`)
				_, err := clientA.CoreV1().Pods(server.Namespace).Patch(ctx, server.Name, types.MergePatchType, patch, metav1.PatchOptions{})
				return err
			}},
		}
		for _, tc := range forbidden {
			err := tc.call()
			if !apierrors.IsForbidden(err) {
				t.Errorf("agent %s: got %v, want Forbidden", tc.name, err)
				continue
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("agent %s: error %q does not contain the policy message %q", tc.name, err, tc.message)
			}
		}
	})

	// Audit alerts become Events; no alert fires in this test, so record
	// one the way the agent does, with the agent's own credentials.
	t.Run("record alert event", func(t *testing.T) {
		event := &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{GenerateName: "mazu-curator-alert-", Namespace: client.Namespace},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: client.Namespace, Name: client.Name, UID: client.UID, APIVersion: "v1"},
			Reason:         "test", Message: "chart access test", Type: corev1.EventTypeWarning,
			Source:         corev1.EventSource{Component: "mazu-ztunnel", Host: nodeA.Name},
			FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now(), Count: 1,
		}
		got, err := clientA.CoreV1().Events(client.Namespace).Create(ctx, event, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("agent could not record an alert event: %v", err)
		}
		_ = tb.Client().CoreV1().Events(client.Namespace).Delete(ctx, got.Name, metav1.DeleteOptions{})
	})

	// The agent's credentials are really the pod token's: it cannot read
	// Secrets, which the chart does not grant.
	t.Run("no more than granted", func(t *testing.T) {
		_, err := clientA.CoreV1().Secrets(install.Namespace).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("agent listing Secrets: got %v, want Forbidden", err)
		}
	})
}
