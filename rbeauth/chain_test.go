package rbeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// The tests in this file run the whole verification chain: a real
// kube-apiserver (testbed), a real curator with two witnesses (meshtest),
// identities registered by Workloads, and CuratorRegistry checking the
// stapled proofs, with the peers on two nodes.

// nodeView is one node's trusted checkpoint, refreshed on request as the
// node agent's log monitor would refresh it on a timer.
type nodeView struct {
	policy *curator.Policy
	client *curator.Client

	mu sync.Mutex
	cp *curator.Checkpoint
}

func (n *nodeView) trusted() *curator.Checkpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cp
}

// refresh trusts the curator's latest cosigned checkpoint.
func (n *nodeView) refresh(t testing.TB) {
	t.Helper()
	raw, err := n.client.Checkpoint(context.Background())
	if err != nil {
		t.Fatalf("read checkpoint: %v", err)
	}
	cp, err := n.policy.Open(raw, time.Now())
	if err != nil {
		t.Fatalf("open checkpoint: %v", err)
	}
	n.mu.Lock()
	n.cp = cp
	n.mu.Unlock()
}

// countingRegistry counts the calls that reach the real registry.
type countingRegistry struct {
	*CuratorRegistry
	calls atomic.Int64
}

func (r *countingRegistry) VerifyRegistration(ctx context.Context, claim RegistrationClaim) (Checkpoint, error) {
	r.calls.Add(1)
	return r.CuratorRegistry.VerifyRegistration(ctx, claim)
}

// meshNode is one node: its Workloads, its view of the log and a verifier
// over the real registry.
type meshNode struct {
	node      *testbed.Node
	workloads *Workloads
	view      *nodeView
	registry  *countingRegistry
	verifier  *Verifier
}

type chainFixture struct {
	tb             *testbed.Testbed
	mesh           *meshtest.Curator
	a, b           *meshNode
	client, server *testWorkload
}

