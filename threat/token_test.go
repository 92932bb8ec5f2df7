package threat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// victimSetup is a server pod "web" on the second agent's node, a client
// pod on the first agent's node, and an attacker pod "mallory" on the bare
// node, all in one new ambient namespace.
type victimSetup struct {
	ns                   string
	web, client, mallory *testbed.Pod
}

// newVictimSetup creates a victimSetup and runs its positive control: the
// genuine client reaches web over HBONE, and web's agent counts the
// connections as mutual TLS.
func newVictimSetup(t *testing.T, m *mesh, prefix string) victimSetup {
	t.Helper()
	s := victimSetup{ns: newNamespace(t, m, prefix, true)}
	s.web = newAmbientPod(t, m, 1, testbed.PodSpec{
		Namespace: s.ns, Name: "web", ServiceAccount: "web", Labels: map[string]string{"app": "web"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
	})
	startHTTPServer(t, s.web, 8080)
	s.client = newAmbientPod(t, m, 0, testbed.PodSpec{Namespace: s.ns, Name: "client", ServiceAccount: "client"})
	s.mallory = newBarePod(t, m, nil, testbed.PodSpec{Namespace: s.ns, Name: "mallory", ServiceAccount: "mallory"})

	before := m.agents[1].inboundMTLS(t, s.web)
	expectOK(t, s.client, webURL(s.web), 3, "hello from web")
	if got := m.agents[1].inboundMTLS(t, s.web) - before; got != 3 {
		t.Fatalf("positive control: web's agent counted %v inbound HBONE connections, want 3", got)
	}
	return s
}

// webURL is the URL of the http-server role on port 8080 of pod, by pod IP.
func webURL(pod *testbed.Pod) string { return "http://" + pod.IP.String() + ":8080/" }

// TestAttackTokenReplayFromOtherIP replays a leaked token from another pod.
// Attack: mallory harvests the client's certificate and stapled proof from
// one handshake with the client's HBONE port, wraps the client's registered
// token in a certificate of its own, and connects to web's HBONE port from
// its own IP. Defence: web's agent checks that the token's pod has the
// peer's IP (and the registration binds the IP), so it rejects the
// handshake with reason pod_mismatch.
func TestAttackTokenReplayFromOtherIP(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	s := newVictimSetup(t, m, "replay")

	leaked := harvestIdentity(t, s.mallory, s.client)
	cert := mintCertificate(t, podIdentity(s.client), leaked.Token)
	for _, alpn := range [][]string{{rbeauth.ALPNRBE}, {rbeauth.ALPN}} {
		expectProbeRejected(t, m.agents[1], s.mallory, hboneAddr(s.web), cert, leaked.Staple, alpn, "pod_mismatch")
	}
}

// TestAttackTokenWithOtherTLSKey replays a leaked token from the victim's
// own IP with another TLS key. Attack: a process in the client pod's network
// namespace, outside the agent that holds the pod's TLS key (for example a
// compromised container), harvests the client's registered token and
// stapled proof, wraps the token in a certificate with a key of its own,
// and connects to web's HBONE port from the client's IP. Token, identity,
// liveness and pod IP all check out. Defence: the registration in the
// witnessed log binds the TLS key (and the RBE key derived from token, IP
// and TLS key), so web's agent rejects the handshake with reason
// registration_key.
func TestAttackTokenWithOtherTLSKey(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	s := newVictimSetup(t, m, "tlskey")

	leaked := harvestIdentity(t, s.mallory, s.client)
	cert := mintCertificate(t, podIdentity(s.client), leaked.Token)
	expectProbeRejected(t, m.agents[1], s.client, hboneAddr(s.web), cert, leaked.Staple, []string{rbeauth.ALPNRBE}, "registration_key")

	// The genuine client, whose agent holds the registered key, still
	// gets through from the same IP.
	expectOK(t, s.client, webURL(s.web), 1, "hello from web")
}

// TestAttackTokenAfterIPReuse replays a dead pod's token from its reused
// IP. Attack: mallory harvests the token and stapled proof of an enrolled
// pod "victim". The victim pod is deleted, and a new pod "reuse" on the
// same node gets the same IP and is enrolled in the mesh in its own right.
// A process in the new pod's network namespace presents the victim's token
// in a certificate of its own, with the victim's staple, to web's HBONE
// port. Defence: web's agent checks token liveness (TokenReview) and that
// the token's pod exists with the token's UID and the peer's IP. The
// victim's pod is gone, so the handshake is rejected with reason
// pod_mismatch while TokenReview's caches still accept the token, and with
// token_not_live after they expire. The test probes until it has seen the
// latter.
// Positive control: the new pod's own traffic, under its own identity,
// gets through from the same IP.
func TestAttackTokenAfterIPReuse(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	s := newVictimSetup(t, m, "ipreuse")
	victim := newAmbientPod(t, m, 0, testbed.PodSpec{Namespace: s.ns, Name: "victim", ServiceAccount: "victim"})
	expectOK(t, victim, webURL(s.web), 1, "hello from web")
	leaked := harvestIdentity(t, s.mallory, victim)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.tb.DeletePod(ctx, victim); err != nil {
		t.Fatalf("delete the victim pod: %v", err)
	}
	eventually(t, 30*time.Second, "victim unenrolled", func() bool { return !m.agents[0].agent.IsEnrolled(victim.UID) })
	reuse := newAmbientPod(t, m, 0, testbed.PodSpec{Namespace: s.ns, Name: "reuse", ServiceAccount: "reuse", IP: victim.IP})
	if reuse.IP != victim.IP {
		t.Fatalf("new pod got IP %s, want the victim's %s", reuse.IP, victim.IP)
	}
	expectOK(t, reuse, webURL(s.web), 1, "hello from web")

	// Right after the deletion kube-apiserver's TokenReview may still
	// accept the token from its success cache, and the pod check rejects
	// it (pod_mismatch). Once that cache and the verifier's liveness cache
	// (10 s each) have expired, TokenReview rejects it too
	// (token_not_live). Every probe on the way must be rejected.
	cert := mintCertificate(t, podIdentity(victim), leaked.Token)
	deadline := time.Now().Add(45 * time.Second)
	for probes := 1; ; probes++ {
		reason := expectProbeRejected(t, m.agents[1], reuse, hboneAddr(s.web), cert, leaked.Staple, []string{rbeauth.ALPNRBE}, "token_not_live", "pod_mismatch")
		if reason == "token_not_live" {
			t.Logf("probe %d: TokenReview now rejects the dead pod's token", probes)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TokenReview still accepts the deleted pod's token 45 s after the deletion (%d probes, all rejected by the pod check)", probes)
		}
		time.Sleep(2 * time.Second)
	}
}

// TestAttackForgedTokens presents tokens that the cluster's issuer did not
// sign for mazu, or signed long ago, from the victim's own IP with the
// victim's stapled proof. Attacks and defences, one subtest each:
//   - forged: the client's token claims re-signed with another key under
//     the cluster key's ID. The verifier checks the signature against the
//     API server's JWKS: token_signature.
//   - expired: the client's claims with an expiry an hour ago, signed with
//     the cluster's real service-account key, as a token leaked long ago
//     would be: token_expired.
//   - wrong audience: a real token for the client pod that the API server
//     issued for another audience: token_audience.
//   - other cluster: the client's claims signed by another cluster's
//     issuer and key: token_issuer.
func TestAttackForgedTokens(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	s := newVictimSetup(t, m, "forged")
	leaked := harvestIdentity(t, s.mallory, s.client)
	header, claims := decodeToken(t, leaked.Token)
	id := podIdentity(s.client)

	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clusterKey := readClusterSigningKey(t, m.tb)

	cases := []struct {
		name   string
		token  func(t *testing.T) string
		reason string
	}{
		{"forged", func(t *testing.T) string {
			return signToken(t, otherKey, header["kid"].(string), claims)
		}, "token_signature"},
		{"expired", func(t *testing.T) string {
			old := maps.Clone(claims)
			now := time.Now()
			old["iat"] = now.Add(-2 * time.Hour).Unix()
			old["nbf"] = now.Add(-2 * time.Hour).Unix()
			old["exp"] = now.Add(-time.Hour).Unix()
			return signToken(t, clusterKey, header["kid"].(string), old)
		}, "token_expired"},
		{"wrong audience", func(t *testing.T) string {
			token, err := m.tb.RequestToken(context.Background(), s.client, "vault.example", 10*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			return token
		}, "token_audience"},
		{"other cluster", func(t *testing.T) string {
			foreign := maps.Clone(claims)
			foreign["iss"] = "https://kubernetes.other-cluster.example"
			return signToken(t, otherKey, "other-cluster-key", foreign)
		}, "token_issuer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cert := mintCertificate(t, id, c.token(t))
			expectProbeRejected(t, m.agents[1], s.client, hboneAddr(s.web), cert, leaked.Staple, []string{rbeauth.ALPNRBE}, c.reason)
		})
	}
	expectOK(t, s.client, webURL(s.web), 1, "hello from web")
}

// decodeToken returns a compact JWS's header and claims, unverified.
func decodeToken(t *testing.T, token string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("token part %d: %v", i, err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatalf("token part %d: %v", i, err)
		}
	}
	return header, claims
}

// signToken encodes claims as an ES256 compact JWS signed by key, with key
// ID kid in the header.
func signToken(t *testing.T, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	header, err := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signed))
	r, sig, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	sig.FillBytes(raw[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(raw)
}

// readClusterSigningKey reads the testbed's service-account signing key,
// the key kube-apiserver signs every token with.
func readClusterSigningKey(t *testing.T, tb *testbed.Testbed) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(tb.Dir(), "sa.key"))
	if err != nil {
		t.Fatalf("read the cluster's service-account signing key: %v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s/sa.key contains no PEM block", tb.Dir())
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("parse the cluster's service-account signing key: %v", err)
	}
	return key
}
