package rbeauth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// APIKeySource reads the issuer's keys from the API server.
type APIKeySource struct {
	Client kubernetes.Interface
}

// JWKS implements KeySource.
func (s APIKeySource) JWKS(ctx context.Context) ([]byte, error) {
	return s.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
}

// OpenIDConfiguration implements KeySource.
func (s APIKeySource) OpenIDConfiguration(ctx context.Context) ([]byte, error) {
	return s.Client.CoreV1().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
}

// DefaultLivenessTTL is how long a TokenReview or pod lookup result is
// reused. It equals kube-apiserver's own success cache for token
// authentication (10 s, not configurable), so caching longer would only
// widen the window in which a deleted pod's token still passes.
const DefaultLivenessTTL = 10 * time.Second

// ttlCache is a small bounded map with per-entry expiry. When full, it
// drops expired entries, then an arbitrary one: the cache only saves API
// calls, so any eviction is safe.
type ttlCache[K comparable, V any] struct {
	mu      sync.Mutex
	max     int
	entries map[K]ttlEntry[V]
}

type ttlEntry[V any] struct {
	value   V
	expires time.Time
}

func newTTLCache[K comparable, V any](max int) *ttlCache[K, V] {
	return &ttlCache[K, V]{max: max, entries: make(map[K]ttlEntry[V])}
}

func (c *ttlCache[K, V]) get(key K, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || now.After(e.expires) {
		var zero V
		return zero, false
	}
	return e.value, true
}

func (c *ttlCache[K, V]) put(key K, value V, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		now := time.Now()
		for k, e := range c.entries {
			if now.After(e.expires) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = ttlEntry[V]{value: value, expires: expires}
}

func (c *ttlCache[K, V]) remove(match func(K, V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if match(k, e.value) {
			delete(c.entries, k)
		}
	}
}

func (c *ttlCache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// liveness checks that a token is still accepted by the API server and that
// its pod still exists as the token describes it.
type liveness struct {
	client   kubernetes.Interface
	audience string
	ttl      time.Duration
	now      func() time.Time
	reviews  *ttlCache[[32]byte, reviewResult]
	pods     *ttlCache[string, *corev1.Pod] // by namespace/name
}

type reviewResult struct {
	podUID string
	err    error
}

func newLiveness(client kubernetes.Interface, audience string, ttl time.Duration, size int) *liveness {
	return &liveness{
		client: client, audience: audience, ttl: ttl, now: time.Now,
		reviews: newTTLCache[[32]byte, reviewResult](size),
		pods:    newTTLCache[string, *corev1.Pod](size),
	}
}

// review runs a TokenReview for the token, or reuses a result younger than
// the TTL. Only definite answers are cached: a failed API call is not.
func (l *liveness) review(ctx context.Context, token string, claims *Claims) error {
	key := sha256.Sum256([]byte(token))
	now := l.now()
	if r, ok := l.reviews.get(key, now); ok {
		return r.err
	}
	req := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{l.audience}}}
	resp, err := l.client.AuthenticationV1().TokenReviews().Create(ctx, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("%w: TokenReview: %v", ErrKubernetesUnavailable, err)
	}
	var result error
	switch {
	case !resp.Status.Authenticated:
		result = fmt.Errorf("%w: %s", ErrTokenNotLive, resp.Status.Error)
	case !contains(resp.Status.Audiences, l.audience):
		result = fmt.Errorf("%w: TokenReview accepted audiences %v, want %q", ErrTokenAudience, resp.Status.Audiences, l.audience)
	case first(resp.Status.User.Extra["authentication.kubernetes.io/pod-uid"]) != claims.PodUID():
		result = fmt.Errorf("%w: TokenReview names pod UID %v, the token claims %q", ErrPodMismatch, resp.Status.User.Extra["authentication.kubernetes.io/pod-uid"], claims.PodUID())
	}
	l.reviews.put(key, reviewResult{podUID: claims.PodUID(), err: result}, now.Add(l.ttl))
	return result
}

// checkPod checks that the token's pod exists with the token's UID and
// service account, and has the peer's IP.
func (l *liveness) checkPod(ctx context.Context, claims *Claims, peerIP netip.Addr) error {
	namespace, name := claims.Kubernetes.Namespace, claims.PodName()
	key := namespace + "/" + name
	now := l.now()
	pod, ok := l.pods.get(key, now)
	if !ok {
		got, err := l.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			pod = nil
		case err != nil:
			return fmt.Errorf("%w: get pod %s: %v", ErrKubernetesUnavailable, key, err)
		default:
			pod = got
		}
		l.pods.put(key, pod, now.Add(l.ttl))
	}
	if pod == nil {
		return fmt.Errorf("%w: pod %s does not exist", ErrPodMismatch, key)
	}
	if string(pod.UID) != claims.PodUID() {
		return fmt.Errorf("%w: pod %s has UID %s, the token is bound to UID %s", ErrPodMismatch, key, pod.UID, claims.PodUID())
	}
	if pod.Spec.ServiceAccountName != claims.Kubernetes.ServiceAccount.Name {
		return fmt.Errorf("%w: pod %s runs as service account %q, the token names %q", ErrPodMismatch, key, pod.Spec.ServiceAccountName, claims.Kubernetes.ServiceAccount.Name)
	}
	if !podHasIP(pod, peerIP) {
		return fmt.Errorf("%w: pod %s does not have the peer's IP %s (pod IPs %v)", ErrPodMismatch, key, peerIP, pod.Status.PodIPs)
	}
	return nil
}

// forgetPod drops cached results for a pod, for example when a watch sees
// it deleted.
func (l *liveness) forgetPod(uid string) {
	l.reviews.remove(func(_ [32]byte, r reviewResult) bool { return r.podUID == uid })
	l.pods.remove(func(_ string, p *corev1.Pod) bool { return p != nil && string(p.UID) == uid })
}

func podHasIP(pod *corev1.Pod, ip netip.Addr) bool {
	for _, p := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(p.IP); err == nil && a.Unmap() == ip.Unmap() {
			return true
		}
	}
	if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil && a.Unmap() == ip.Unmap() {
		return true
	}
	return false
}

func contains(list []string, want string) bool {
	for _, v := range list {
		if v == want {
			return true
		}
	}
	return false
}

func first(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return list[0]
}