func startMesh(t testing.TB, tb *testbed.Testbed, forkOf *meshtest.Curator) *meshtest.Curator {
	t.Helper()
	mesh, err := meshtest.StartCurator(context.Background(), meshtest.CuratorOptions{
		Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2, BlockSize: 16, ForkOf: forkOf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	return mesh
}

func newMeshNode(t testing.TB, tb *testbed.Testbed, mesh *meshtest.Curator, node *testbed.Node) *meshNode {
	t.Helper()
	client := &curator.Client{URL: mesh.URL}
	n := &meshNode{node: node, view: &nodeView{policy: mesh.Policy, client: client}}
	var err error
	n.workloads, err = NewWorkloads(WorkloadsOptions{
		Client: tb.Client(), Curator: client, Policy: mesh.Policy, CRS: mesh.CRS,
		TrustDomain: testbed.TrustDomain, Audience: curator.DefaultAudience,
	})
	if err != nil {
		t.Fatal(err)
	}
	n.registry = newCountingRegistry(t, mesh.Policy, mesh, n.view)
	n.verifier = newChainVerifier(t, tb, n.registry)
	return n
}

func newCountingRegistry(t testing.TB, policy *curator.Policy, mesh *meshtest.Curator, view *nodeView) *countingRegistry {
	t.Helper()
	reg, err := NewCuratorRegistry(policy, mesh.CRS, &curator.Client{URL: mesh.URL}, view.trusted)
	if err != nil {
		t.Fatal(err)
	}
	return &countingRegistry{CuratorRegistry: reg}
}

func newChainVerifier(t testing.TB, tb *testbed.Testbed, reg Registry) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{Client: tb.Client(), TrustDomain: testbed.TrustDomain, Audience: curator.DefaultAudience, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// register enrolls pod through w and returns its identity material as the
// pod holds it: the token, the TLS key and the certificate with its staple.
func register(t testing.TB, tb *testbed.Testbed, w *Workloads, pod *testbed.Pod) *testWorkload {
	t.Helper()
	ctx := context.Background()
	obj, err := tb.Client().CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Register(ctx, obj, pod.IP); err != nil {
		t.Fatalf("register %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return currentIdentity(t, w, pod)
}

// currentIdentity returns a copy of the pod's current certificate and the
// facts in it.
func currentIdentity(t testing.TB, w *Workloads, pod *testbed.Pod) *testWorkload {
	t.Helper()
	cert, err := w.Certificate(pod.UID)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	facts, err := inspectCertificate(leaf, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &testWorkload{pod: pod, token: facts.token, key: cert.PrivateKey.(*ecdsa.PrivateKey), cert: *cert, id: facts.identity}
}

// withStaple returns attacker's certificate carrying victim's stapled proof.
func withStaple(attacker, victim *testWorkload) *testWorkload {
	out := *attacker
	out.cert.SignedCertificateTimestamps = victim.cert.SignedCertificateTimestamps
	return &out
}

// newChainFixture starts a curator, two nodes each with Workloads and a
// verifier, and registers a client pod on node A and a server pod on node B.
// Both nodes trust the latest checkpoint afterwards.
func newChainFixture(t *testing.T, namespace string) *chainFixture {
	t.Helper()
	tb := testbed.Get(t)
	f := &chainFixture{tb: tb, mesh: startMesh(t, tb, nil)}
	f.a = newMeshNode(t, tb, f.mesh, testbed.NewNode(t, tb, namespace+"-a"))
	f.b = newMeshNode(t, tb, f.mesh, testbed.NewNode(t, tb, namespace+"-b"))
	clientPod := testbed.NewPod(t, tb, f.a.node, testbed.PodSpec{Namespace: namespace, Name: "client", ServiceAccount: "client"})
	serverPod := testbed.NewPod(t, tb, f.b.node, testbed.PodSpec{Namespace: namespace, Name: "server", ServiceAccount: "server"})
	f.client = register(t, tb, f.a.workloads, clientPod)
	f.server = register(t, tb, f.b.workloads, serverPod)
	f.a.view.refresh(t)
	f.b.view.refresh(t)
	return f
}

// attackServer runs one handshake from source, presenting attacker, to the
// fixture's server, verified by node B's verifier, and returns the
// server's error.
func (f *chainFixture) attackServer(t *testing.T, attacker *testWorkload, source *testbed.Pod) error {
	t.Helper()
	_, serverErr := handshake(t, f.a.verifier, f.b.verifier, attacker, source, f.server, []Identity{f.server.id})
	return serverErr
}

// wantRejected checks that err is the sentinel and carries its metric label.
func wantRejected(t *testing.T, err, sentinel error, label string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error = %v, want %v", err, sentinel)
	}
	if got := Reason(err); got != label {
		t.Errorf("Reason(%v) = %q, want %q", err, got, label)
	}
}

func TestChainHandshakeAcrossNodes(t *testing.T) {
	f := newChainFixture(t, "chain-happy")
	expected := []Identity{f.server.id}

	clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, expected)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if a, b := f.a.registry.calls.Load(), f.b.registry.calls.Load(); a != 1 || b != 1 {
		t.Fatalf("registry calls after the first handshake: node A %d, node B %d, want 1 each", a, b)
	}

	// The second handshake at the same checkpoint is served from the
	// cache: no registry call and so no pairing.
	clientErr, serverErr = handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, expected)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("warm handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if a, b := f.a.registry.calls.Load(), f.b.registry.calls.Load(); a != 1 || b != 1 {
		t.Errorf("registry calls after the warm handshake: node A %d, node B %d, want 1 each", a, b)
	}

	// The pod watch reporting the client deleted drops its cached verdict.
	f.b.verifier.ForgetPod(string(f.client.pod.UID))
	if n := f.b.verifier.CachedPeers(); n != 0 {
		t.Errorf("node B caches %d peers after ForgetPod, want 0", n)
	}
	clientErr, serverErr = handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, expected)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake after ForgetPod failed: client %v, server %v", clientErr, serverErr)
	}
	if b := f.b.registry.calls.Load(); b != 2 {
		t.Errorf("node B registry calls after ForgetPod = %d, want 2", b)
	}

	// A newer trusted checkpoint invalidates the cached verdicts, because
	// a new entry may revoke the peer: the registry is asked again.
	extra := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-happy", Name: "extra", ServiceAccount: "extra"})
	register(t, f.tb, f.a.workloads, extra)
	f.a.view.refresh(t)
	f.b.view.refresh(t)
	clientErr, serverErr = handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, expected)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake after the log grew failed: client %v, server %v", clientErr, serverErr)
	}
	if a, b := f.a.registry.calls.Load(), f.b.registry.calls.Load(); a != 2 || b != 3 {
		t.Errorf("registry calls after the log grew: node A %d, node B %d, want 2 and 3", a, b)
	}
}

