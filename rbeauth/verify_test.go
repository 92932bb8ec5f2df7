package rbeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

func TestMain(m *testing.M) {
	testbed.Main(m, testbed.Options{})
}

const testAudience = "mazu"

// memoryRegistry replaces the curator in tests of the Kubernetes
// checks: it accepts exactly the (token, IP, TLS key) tuples registered in it.
type memoryRegistry struct {
	mu      sync.Mutex
	entries map[[32]byte]memoryEntry
}

type memoryEntry struct {
	ip  netip.Addr
	key [32]byte
}

func (r *memoryRegistry) register(token string, ip netip.Addr, spki []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.entries == nil {
		r.entries = map[[32]byte]memoryEntry{}
	}
	r.entries[sha256.Sum256([]byte(token))] = memoryEntry{ip: ip, key: sha256.Sum256(spki)}
}

func (r *memoryRegistry) VerifyRegistration(_ context.Context, c RegistrationClaim) (Checkpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[c.ID]
	if !ok {
		return Checkpoint{}, ErrRegistrationMissing
	}
	if e.ip != c.PeerIP || e.key != sha256.Sum256(c.TLSPublicKey) {
		return Checkpoint{}, ErrRegistrationKey
	}
	return Checkpoint{Size: 1}, nil
}

// testWorkload is a test pod's identity material.
type testWorkload struct {
	pod   *testbed.Pod
	token string
	key   *ecdsa.PrivateKey
	cert  tls.Certificate
	id    Identity
}

func newWorkload(t *testing.T, tb *testbed.Testbed, pod *testbed.Pod, audience string) *testWorkload {
	t.Helper()
	token, err := tb.RequestToken(context.Background(), pod, audience, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return mintWorkload(t, pod, token)
}

func mintWorkload(t *testing.T, pod *testbed.Pod, token string) *testWorkload {
	t.Helper()
	return mintAs(t, pod, token, Identity{TrustDomain: testbed.TrustDomain, Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount})
}

// mintAs mints a certificate for pod that claims id, as an attacker holding
// someone else's token would.
func mintAs(t *testing.T, pod *testbed.Pod, token string, id Identity) *testWorkload {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := NewCertificate(key, id, token, time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &testWorkload{
		pod: pod, token: token, key: key, id: id,
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, SignedCertificateTimestamps: [][]byte{[]byte("bundle")}},
	}
}

func (w *testWorkload) spki(t *testing.T) []byte {
	t.Helper()
	leaf, err := x509Parse(w.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.RawSubjectPublicKeyInfo
}

func newTestVerifier(t *testing.T, tb *testbed.Testbed, reg Registry) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierOptions{Client: tb.Client(), TrustDomain: testbed.TrustDomain, Audience: testAudience, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// handshake runs one TLS handshake from inside the source pod's network
// namespace to the server testWorkload's pod, and returns each side's error.
func handshake(t *testing.T, clientV, serverV *Verifier, client *testWorkload, source *testbed.Pod, server *testWorkload, expected []Identity) (clientErr, serverErr error) {
	t.Helper()
	var ln net.Listener
	if err := server.pod.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(server.pod.IP.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, serverV.ServerConfig(func(netip.Addr) (*tls.Certificate, error) { return &server.cert, nil }))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = tc.HandshakeContext(ctx)
		if err == nil {
			// Echo one byte, so the client learns the server's verdict.
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1)
			if _, err = tc.Read(buf); err == nil {
				_, err = tc.Write(buf)
			}
		}
		serverDone <- err
	}()

	var raw net.Conn
	if err := source.Do(func() (err error) {
		raw, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, clientV.ClientConfig(func() (*tls.Certificate, error) { return &client.cert, nil }, server.pod.IP, expected))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clientErr = tc.HandshakeContext(ctx)
	if clientErr == nil {
		// A TLS 1.3 client finishes before the server has checked its
		// certificate; the echo surfaces the server's rejection as an alert.
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, clientErr = tc.Write([]byte{1}); clientErr == nil {
			_, clientErr = tc.Read(make([]byte, 1))
		}
	}
	tc.Close()
	return clientErr, <-serverDone
}

type fixture struct {
	tb             *testbed.Testbed
	nodeA, nodeB   *testbed.Node
	client, server *testWorkload
	registry       *memoryRegistry
}

func newFixture(t *testing.T, namespace string) *fixture {
	t.Helper()
	tb := testbed.Get(t)
	f := &fixture{tb: tb, registry: &memoryRegistry{}}
	f.nodeA = testbed.NewNode(t, tb, namespace+"-a")
	f.nodeB = testbed.NewNode(t, tb, namespace+"-b")
	clientPod := testbed.NewPod(t, tb, f.nodeA, testbed.PodSpec{Namespace: namespace, Name: "client", ServiceAccount: "client"})
	serverPod := testbed.NewPod(t, tb, f.nodeB, testbed.PodSpec{Namespace: namespace, Name: "server", ServiceAccount: "server"})
	f.client = newWorkload(t, tb, clientPod, testAudience)
	f.server = newWorkload(t, tb, serverPod, testAudience)
	f.registry.register(f.client.token, clientPod.IP, f.client.spki(t))
	f.registry.register(f.server.token, serverPod.IP, f.server.spki(t))
	return f
}

func TestHandshakeAcrossNodes(t *testing.T) {
	f := newFixture(t, "happy")
	clientV, serverV := newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry)
	clientErr, serverErr := handshake(t, clientV, serverV, f.client, f.client.pod, f.server, []Identity{f.server.id})
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if clientV.CachedPeers() != 1 || serverV.CachedPeers() != 1 {
		t.Errorf("cached peers: client %d, server %d, want 1 each", clientV.CachedPeers(), serverV.CachedPeers())
	}
	// A second handshake is served from the cache, so it must not consult
	// the registry again.
	f.registry.mu.Lock()
	f.registry.entries = nil
	f.registry.mu.Unlock()
	clientErr, serverErr = handshake(t, clientV, serverV, f.client, f.client.pod, f.server, []Identity{f.server.id})
	if clientErr != nil || serverErr != nil {
		t.Fatalf("warm handshake failed: client %v, server %v", clientErr, serverErr)
	}
}

func TestRejectsTokenCopiedToAnotherIP(t *testing.T) {
	f := newFixture(t, "copied")
	thief := testbed.NewPod(t, f.tb, f.nodeA, testbed.PodSpec{Namespace: "copied", Name: "thief", ServiceAccount: "thief"})
	stolen := mintAs(t, thief, f.client.token, f.client.id)
	f.registry.register(stolen.token, thief.IP, stolen.spki(t))
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), stolen, thief, f.server, []Identity{f.server.id})
	if !errors.Is(serverErr, ErrPodMismatch) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrPodMismatch)
	}
}

