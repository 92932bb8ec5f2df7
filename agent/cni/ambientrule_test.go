package cni_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
)

// TestAmbientRuleMatchesAgent checks that the plugin, deciding without the
// agent, lets through exactly the pods the agent would not enroll.
func TestAmbientRuleMatchesAgent(t *testing.T) {
	modes := []string{"", "ambient", "none", "other"}
	for _, hostNetwork := range []bool{false, true} {
		for _, sidecar := range []bool{false, true} {
			for _, podMode := range modes {
				for _, nsMode := range modes {
					labels := map[string]string{}
					if podMode != "" {
						labels[agent.DataplaneModeLabel] = podMode
					}
					nsLabels := map[string]string{}
					if nsMode != "" {
						nsLabels[agent.DataplaneModeLabel] = nsMode
					}
					annotations := map[string]string{}
					if sidecar {
						annotations["sidecar.istio.io/status"] = "{}"
					}
					pod := &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
						Spec:       corev1.PodSpec{HostNetwork: hostNetwork},
					}
					want := agent.ShouldEnroll(pod, nsLabels)
					got := cni.IsAmbientForTest(hostNetwork, labels, annotations, nsLabels)
					if got != want {
						t.Errorf("hostNetwork=%t sidecar=%t pod mode %q namespace mode %q: plugin says ambient=%t, agent enrolls=%t",
							hostNetwork, sidecar, podMode, nsMode, got, want)
					}
				}
			}
		}
	}
}