func TestChainRejectsTokenCopiedToAnotherIP(t *testing.T) {
	f := newChainFixture(t, "chain-copied")
	thief := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-copied", Name: "thief", ServiceAccount: "thief"})

	// The curator rejects a second registration of the stolen token, so
	// the thief cannot bind it to its own IP.
	obj, err := f.tb.Client().CoreV1().Pods("chain-copied").Get(context.Background(), "thief", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stolenWL := &workload{namespace: obj.Namespace, name: obj.Name, uid: obj.UID, ip: thief.IP, identity: f.client.id}
	stolenKey := mintAs(t, thief, f.client.token, f.client.id)
	if _, _, err := f.a.workloads.register(context.Background(), stolenWL, f.client.token, stolenKey.key, stolenKey.spki(t)); err == nil {
		t.Fatal("the curator registered a copied token for another IP")
	}

	// The thief presents the victim's certificate, key and staple from its
	// own IP.
	wantRejected(t, f.attackServer(t, f.client, thief), ErrPodMismatch, "pod_mismatch")
}

func TestChainRejectsTokenWithAnotherTLSKey(t *testing.T) {
	f := newChainFixture(t, "chain-tlskey")
	// The token and the staple are the client's, from the client's IP, but
	// the TLS key is not the registered one.
	attacker := withStaple(mintWorkload(t, f.client.pod, f.client.token), f.client)
	metrics := prometheus.NewRegistry()
	serverV, err := NewVerifier(VerifierOptions{
		Client: f.tb.Client(), TrustDomain: testbed.TrustDomain, Audience: curator.DefaultAudience,
		Registry: f.b.registry, Registerer: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, serverErr := handshake(t, f.a.verifier, serverV, attacker, f.client.pod, f.server, nil)
	wantRejected(t, serverErr, ErrRegistrationKey, "registration_key")
	if f.b.registry.calls.Load() != 1 {
		t.Errorf("node B registry calls = %d, want 1: the key check is the registry's", f.b.registry.calls.Load())
	}
	// The rejection is counted under its own reason label.
	rejected := `
# HELP mazu_peer_verifications_total Peer verifications in TLS handshakes, by result and failure reason.
# TYPE mazu_peer_verifications_total counter
mazu_peer_verifications_total{reason="registration_key",result="rejected"} 1
`
	if err := testutil.GatherAndCompare(metrics, strings.NewReader(rejected), "mazu_peer_verifications_total"); err != nil {
		t.Error(err)
	}
}

// TestChainRejectsDeletedPodToken replays a deleted pod's certificate from
// a new pod at the same IP once kube-apiserver's 10 s token cache has
// passed: TokenReview rejects the token and the verdict cached from before
// the deletion is dropped.
func TestChainRejectsDeletedPodToken(t *testing.T) {
	f := newChainFixture(t, "chain-deleted")
	victimIP := f.client.pod.IP
	if clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, nil); clientErr != nil || serverErr != nil {
		t.Fatalf("victim handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if n := f.b.verifier.CachedPeers(); n != 1 {
		t.Fatalf("node B caches %d peers, want the victim", n)
	}
	if err := f.tb.DeletePod(context.Background(), f.client.pod); err != nil {
		t.Fatal(err)
	}
	// Both kube-apiserver's token cache and the verifier's liveness cache
	// last 10 s.
	time.Sleep(DefaultLivenessTTL + time.Second)
	squatter := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-deleted", Name: "squatter", ServiceAccount: "client", IP: victimIP})
	err := f.attackServer(t, f.client, squatter)
	wantRejected(t, err, ErrTokenNotLive, "token_not_live")
	if n := f.b.verifier.CachedPeers(); n != 0 {
		t.Errorf("node B caches %d peers after the token failed review, want 0", n)
	}
}

func TestChainRejectsTokenAfterIPReuse(t *testing.T) {
	f := newChainFixture(t, "chain-reuse")
	victimIP := f.client.pod.IP
	// A handshake by the victim makes kube-apiserver cache its token as
	// valid for 10 s.
	if clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, nil); clientErr != nil || serverErr != nil {
		t.Fatalf("victim handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if err := f.tb.DeletePod(context.Background(), f.client.pod); err != nil {
		t.Fatal(err)
	}
	// A new pod takes the victim's address at once, inside the API
	// server's review cache, and replays the victim's whole identity. Node
	// B's pod watch would call ForgetPod, so a verifier that never saw the
	// victim stands for it here.
	squatter := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-reuse", Name: "squatter", ServiceAccount: "client", IP: victimIP})
	fresh := newChainVerifier(t, f.tb, f.b.registry)
	_, serverErr := handshake(t, f.a.verifier, fresh, f.client, squatter, f.server, nil)
	wantRejected(t, serverErr, ErrPodMismatch, "pod_mismatch")
}

func TestChainRejectsForgedToken(t *testing.T) {
	f := newChainFixture(t, "chain-forged")
	forged := forgeToken(t, f.client.token)
	attacker := withStaple(mintWorkload(t, f.client.pod, forged), f.client)
	wantRejected(t, f.attackServer(t, attacker, f.client.pod), ErrTokenSignature, "token_signature")
}

func TestChainRejectsWrongAudience(t *testing.T) {
	f := newChainFixture(t, "chain-audience")
	wrong := withStaple(newWorkload(t, f.tb, f.client.pod, "istio-ca"), f.client)
	wantRejected(t, f.attackServer(t, wrong, f.client.pod), ErrTokenAudience, "token_audience")
}

func TestChainRejectsExpiredToken(t *testing.T) {
	f := newChainFixture(t, "chain-expired")
	// Workloads ends the certificate with the token. The holder of the key
	// re-mints it to outlive the token, with the registered key and staple.
	der, err := NewCertificate(f.client.key, f.client.id, f.client.token, time.Now().Add(3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	extended := *f.client
	extended.cert.Certificate = [][]byte{der}
	serverV := newChainVerifier(t, f.tb, f.b.registry)
	// The token lasts an hour, so a clock 90 minutes ahead finds it expired.
	serverV.now = func() time.Time { return time.Now().Add(90 * time.Minute) }
	_, serverErr := handshake(t, f.a.verifier, serverV, &extended, f.client.pod, f.server, nil)
	wantRejected(t, serverErr, ErrTokenExpired, "token_expired")
}

func TestChainRejectsUnexpectedIdentity(t *testing.T) {
	f := newChainFixture(t, "chain-unexpected")
	want := Identity{TrustDomain: testbed.TrustDomain, Namespace: "chain-unexpected", ServiceAccount: "payments"}
	clientErr, _ := handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, []Identity{want})
	wantRejected(t, clientErr, ErrIdentityMismatch, "identity_mismatch")
}

func TestChainRejectsUnregisteredPeer(t *testing.T) {
	f := newChainFixture(t, "chain-unregistered")
	// A valid token for the mesh audience that was never registered.
	fresh := newWorkload(t, f.tb, f.client.pod, curator.DefaultAudience)
	t.Run("another ID's staple", func(t *testing.T) {
		err := f.attackServer(t, withStaple(fresh, f.client), f.client.pod)
		wantRejected(t, err, ErrRegistrationMissing, "registration_missing")
	})
	t.Run("no staple", func(t *testing.T) {
		bare := *fresh
		bare.cert.SignedCertificateTimestamps = nil
		wantRejected(t, f.attackServer(t, &bare, f.client.pod), ErrRegistrationMissing, "registration_missing")
	})
}

// TestChainRejectsSupersededStaple renews the client's token, which
// registers a new ID and revokes the old one, then replays the old
// certificate and staple. The replayed proof is still validly cosigned, so
// only the node's newer checkpoint can reject it.
func TestChainRejectsSupersededStaple(t *testing.T) {
	f := newChainFixture(t, "chain-renewed")
	old := f.client
	if clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, old, old.pod, f.server, nil); clientErr != nil || serverErr != nil {
		t.Fatalf("handshake before renewal failed: client %v, server %v", clientErr, serverErr)
	}

	renew(t, f.a.workloads, old.pod)
	renewed := currentIdentity(t, f.a.workloads, old.pod)
	if renewed.token == old.token {
		t.Fatal("renewal kept the old token")
	}
	f.a.view.refresh(t)
	f.b.view.refresh(t)

	// Node B verified the old certificate before, and its cached verdict
	// must not outlive the checkpoint that revokes it.
	_, serverErr := handshake(t, f.a.verifier, f.b.verifier, old, old.pod, f.server, nil)
	wantRejected(t, serverErr, ErrRegistrationSuperseded, "registration_superseded")
	_, serverErr = handshake(t, f.a.verifier, newChainVerifier(t, f.tb, f.b.registry), old, old.pod, f.server, nil)
	wantRejected(t, serverErr, ErrRegistrationSuperseded, "registration_superseded")

	clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, renewed, renewed.pod, f.server, nil)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake with the renewed identity failed: client %v, server %v", clientErr, serverErr)
	}
}

// TestChainForgetRevokesRegistration drops the client's identity with
// Forget, as the agent does when a pod leaves the mesh, then replays its certificate and
// staple: the log's revocation must reject it even though the pod and its
// token are still live.
func TestChainForgetRevokesRegistration(t *testing.T) {
	f := newChainFixture(t, "chain-forget")
	old := f.client
	if clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, old, old.pod, f.server, nil); clientErr != nil || serverErr != nil {
		t.Fatalf("handshake before forgetting failed: client %v, server %v", clientErr, serverErr)
	}

	if err := f.a.workloads.Forget(context.Background(), old.pod.UID); err != nil {
		t.Fatalf("forget %s: %v", old.pod.Name, err)
	}
	if _, err := f.a.workloads.Certificate(old.pod.UID); err == nil {
		t.Fatal("the forgotten pod still has a certificate")
	}
	f.b.view.refresh(t)

	_, serverErr := handshake(t, f.a.verifier, f.b.verifier, old, old.pod, f.server, nil)
	wantRejected(t, serverErr, ErrRegistrationSuperseded, "registration_superseded")
	if err := f.a.workloads.Forget(context.Background(), old.pod.UID); err != nil {
		t.Fatalf("forgetting a forgotten pod: %v", err)
	}
}

