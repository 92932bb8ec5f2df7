package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// A TokenReviewer authenticates a pod-bound service-account token.
type TokenReviewer interface {
	// Review returns the pod the token is bound to, or an error that says
	// why the token is not valid.
	Review(ctx context.Context, token string) (*PodIdentity, error)
}

// A PodIdentity is the pod identity a reviewed token authenticates.
type PodIdentity struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	NodeName       string       // the node the token's pod runs on
	PodIPs         []netip.Addr // the pod's current IPs, from the API server
}

// ErrUnauthorized wraps every token rejection.
var ErrUnauthorized = errors.New("token rejected")

// KubeReviewer checks tokens with the Kubernetes TokenReview API, with an
// audience reserved for the curator, then reads the bound pod to learn its
// IPs. The curator needs create on tokenreviews and get on pods.
type KubeReviewer struct {
	Client   kubernetes.Interface
	Audience string
}

// Review implements TokenReviewer.
func (k *KubeReviewer) Review(ctx context.Context, token string) (*PodIdentity, error) {
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{k.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return nil, fmt.Errorf("%w by the Kubernetes API: %s", ErrUnauthorized, st.Error)
	}
	if !slices.Contains(st.Audiences, k.Audience) {
		return nil, fmt.Errorf("%w: audiences %q lack %q", ErrUnauthorized, st.Audiences, k.Audience)
	}
	extra := st.User.Extra
	one := func(k string) string {
		if v := extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	id := &PodIdentity{
		PodName:  one("authentication.kubernetes.io/pod-name"),
		PodUID:   one("authentication.kubernetes.io/pod-uid"),
		NodeName: one("authentication.kubernetes.io/node-name"),
	}
	var ns, sa string
	if _, err := fmt.Sscanf(st.User.Username, "system:serviceaccount:%s", &ns); err == nil {
		for i := range ns {
			if ns[i] == ':' {
				ns, sa = ns[:i], ns[i+1:]
				break
			}
		}
	}
	id.Namespace, id.ServiceAccount = ns, sa
	if id.PodName == "" || id.PodUID == "" || sa == "" {
		return nil, fmt.Errorf("%w: not a pod-bound service-account token; request one bound to the pod", ErrUnauthorized)
	}
	pod, err := k.Client.CoreV1().Pods(ns).Get(ctx, id.PodName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: get bound pod %s/%s: %v", ErrUnauthorized, ns, id.PodName, err)
	}
	if string(pod.UID) != id.PodUID {
		return nil, fmt.Errorf("%w: bound pod %s/%s has UID %s, token names %s", ErrUnauthorized, ns, id.PodName, pod.UID, id.PodUID)
	}
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			id.PodIPs = append(id.PodIPs, a)
		}
	}
	return id, nil
}
