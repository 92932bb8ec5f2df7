package cni

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// DefaultExcludeNamespaces are the namespaces the plugin lets through when
// its configuration names none. The installer adds its own namespace.
var DefaultExcludeNamespaces = []string{"kube-system"}

// Labels and annotation of Istio's ambient opt-in, as the agent reads them.
const (
	dataplaneModeLabel      = "istio.io/dataplane-mode"
	sidecarStatusAnnotation = "sidecar.istio.io/status"
)

// apiLookupTimeout bounds the pod and namespace lookups of one invocation.
const apiLookupTimeout = 10 * time.Second

// agentUnreachableError is a failure to connect to the agent's socket, as
// opposed to a failure after the agent accepted the request.
type agentUnreachableError struct {
	socket string
	err    error
}

func (e *agentUnreachableError) Error() string {
	return fmt.Sprintf("connect to agent at %s: %v", e.socket, e.err)
}

func (e *agentUnreachableError) Unwrap() error { return e.err }

// excluded reports whether pods of the namespace start without the agent.
func (c NetConf) excluded(namespace string) bool {
	list := c.ExcludeNamespaces
	if list == nil {
		list = DefaultExcludeNamespaces
	}
	return slices.Contains(list, namespace)
}

// admitWithoutAgent decides an ADD or CHECK while the agent's socket
// accepts no connection. It returns nil for a pod the agent would not
// enroll, so pods outside the mesh keep starting on a node whose agent is
// down. Otherwise it returns a "try again" error, which the kubelet
// retries. Without a kubeconfig it cannot tell the two apart and fails.
func admitWithoutAgent(conf NetConf, req Request, agentErr error) error {
	pod := req.Namespace + "/" + req.Name
	if conf.Kubeconfig == "" {
		return &Error{
			CNIVersion: conf.CNIVersion,
			Code:       codeTryAgain,
			Msg:        fmt.Sprintf("node agent unreachable, and without a kubeconfig in its configuration mazu-cni cannot tell whether pod %s is ambient; the pod waits until the agent runs", pod),
			Details:    agentErr.Error(),
		}
	}
	ambient, err := lookUpAmbient(conf.Kubeconfig, req)
	if err != nil {
		return &Error{
			CNIVersion: conf.CNIVersion,
			Code:       codeTryAgain,
			Msg:        fmt.Sprintf("node agent unreachable, and the API lookup of pod %s failed; the pod waits until either works", pod),
			Details:    fmt.Sprintf("%v; %v", agentErr, err),
		}
	}
	if ambient {
		return &Error{
			CNIVersion: conf.CNIVersion,
			Code:       codeTryAgain,
			Msg:        fmt.Sprintf("node agent unreachable, and pod %s is ambient; the pod waits until the agent runs", pod),
			Details:    agentErr.Error(),
		}
	}
	return nil
}

// lookUpAmbient reads the pod and, when the pod's labels do not decide,
// its namespace, and applies the agent's enrollment rule.
func lookUpAmbient(kubeconfigPath string, req Request) (bool, error) {
	client, err := loadKubeconfig(kubeconfigPath)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiLookupTimeout)
	defer cancel()
	pod, err := client.getPod(ctx, req.Namespace, req.Name)
	if err != nil {
		return false, fmt.Errorf("look up pod: %w", err)
	}
	if req.UID != "" && pod.Metadata.UID != req.UID {
		return false, fmt.Errorf("look up pod: pod %s/%s has UID %s, the runtime requested %s", req.Namespace, req.Name, pod.Metadata.UID, req.UID)
	}
	if decided, ambient := podDecidesAmbient(pod); decided {
		return ambient, nil
	}
	ns, err := client.getNamespace(ctx, req.Namespace)
	if err != nil {
		return false, fmt.Errorf("look up namespace: %w", err)
	}
	return isAmbient(pod, ns.Metadata.Labels), nil
}

// isAmbient applies the agent's enrollment rule, agent.ShouldEnroll, which
// a test compares it with. Host-network pods and pods with an Istio sidecar
// are never ambient. Otherwise the pod label istio.io/dataplane-mode
// ("ambient" or "none") decides, and without it the namespace label.
func isAmbient(pod apiObject, namespaceLabels map[string]string) bool {
	if decided, ambient := podDecidesAmbient(pod); decided {
		return ambient
	}
	return namespaceLabels[dataplaneModeLabel] == "ambient"
}

// podDecidesAmbient applies the parts of isAmbient that need only the pod.
func podDecidesAmbient(pod apiObject) (decided, ambient bool) {
	if pod.Spec.HostNetwork {
		return true, false
	}
	if _, sidecar := pod.Metadata.Annotations[sidecarStatusAnnotation]; sidecar {
		return true, false
	}
	switch pod.Metadata.Labels[dataplaneModeLabel] {
	case "ambient":
		return true, true
	case "none":
		return true, false
	}
	return false, false
}