// TestChainRestoresSavedIdentity registers a pod with a Workloads that
// saves identities, then registers it again with a second Workloads on the
// same folder, as the next agent after a restart does. The second must take
// over the registration, not append one, and its certificate must pass a
// handshake. A third Workloads, which never held the pod, then calls Forget
// for it and must revoke the saved registration.
func TestChainRestoresSavedIdentity(t *testing.T) {
	f := newChainFixture(t, "chain-saved")
	dir := t.TempDir()
	newWorkloads := func() *Workloads {
		w, err := NewWorkloads(WorkloadsOptions{
			Client: f.tb.Client(), Curator: &curator.Client{URL: f.mesh.URL}, Policy: f.mesh.Policy, CRS: f.mesh.CRS,
			TrustDomain: testbed.TrustDomain, Audience: curator.DefaultAudience, StateDir: dir,
		})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	pod := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-saved", Name: "saved", ServiceAccount: "saved"})
	first := newWorkloads()
	register(t, f.tb, first, pod)
	firstID := idOf(t, first, pod)
	size := logSize(t, f.mesh)

	second := newWorkloads()
	restored := register(t, f.tb, second, pod)
	if id := idOf(t, second, pod); id != firstID {
		t.Fatalf("the second Workloads registered ID %x, want the saved ID %x", id[:8], firstID[:8])
	}
	if n := logSize(t, f.mesh); n != size {
		t.Fatalf("the log grew from %d to %d entries when the saved identity was restored", size, n)
	}
	f.b.view.refresh(t)
	if clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, restored, pod, f.server, nil); clientErr != nil || serverErr != nil {
		t.Fatalf("handshake with the restored identity failed: client %v, server %v", clientErr, serverErr)
	}

	third := newWorkloads()
	if err := third.Forget(context.Background(), pod.UID); err != nil {
		t.Fatalf("forget the saved identity: %v", err)
	}
	f.b.view.refresh(t)
	_, serverErr := handshake(t, f.a.verifier, f.b.verifier, restored, pod, f.server, nil)
	wantRejected(t, serverErr, ErrRegistrationSuperseded, "registration_superseded")
	if _, err := os.Stat(filepath.Join(dir, string(pod.UID)+".json")); !os.IsNotExist(err) {
		t.Errorf("the saved identity is still on disk after Forget: %v", err)
	}
}