func TestRejectsDeletedPodToken(t *testing.T) {
	f := newFixture(t, "deleted")
	other := testbed.NewPod(t, f.tb, f.nodeA, testbed.PodSpec{Namespace: "deleted", Name: "other", ServiceAccount: "client"})
	if err := f.tb.DeletePod(context.Background(), f.client.pod); err != nil {
		t.Fatal(err)
	}
	// kube-apiserver caches a successful token review for 10 s; past that
	// the review itself rejects the token.
	time.Sleep(11 * time.Second)
	replay := mintAs(t, other, f.client.token, f.client.id)
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), replay, other, f.server, nil)
	if !errors.Is(serverErr, ErrTokenNotLive) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrTokenNotLive)
	}
}

func TestRejectsTokenAfterIPReuse(t *testing.T) {
	f := newFixture(t, "reuse")
	victimIP := f.client.pod.IP
	// A handshake by the victim makes kube-apiserver cache its token as
	// valid for 10 s.
	if clientErr, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), f.client, f.client.pod, f.server, nil); clientErr != nil || serverErr != nil {
		t.Fatalf("victim handshake failed: client %v, server %v", clientErr, serverErr)
	}
	if err := f.tb.DeletePod(context.Background(), f.client.pod); err != nil {
		t.Fatal(err)
	}
	// A new pod takes the victim's address at once, inside the API
	// server's 10 s review cache, so only the pod lookup can catch it.
	squatter := testbed.NewPod(t, f.tb, f.nodeA, testbed.PodSpec{Namespace: "reuse", Name: "squatter", ServiceAccount: "client", IP: victimIP})
	replay := mintAs(t, squatter, f.client.token, f.client.id)
	f.registry.register(replay.token, victimIP, replay.spki(t))
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), replay, squatter, f.server, nil)
	if !errors.Is(serverErr, ErrPodMismatch) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrPodMismatch)
	}
}

func TestRejectsForgedToken(t *testing.T) {
	f := newFixture(t, "forged")
	forged := forgeToken(t, f.client.token)
	attacker := mintWorkload(t, f.client.pod, forged)
	f.registry.register(forged, f.client.pod.IP, attacker.spki(t))
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), attacker, f.client.pod, f.server, nil)
	if !errors.Is(serverErr, ErrTokenSignature) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrTokenSignature)
	}
}

func TestRejectsWrongAudience(t *testing.T) {
	f := newFixture(t, "audience")
	wrong := newWorkload(t, f.tb, f.client.pod, "istio-ca")
	f.registry.register(wrong.token, f.client.pod.IP, wrong.spki(t))
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), wrong, f.client.pod, f.server, nil)
	if !errors.Is(serverErr, ErrTokenAudience) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrTokenAudience)
	}
}

func TestRejectsExpiredToken(t *testing.T) {
	f := newFixture(t, "expired")
	serverV := newTestVerifier(t, f.tb, f.registry)
	// The token lasts an hour and the certificate two, so a clock 90 minutes
	// ahead finds only the token expired.
	serverV.now = func() time.Time { return time.Now().Add(90 * time.Minute) }
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), serverV, f.client, f.client.pod, f.server, nil)
	if !errors.Is(serverErr, ErrTokenExpired) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrTokenExpired)
	}
}

func TestRejectsUnexpectedIdentity(t *testing.T) {
	f := newFixture(t, "unexpected")
	want := Identity{TrustDomain: testbed.TrustDomain, Namespace: "unexpected", ServiceAccount: "payments"}
	clientErr, _ := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), f.client, f.client.pod, f.server, []Identity{want})
	if !errors.Is(clientErr, ErrIdentityMismatch) {
		t.Fatalf("client error = %v, want %v", clientErr, ErrIdentityMismatch)
	}
}

func TestRejectsUnregisteredPeer(t *testing.T) {
	f := newFixture(t, "unregistered")
	fresh := newWorkload(t, f.tb, f.client.pod, testAudience)
	_, serverErr := handshake(t, newTestVerifier(t, f.tb, f.registry), newTestVerifier(t, f.tb, f.registry), fresh, f.client.pod, f.server, nil)
	if !errors.Is(serverErr, ErrRegistrationMissing) {
		t.Fatalf("server error = %v, want %v", serverErr, ErrRegistrationMissing)
	}
}

// forgeToken re-signs a real token's claims with a key the cluster never
// issued, keeping the header's key id.
func forgeToken(t *testing.T, real string) string {
	t.Helper()
	parts := strings.Split(real, ".")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
}
