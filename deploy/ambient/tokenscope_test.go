package ambient_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// agentServiceAccount is the chart's default resourceName.
	agentServiceAccount = "mazu-ztunnel"
	// curatorAudience is the default log origin for the default release.
	curatorAudience = "mazu-curator.istio-system.svc/Kubernetes"
	// nodeNameExtra is the user extra key the API server fills from a
	// pod-bound service-account token.
	nodeNameExtra = "authentication.kubernetes.io/node-name"
	// ownNodeMessage is part of the policy's message for a pod on another node.
	ownNodeMessage = "may request tokens only for pods on its own node"
)

// agentClient returns a client that authenticates as the agent pod, with a
// real token bound to that pod, as the kubelet would project it.
func agentClient(t testing.TB, tb *testbed.Testbed, agent *testbed.Pod) kubernetes.Interface {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The API server's own audience defaults to its issuer URL.
	token, err := tb.RequestToken(ctx, agent, tb.APIServerURL(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{
		Host:            tb.APIServerURL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: tb.CACertFile()},
		// High enough that client-side throttling never shapes a benchmark.
		QPS:   1000,
		Burst: 1000,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// tokenRequest builds a request for a token bound to pod, as the agent
// makes it for a key registration.
func tokenRequest(pod *testbed.Pod) *authenticationv1.TokenRequest {
	seconds := int64(3600)
	return &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{curatorAudience},
		ExpirationSeconds: &seconds,
		BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		},
	}}
}