// idOf returns the ID under which w registered pod.
func idOf(t *testing.T, w *Workloads, pod *testbed.Pod) curator.ID {
	t.Helper()
	for id, uid := range w.IDs() {
		if uid == pod.UID {
			return id
		}
	}
	t.Fatalf("pod %s has no ID", pod.Name)
	return curator.ID{}
}

// logSize returns the size of the curator's latest cosigned checkpoint.
func logSize(t *testing.T, mesh *meshtest.Curator) int64 {
	t.Helper()
	raw, err := (&curator.Client{URL: mesh.URL}).Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cp, err := mesh.Policy.Open(raw, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return cp.Tree.N
}

// renew runs Workloads' token renewal for pod now, as Run does at 80% of
// the token's lifetime.
func renew(t testing.TB, w *Workloads, pod *testbed.Pod) {
	t.Helper()
	w.mu.Lock()
	wl := w.pods[pod.UID]
	w.mu.Unlock()
	if wl == nil {
		t.Fatalf("pod %s is not enrolled", pod.Name)
	}
	if err := w.renew(context.Background(), wl); err != nil {
		t.Fatalf("renew %s: %v", pod.Name, err)
	}
}

func TestChainRejectsCheckpointWithoutQuorum(t *testing.T) {
	f := newChainFixture(t, "chain-quorum")
	var strangers []string
	for i := range 2 {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		strangers = append(strangers, curator.NewCosignatureSigner("stranger-"+string(rune('a'+i))+".mazu.test", key).VerifierKey())
	}
	unknown, err := curator.NewPolicy(meshtest.Origin, f.mesh.LogVKey, strangers, 0)
	if err != nil {
		t.Fatal(err)
	}
	// NewPolicy rejects a quorum above the number of witnesses, so the
	// over-demanding policy is built directly.
	demanding := *f.mesh.Policy
	demanding.Quorum = len(demanding.Witnesses) + 1

	for _, tc := range []struct {
		name   string
		policy *curator.Policy
	}{
		{"witnesses not in the policy", unknown},
		{"quorum above the cosignatures", &demanding},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newCountingRegistry(t, tc.policy, f.mesh, &nodeView{})
			_, serverErr := handshake(t, f.a.verifier, newChainVerifier(t, f.tb, reg), f.client, f.client.pod, f.server, nil)
			wantRejected(t, serverErr, ErrCheckpointQuorum, "checkpoint_quorum")
		})
	}
}

