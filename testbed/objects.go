package testbed

import (
	"context"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// EnsureNamespace creates a namespace unless it exists.
func (tb *Testbed) EnsureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err := tb.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// EnsureServiceAccount creates a service account unless it exists.
func (tb *Testbed) EnsureServiceAccount(ctx context.Context, namespace, name string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err := tb.client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s/%s: %w", namespace, name, err)
	}
	return nil
}

// AddService creates a ClusterIP Service that selects pods by label. The
// controller-manager then keeps its EndpointSlices current.
func (tb *Testbed) AddService(ctx context.Context, namespace, name string, selector map[string]string, ports ...corev1.ServicePort) (*corev1.Service, error) {
	if err := tb.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	for i := range ports {
		if ports[i].TargetPort == (intstr.IntOrString{}) {
			ports[i].TargetPort = intstr.FromInt32(ports[i].Port)
		}
		if ports[i].Protocol == "" {
			ports[i].Protocol = corev1.ProtocolTCP
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.ServiceSpec{Selector: selector, Ports: ports, Type: corev1.ServiceTypeClusterIP},
	}
	created, err := tb.client.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", namespace, name, err)
	}
	return created, nil
}

// WaitEndpoints waits until the Service's EndpointSlices list exactly want
// ready addresses, and returns them.
func (tb *Testbed) WaitEndpoints(ctx context.Context, namespace, service string, want int, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	var addrs []string
	for {
		slices, err := tb.client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + service,
		})
		if err != nil {
			return nil, fmt.Errorf("list EndpointSlices of %s/%s: %w", namespace, service, err)
		}
		addrs = addrs[:0]
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					addrs = append(addrs, ep.Addresses...)
				}
			}
		}
		if len(addrs) == want {
			return addrs, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("service %s/%s has %d ready endpoints after %s, expected %d (is kube-controller-manager running?)", namespace, service, len(addrs), timeout, want)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RequestToken issues a token bound to the pod for the given audience, as
// the kubelet does for projected service-account volumes.
func (tb *Testbed) RequestToken(ctx context.Context, pod *Pod, audience string, lifetime time.Duration) (string, error) {
	seconds := int64(lifetime / time.Second)
	req := &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &seconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
			},
		},
	}
	resp, err := tb.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.ServiceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request token for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return resp.Status.Token, nil
}

// ReviewToken runs a TokenReview for the audience and returns its status.
func (tb *Testbed) ReviewToken(ctx context.Context, token, audience string) (authenticationv1.TokenReviewStatus, error) {
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{audience}}}
	resp, err := tb.client.AuthenticationV1().TokenReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		return authenticationv1.TokenReviewStatus{}, fmt.Errorf("review token: %w", err)
	}
	return resp.Status, nil
}
