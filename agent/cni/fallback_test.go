package cni

import (
	"path/filepath"
	"strings"
	"testing"
)

// absentSocket returns a socket path nothing listens on, as on a node whose
// agent is not running.
func absentSocket(t *testing.T) string {
	return filepath.Join(t.TempDir(), "absent.sock")
}

func TestPluginAddExcludedNamespaceWithoutAgent(t *testing.T) {
	bin := buildPlugin(t)
	settings := map[string]any{"socket": absentSocket(t)}

	code, out := invokeIn(t, bin, "ADD", "kube-system", "coredns-1", settings)
	if code != 0 {
		t.Fatalf("ADD in kube-system failed with no agent: %v", out)
	}
	if ips, _ := out["ips"].([]any); len(ips) != 1 {
		t.Errorf("ADD output lost the previous result's IPs: %v", out)
	}
	if code, out := invokeIn(t, bin, "CHECK", "kube-system", "coredns-1", settings); code != 0 {
		t.Errorf("CHECK in kube-system failed with no agent: %v", out)
	}
}

func TestPluginAddConfiguredExclusionsWithoutAgent(t *testing.T) {
	bin := buildPlugin(t)
	settings := map[string]any{"socket": absentSocket(t), "excludeNamespaces": []string{"istio-system"}}

	if code, out := invokeIn(t, bin, "ADD", "istio-system", "mazu-ztunnel-x1", settings); code != 0 {
		t.Errorf("ADD in a configured excluded namespace failed: %v", out)
	}
	// A configured list replaces the default, so kube-system is no longer
	// excluded.
	if code, out := invokeIn(t, bin, "ADD", "kube-system", "coredns-1", settings); code == 0 {
		t.Errorf("ADD in kube-system passed although the configured list leaves it out: %v", out)
	}
}

func TestPluginAddExcludedNamespaceSkipsAgent(t *testing.T) {
	bin := buildPlugin(t)
	h := &recordingHandler{}
	socket := startServer(t, h)

	if code, out := invokeIn(t, bin, "ADD", "kube-system", "ambient-dns", map[string]any{"socket": socket}); code != 0 {
		t.Fatalf("ADD in kube-system failed: %v", out)
	}
	if len(h.requests) != 0 {
		t.Errorf("agent got %d requests for an excluded namespace, want 0", len(h.requests))
	}
}

func TestPluginAddWithoutAgentOrKubeconfigFails(t *testing.T) {
	bin := buildPlugin(t)
	code, out := invokeIn(t, bin, "ADD", "shop", "web", map[string]any{"socket": absentSocket(t)})
	if code == 0 {
		t.Fatalf("ADD passed with no agent and no kubeconfig: %v", out)
	}
	if out["code"] != float64(codeTryAgain) {
		t.Errorf("CNI error code = %v, want %d", out["code"], codeTryAgain)
	}
	if msg, _ := out["msg"].(string); !strings.Contains(msg, "without a kubeconfig") || !strings.Contains(msg, "shop/web") {
		t.Errorf("CNI error message = %q, want it to name the pod and the missing kubeconfig", msg)
	}
}

func TestPluginAddWithoutAgentUsesAPI(t *testing.T) {
	bin := buildPlugin(t)
	api := startFakeAPI(t)
	api.addNamespace("mesh", map[string]string{dataplaneModeLabel: "ambient"})
	api.addNamespace("plain", nil)
	api.addPod("mesh", "web", "1234", nil, false)
	api.addPod("mesh", "opted-out", "1234", map[string]string{dataplaneModeLabel: "none"}, false)
	api.addPod("plain", "web", "1234", nil, false)
	api.addPod("plain", "opted-in", "1234", map[string]string{dataplaneModeLabel: "ambient"}, false)
	settings := map[string]any{"socket": absentSocket(t), "kubeconfig": api.writeKubeconfig(t, testToken)}

	cases := []struct {
		namespace, pod string
		pass           bool
	}{
		{"mesh", "web", false},
		{"mesh", "opted-out", true},
		{"plain", "web", true},
		{"plain", "opted-in", false},
	}
	for _, tc := range cases {
		t.Run(tc.namespace+"/"+tc.pod, func(t *testing.T) {
			code, out := invokeIn(t, bin, "ADD", tc.namespace, tc.pod, settings)
			if tc.pass {
				if code != 0 {
					t.Fatalf("ADD of a pod outside the mesh failed with no agent: %v", out)
				}
				if ips, _ := out["ips"].([]any); len(ips) != 1 {
					t.Errorf("ADD output lost the previous result's IPs: %v", out)
				}
				return
			}
			if code == 0 {
				t.Fatalf("ADD of an ambient pod passed with no agent: %v", out)
			}
			if out["code"] != float64(codeTryAgain) {
				t.Errorf("CNI error code = %v, want %d", out["code"], codeTryAgain)
			}
			want := "node agent unreachable, and pod " + tc.namespace + "/" + tc.pod + " is ambient"
			if msg, _ := out["msg"].(string); !strings.Contains(msg, want) {
				t.Errorf("CNI error message = %q, want it to contain %q", msg, want)
			}
		})
	}
}

func TestPluginAddWithoutAgentFailsOnAPIError(t *testing.T) {
	bin := buildPlugin(t)
	api := startFakeAPI(t)
	api.addNamespace("plain", nil)
	api.addPod("plain", "web", "1234", nil, false)
	api.addPod("plain", "replaced", "5678", nil, false)

	cases := []struct {
		name, pod, token, detail string
	}{
		{"rejected token", "web", "expired", "401"},
		{"pod missing", "gone", testToken, "not found"},
		{"pod replaced", "replaced", testToken, "has UID 5678"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			settings := map[string]any{"socket": absentSocket(t), "kubeconfig": api.writeKubeconfig(t, tc.token)}
			code, out := invokeIn(t, bin, "ADD", "plain", tc.pod, settings)
			if code == 0 {
				t.Fatalf("ADD passed although the API lookup failed: %v", out)
			}
			if msg, _ := out["msg"].(string); !strings.Contains(msg, "API lookup of pod plain/"+tc.pod+" failed") {
				t.Errorf("CNI error message = %q, want it to name the failed lookup", msg)
			}
			if details, _ := out["details"].(string); !strings.Contains(details, tc.detail) {
				t.Errorf("CNI error details = %q, want them to contain %q", details, tc.detail)
			}
		})
	}
}

func TestPluginAddAgentDecidesWhenReachable(t *testing.T) {
	bin := buildPlugin(t)
	api := startFakeAPI(t)
	api.addNamespace("plain", nil)
	api.addPod("plain", "broken-web", "1234", nil, false)
	socket := startServer(t, &recordingHandler{})

	// The API shows the pod is not ambient, but a reachable agent's error
	// still fails the ADD: the fallback applies only when the agent's
	// socket accepts no connection.
	settings := map[string]any{"socket": socket, "kubeconfig": api.writeKubeconfig(t, testToken)}
	if code, out := invokeIn(t, bin, "ADD", "plain", "broken-web", settings); code == 0 {
		t.Fatalf("ADD passed although the agent failed: %v", out)
	}
}