// TestChainRejectsForkedLog runs a second curator with the same log key,
// CRS and witness keys but its own contents: a split view that the witness
// policy cannot catch, because the witnesses are compromised too. Node B
// trusts fork A's checkpoint; the client staples a proof from fork B.
func TestChainRejectsForkedLog(t *testing.T) {
	f := newChainFixture(t, "chain-fork")
	forkB := startMesh(t, f.tb, f.mesh)
	forkNode := newMeshNode(t, f.tb, forkB, f.a.node)
	trustedA := f.b.view.trusted()
	logKey, err := note.NewVerifier(f.mesh.LogVKey)
	if err != nil {
		t.Fatal(err)
	}

	// Each registration of one pod adds a registration and a state entry.
	// Fork B grows one pod at a time, to below, at and above fork A's size.
	var pods []*testbed.Pod
	for i := range 3 {
		pod := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-fork", Name: "forked-" + string(rune('a'+i)), ServiceAccount: "forked"})
		pods = append(pods, pod)
	}
	for i, pod := range pods {
		forked := register(t, f.tb, forkNode.workloads, pod)
		st, err := ParseStaple(forked.cert.SignedCertificateTimestamps[0])
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := curator.ParseBundle(st.Bundle)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := f.mesh.Policy.Open(bundle.Checkpoint, time.Now())
		if err != nil {
			t.Fatalf("fork B's checkpoint does not pass the witness policy: %v", err)
		}
		t.Logf("fork B registration %d: checkpoint size %d, node B trusts size %d", i, cp.Tree.N, trustedA.Tree.N)

		_, serverErr := handshake(t, f.a.verifier, newChainVerifier(t, f.tb, f.b.registry), forked, pod, f.server, nil)
		if cp.Tree.N > trustedA.Tree.N {
			// Node B's curator cannot serve the tiles of fork B's larger
			// tree, which the registry cannot tell from an outage.
			wantRejected(t, serverErr, ErrCuratorUnavailable, "curator_unavailable")
			continue
		}
		wantRejected(t, serverErr, ErrLogFork, "log_fork")
		var fork *curator.ForkError
		if !errors.As(serverErr, &fork) {
			t.Fatalf("error %v carries no ForkError evidence", serverErr)
		}
		for _, msg := range [][]byte{fork.Old, fork.New} {
			if _, err := note.Open(msg, note.VerifierList(logKey)); err != nil {
				t.Errorf("evidence note does not verify under the log key: %v", err)
			}
		}
		if cp.Tree.N < trustedA.Tree.N {
			// The proof from A's tree does not link B's root.
			if len(fork.Proof) == 0 {
				t.Error("evidence has no consistency proof")
			} else if tlog.CheckTree(fork.Proof, trustedA.Tree.N, trustedA.Tree.Hash, cp.Tree.N, cp.Tree.Hash) == nil {
				t.Error("evidence proof links the two trees")
			}
		}
	}
}