// tokenClaims are the claims of a service-account token this test reads.
type tokenClaims struct {
	Audience   []string `json:"aud"`
	Kubernetes struct {
		Node struct {
			Name string `json:"name"`
		} `json:"node"`
		Pod struct {
			Name string    `json:"name"`
			UID  types.UID `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

func decodeClaims(t *testing.T, token string) tokenClaims {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3 (a JWS)", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("decode token payload: %v", err)
	}
	var claims tokenClaims
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("parse token claims: %v", err)
	}
	return claims
}

// waitPolicyActive waits until the API server enforces both token policies:
// they and the node policy's Pod parameters load asynchronously after the
// objects are created. It probes with requests each policy must reject.
func waitPolicyActive(t testing.TB, agent kubernetes.Interface, other *testbed.Pod) {
	t.Helper()
	unbound := tokenRequest(other)
	unbound.Spec.BoundObjectRef = nil
	waitRejection(t, agent, other, tokenRequest(other), ownNodeMessage)
	waitRejection(t, agent, other, unbound, "only tokens bound to a pod")
}

// waitRejection repeats req until the API server rejects it with message.
func waitRejection(t testing.TB, agent kubernetes.Interface, pod *testbed.Pod, req *authenticationv1.TokenRequest, message string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last error
	for {
		_, err := agent.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.ServiceAccount, req, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), message) {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("no rejection containing %q for a token for pod %s/%s within 60 s; last result: %v", message, pod.Namespace, pod.Name, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// TestAgentTokenScope checks the mechanism that keeps an agent to its own
// node: with a real token of an agent pod on node A, the agent gets tokens
// for pods on node A and is rejected for pods on node B, for other
// audiences, lifetimes and binding kinds, and for every API call the chart
// does not grant.
func TestAgentTokenScope(t *testing.T) {
	tb := testbed.Get(t)
	installDefault(t, tb)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	nodeA := testbed.NewNode(t, tb, "scope-a")
	nodeB := testbed.NewNode(t, tb, "scope-b")
	agentA := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: ambient.DefaultNamespace, Name: "mazu-ztunnel-scope-a", ServiceAccount: agentServiceAccount})
	agentB := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{Namespace: ambient.DefaultNamespace, Name: "mazu-ztunnel-scope-b", ServiceAccount: agentServiceAccount})
	appA := testbed.NewPod(t, tb, nodeA, testbed.PodSpec{Namespace: "scope-apps", Name: "app-a", ServiceAccount: "app"})
	appB := testbed.NewPod(t, tb, nodeB, testbed.PodSpec{Namespace: "scope-apps", Name: "app-b", ServiceAccount: "app"})

	clientA := agentClient(t, tb, agentA)
	clientB := agentClient(t, tb, agentB)

	// The API server derives the agent's node from its pod-bound token.
	review, err := clientA.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := review.Status.UserInfo.Extra[nodeNameExtra]; len(got) != 1 || got[0] != nodeA.Name {
		t.Fatalf("agent A's user extra %s = %v, want [%s]", nodeNameExtra, got, nodeA.Name)
	}

	waitPolicyActive(t, clientA, appB)

	t.Run("own node allowed", func(t *testing.T) {
		resp, err := clientA.CoreV1().ServiceAccounts(appA.Namespace).CreateToken(ctx, appA.ServiceAccount, tokenRequest(appA), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("agent on %s could not get a token for pod %s on its node: %v", nodeA.Name, appA.Name, err)
		}
		claims := decodeClaims(t, resp.Status.Token)
		if claims.Kubernetes.Node.Name != nodeA.Name || claims.Kubernetes.Pod.UID != appA.UID {
			t.Errorf("token names node %q and pod UID %q, want %q and %q", claims.Kubernetes.Node.Name, claims.Kubernetes.Pod.UID, nodeA.Name, appA.UID)
		}
		if len(claims.Audience) != 1 || claims.Audience[0] != curatorAudience {
			t.Errorf("token audience = %v, want [%s]", claims.Audience, curatorAudience)
		}
	})

	t.Run("other node rejected", func(t *testing.T) {
		_, err := clientA.CoreV1().ServiceAccounts(appB.Namespace).CreateToken(ctx, appB.ServiceAccount, tokenRequest(appB), metav1.CreateOptions{})
		assertRejected(t, err, ownNodeMessage)
		// And the other way round: agent B may not take node A's pods.
		_, err = clientB.CoreV1().ServiceAccounts(appA.Namespace).CreateToken(ctx, appA.ServiceAccount, tokenRequest(appA), metav1.CreateOptions{})
		assertRejected(t, err, ownNodeMessage)
		// Nor may agent A take agent B's own identity.
		_, err = clientA.CoreV1().ServiceAccounts(agentB.Namespace).CreateToken(ctx, agentB.ServiceAccount, tokenRequest(agentB), metav1.CreateOptions{})
		assertRejected(t, err, ownNodeMessage)
	})

	rejected := []struct {
		name    string
		mutate  func(*authenticationv1.TokenRequest)
		message string
	}{
		{"unbound token", func(r *authenticationv1.TokenRequest) { r.Spec.BoundObjectRef = nil }, "only tokens bound to a pod"},
		{"bound without UID", func(r *authenticationv1.TokenRequest) { r.Spec.BoundObjectRef.UID = "" }, "only tokens bound to a pod"},
		// A stale UID names a pod that no longer holds the name.
		{"UID of another pod", func(r *authenticationv1.TokenRequest) { r.Spec.BoundObjectRef.UID = appB.UID }, ownNodeMessage},
		{"API server audience", func(r *authenticationv1.TokenRequest) { r.Spec.Audiences = []string{tb.APIServerURL()} }, "are not allowed"},
		{"extra audience", func(r *authenticationv1.TokenRequest) { r.Spec.Audiences = append(r.Spec.Audiences, "istio-ca") }, "are not allowed"},
		{"two hour lifetime", func(r *authenticationv1.TokenRequest) {
			seconds := int64(7200)
			r.Spec.ExpirationSeconds = &seconds
		}, "at most 3600 seconds"},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			req := tokenRequest(appA)
			tc.mutate(req)
			_, err := clientA.CoreV1().ServiceAccounts(appA.Namespace).CreateToken(ctx, appA.ServiceAccount, req, metav1.CreateOptions{})
			assertRejected(t, err, tc.message)
		})
	}

	t.Run("impersonation without node rejected", func(t *testing.T) {
		// Impersonating the agent's service account without the node extra
		// (as an admin could) does not pass for the agent.
		cfg := tb.RESTConfig()
		cfg.Impersonate = rest.ImpersonationConfig{
			UserName: "system:serviceaccount:" + ambient.DefaultNamespace + ":" + agentServiceAccount,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ambient.DefaultNamespace, "system:authenticated"},
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.CoreV1().ServiceAccounts(appA.Namespace).CreateToken(ctx, appA.ServiceAccount, tokenRequest(appA), metav1.CreateOptions{})
		assertRejected(t, err, "must authenticate with a token bound to its own pod")
	})

	t.Run("other clients unaffected", func(t *testing.T) {
		// The policy matches only the agent: the admin still gets any token.
		if _, err := tb.RequestToken(ctx, appB, "anything", time.Hour); err != nil {
			t.Errorf("admin token request rejected: %v", err)
		}
	})

	t.Run("granted reads allowed", func(t *testing.T) {
		pods, err := clientA.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeA.Name})
		if err != nil {
			t.Fatalf("agent could not list the pods on its node: %v", err)
		}
		if len(pods.Items) != 2 {
			t.Errorf("agent listed %d pods on %s, want 2 (itself and app-a)", len(pods.Items), nodeA.Name)
		}
		if _, err := clientA.CoreV1().Namespaces().Get(ctx, appA.Namespace, metav1.GetOptions{}); err != nil {
			t.Errorf("agent could not read namespace %s: %v", appA.Namespace, err)
		}
		// The peer verifier reviews peers' tokens to see that they are still
		// live. A review reports only whether a token is valid.
		review, err := clientA.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: "x"}}, metav1.CreateOptions{})
		if err != nil {
			t.Errorf("agent could not review a token: %v", err)
		} else if review.Status.Authenticated {
			t.Errorf("review of a malformed token says authenticated")
		}
	})

	t.Run("pod annotations", func(t *testing.T) {
		// The agent may set and clear its two annotations on its own
		// node's pods, and nothing else. The policy loads asynchronously,
		// so wait until it rejects a patch of another node's pod first.
		// The probe removes an annotation the pod lacks, so it changes
		// nothing if it is admitted. A probe that relabels appA fails
		// as a wait: once one attempt is admitted before the policy
		// loads, every later attempt is a no-op that the policy allows.
		noOp := []byte(`{"metadata":{"annotations":{"mazu-mesh.io/policy-probe":null}}}`)
		waitPatchRejected(t, clientA, appB, noOp, "may change only pods on its own node")
		enroll := []byte(`{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled","mazu-mesh.io/enrolled":"true"}}}`)
		if _, err := clientA.CoreV1().Pods(appA.Namespace).Patch(ctx, appA.Name, types.MergePatchType, enroll, metav1.PatchOptions{}); err != nil {
			t.Errorf("agent could not annotate pod %s on its node: %v", appA.Name, err)
		}
		unenroll := []byte(`{"metadata":{"annotations":{"ambient.istio.io/redirection":null,"mazu-mesh.io/enrolled":null}}}`)
		if _, err := clientA.CoreV1().Pods(appA.Namespace).Patch(ctx, appA.Name, types.MergePatchType, unenroll, metav1.PatchOptions{}); err != nil {
			t.Errorf("agent could not clear the annotations of pod %s on its node: %v", appA.Name, err)
		}
		rejected := []struct {
			name  string
			pod   *testbed.Pod
			patch string
			want  string
		}{
			{"other node", appB, `{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`, "may change only pods on its own node"},
			{"other annotation", appA, `{"metadata":{"annotations":{"sidecar.istio.io/inject":"true"}}}`, "may change only the annotations"},
			{"label", appA, `{"metadata":{"labels":{"app":"other"}}}`, "may change only the annotations"},
			{"finalizer", appA, `{"metadata":{"finalizers":["example.com/hold"]}}`, "may change only the annotations"},
			{"deadline", appA, `{"spec":{"activeDeadlineSeconds":600}}`, "may change only the annotations"},
		}
		for _, tc := range rejected {
			_, err := clientA.CoreV1().Pods(tc.pod.Namespace).Patch(ctx, tc.pod.Name, types.MergePatchType, []byte(tc.patch), metav1.PatchOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("agent patch %s: got %v, want a rejection containing %q", tc.name, err, tc.want)
			}
		}
	})

	forbidden := []struct {
		name string
		call func() error
	}{
		{"create pod", func() error {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "agent-made", Namespace: appA.Namespace},
				Spec:       corev1.PodSpec{NodeName: nodeA.Name, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/x"}}},
			}
			_, err := clientA.CoreV1().Pods(appA.Namespace).Create(ctx, pod, metav1.CreateOptions{})
			return err
		}},
		{"delete pod", func() error {
			return clientA.CoreV1().Pods(appB.Namespace).Delete(ctx, appB.Name, metav1.DeleteOptions{})
		}},
		{"evict pod", func() error {
			eviction := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: appB.Name, Namespace: appB.Namespace}}
			return clientA.CoreV1().Pods(appB.Namespace).EvictV1(ctx, eviction)
		}},
		{"list secrets", func() error {
			_, err := clientA.CoreV1().Secrets(ambient.DefaultNamespace).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"read configmap", func() error {
			_, err := clientA.CoreV1().ConfigMaps(ambient.DefaultNamespace).Get(ctx, "mazu-witness-policy", metav1.GetOptions{})
			return err
		}},
		{"create service account", func() error {
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent-made"}}
			_, err := clientA.CoreV1().ServiceAccounts(appA.Namespace).Create(ctx, sa, metav1.CreateOptions{})
			return err
		}},
		{"label namespace", func() error {
			patch := []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"none"}}}`)
			_, err := clientA.CoreV1().Namespaces().Patch(ctx, appA.Namespace, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}},
		{"update pod status", func() error {
			_, err := clientA.CoreV1().Pods(appA.Namespace).UpdateStatus(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: appA.Name, Namespace: appA.Namespace}}, metav1.UpdateOptions{})
			return err
		}},
		{"list nodes", func() error {
			_, err := clientA.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		}},
		{"change admission policy", func() error {
			return clientA.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, "mazu-ztunnel-istio-system-token-node", metav1.DeleteOptions{})
		}},
	}
	for _, tc := range forbidden {
		t.Run("forbidden "+tc.name, func(t *testing.T) {
			err := tc.call()
			if !apierrors.IsForbidden(err) {
				t.Errorf("agent call %q: got %v, want Forbidden", tc.name, err)
			}
		})
	}
}

// waitPatchRejected repeats a pod patch until the API server rejects it
// with message.
func waitPatchRejected(t *testing.T, agent kubernetes.Interface, pod *testbed.Pod, patch []byte, message string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last error
	for {
		_, err := agent.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil && strings.Contains(err.Error(), message) {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("no rejection containing %q for patch %s of pod %s/%s within 60 s; last result: %v", message, patch, pod.Namespace, pod.Name, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// assertRejected checks that err is the policy's Forbidden error carrying message.
func assertRejected(t *testing.T, err error, message string) {
	t.Helper()
	if err == nil {
		t.Fatalf("token request succeeded, want a rejection containing %q", message)
	}
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Errorf("token request error is %v, want Forbidden", err)
	}
	if !strings.Contains(err.Error(), message) {
		t.Errorf("token request error = %q, want it to contain %q", err.Error(), message)
	}
}
