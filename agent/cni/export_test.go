package cni

// IsAmbientForTest exposes isAmbient to the external test that compares it
// with the agent's rule.
func IsAmbientForTest(hostNetwork bool, labels, annotations, namespaceLabels map[string]string) bool {
	var pod apiObject
	pod.Spec.HostNetwork = hostNetwork
	pod.Metadata.Labels = labels
	pod.Metadata.Annotations = annotations
	return isAmbient(pod, namespaceLabels)
}