// TestChainRenewalKeepsOpenConnection renews both identities while a TLS
// connection is open: the connection keeps working, and a new connection
// uses the new certificates.
func TestChainRenewalKeepsOpenConnection(t *testing.T) {
	f := newChainFixture(t, "chain-rotate")
	var ln net.Listener
	if err := f.server.pod.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(f.server.pod.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	serverCfg := f.b.verifier.ServerConfig(func(netip.Addr) (*tls.Certificate, error) { return f.b.workloads.Certificate(f.server.pod.UID) })
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer raw.Close()
				tc := tls.Server(raw, serverCfg)
				buf := make([]byte, 64)
				for {
					_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
					n, err := tc.Read(buf)
					if err != nil {
						return
					}
					if _, err := tc.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	dial := func() *tls.Conn {
		t.Helper()
		var raw net.Conn
		if err := f.client.pod.Do(func() (err error) {
			raw, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		cfg := f.a.verifier.ClientConfig(func() (*tls.Certificate, error) { return f.a.workloads.Certificate(f.client.pod.UID) }, f.server.pod.IP, []Identity{f.server.id})
		tc := tls.Client(raw, cfg)
		t.Cleanup(func() { tc.Close() })
		return tc
	}
	echo := func(tc *tls.Conn, msg string) {
		t.Helper()
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := tc.Write([]byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo of %q = %q, %v", msg, buf, err)
		}
	}

	first := dial()
	echo(first, "before renewal")
	firstServerCert := first.ConnectionState().PeerCertificates[0].Raw

	renew(t, f.a.workloads, f.client.pod)
	renew(t, f.b.workloads, f.server.pod)
	f.a.view.refresh(t)
	f.b.view.refresh(t)

	echo(first, "after renewal")
	second := dial()
	echo(second, "new connection")
	if string(second.ConnectionState().PeerCertificates[0].Raw) == string(firstServerCert) {
		t.Error("the new connection still got the server's old certificate")
	}
	echo(first, "old connection still open")
}

// stapleCheckpoint returns the cosigned checkpoint of w's staple.
func stapleCheckpoint(t testing.TB, policy *curator.Policy, w *testWorkload) *curator.Checkpoint {
	t.Helper()
	st, err := ParseStaple(w.cert.SignedCertificateTimestamps[0])
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := curator.ParseBundle(st.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := policy.Open(bundle.Checkpoint, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// TestChainAcceptsStapleOlderThanNode covers a peer whose staple predates
// the node's checkpoint while the log has grown past both, which the
// registry resolves with an online check.
func TestChainAcceptsStapleOlderThanNode(t *testing.T) {
	f := newChainFixture(t, "chain-stale")
	if stapled, trusted := stapleCheckpoint(t, f.mesh.Policy, f.client).Tree.N, f.b.view.trusted().Tree.N; stapled >= trusted {
		t.Fatalf("client's staple is at size %d, node B trusts %d: want it older", stapled, trusted)
	}
	extra := testbed.NewPod(t, f.tb, f.a.node, testbed.PodSpec{Namespace: "chain-stale", Name: "extra", ServiceAccount: "extra"})
	register(t, f.tb, f.a.workloads, extra)

	clientErr, serverErr := handshake(t, f.a.verifier, f.b.verifier, f.client, f.client.pod, f.server, nil)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake with a staple older than the node's checkpoint failed: client %v, server %v", clientErr, serverErr)
	}
}

// TestChainCuratorOutageIsNotFork checks a staple newer than the node's
// checkpoint while the curator is unreachable: the handshake fails, but as
// an outage, not as a fork.
func TestChainCuratorOutageIsNotFork(t *testing.T) {
	f := newChainFixture(t, "chain-outage")
	// Node A trusts the checkpoint of the client's registration; the
	// server registered later.
	view := &nodeView{cp: stapleCheckpoint(t, f.mesh.Policy, f.client)}
	if server := stapleCheckpoint(t, f.mesh.Policy, f.server); server.Tree.N <= view.cp.Tree.N {
		t.Fatalf("server's staple is at size %d, node A trusts %d: want it newer", server.Tree.N, view.cp.Tree.N)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()

	for _, tc := range []struct {
		name, url string
		want      error
	}{
		{"curator reachable", f.mesh.URL, nil},
		{"curator unreachable", deadURL, ErrCuratorUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := NewCuratorRegistry(f.mesh.Policy, f.mesh.CRS, &curator.Client{URL: tc.url}, view.trusted)
			if err != nil {
				t.Fatal(err)
			}
			clientErr, _ := handshake(t, newChainVerifier(t, f.tb, reg), f.b.verifier, f.client, f.client.pod, f.server, nil)
			if tc.want == nil {
				if clientErr != nil {
					t.Fatalf("client error = %v, want none", clientErr)
				}
				return
			}
			wantRejected(t, clientErr, tc.want, "curator_unavailable")
		})
	}
}
