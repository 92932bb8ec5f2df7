package demo

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// rejections reads the server agent's rejection counter for one reason.
func (r *run) rejections(ctx context.Context, reason string) (float64, error) {
	return r.agents["node-b"].counter(ctx, "mazu_peer_verifications_total", map[string]string{"result": "rejected", "reason": reason})
}

// probe connects from the attacker pod to the server pod's HBONE port with
// a certificate and an optional stapled proof, and waits for the server
// agent's rejection counter for reason to move.
func (r *run) probe(ctx context.Context, name string, certPEM, keyPEM, staple []byte, reason string) (bool, error) {
	dir := filepath.Join(r.dir, "attack-"+name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return false, err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return false, err
	}
	before, err := r.rejections(ctx, reason)
	if err != nil {
		return false, err
	}
	target := fmt.Sprintf("%s:%d", r.pods["web"].IP, 15008)
	var rep probeReport
	env := []string{envTarget + "=" + target, envCert + "=" + certFile, envKey + "=" + keyFile}
	if len(staple) > 0 {
		env = append(env, envStaple+"="+base64.StdEncoding.EncodeToString(staple))
	}
	if err := r.runInPod(ctx, r.pods["mallory"], "tls-probe", &rep, env...); err != nil {
		return false, err
	}
	var after float64
	err = poll(ctx, 5*time.Second, "rejection counted", func() (bool, error) {
		var err error
		after, err = r.rejections(ctx, reason)
		return after > before, err
	})
	if rep.Connected {
		r.say("  mallory -> %s: the server let the connection through", target)
		return false, nil
	}
	r.say("  mallory -> %s: handshake rejected (%s)", target, rep.Error)
	if err != nil {
		r.say("  server's agent: no rejection with reason %s counted", reason)
		return false, nil
	}
	r.say("  server's agent: mazu_peer_verifications_total{result=\"rejected\",reason=%q} %v -> %v", reason, before, after)
	return true, nil
}

func pemKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// attackReplay plays a leak of the client's registered credentials. The
// attacker starts a handshake with the client's HBONE port, as any pod may,
// and records the certificate the client's agent presents: the client's
// pod-bound token and its stapled proof. It mints a certificate that
// carries the token, with its own key because the client's never leaves
// its agent, staples the client's proof and connects to web from its own
// pod. The token and the registration name the client's pod IP, which is
// not the attacker's.
func (r *run) attackReplay(ctx context.Context) (bool, error) {
	victim, mallory := r.pods["client"], r.pods["mallory"]
	var leaked harvestReport
	target := envTarget + "=" + fmt.Sprintf("%s:%d", victim.IP, agent.HBONEPort)
	if err := r.runInPod(ctx, mallory, "tls-harvest", &leaked, target); err != nil {
		return false, err
	}
	registered, err := r.agents[victim.Node.Name].registeredID(ctx, string(victim.UID))
	if err != nil {
		return false, err
	}
	id := curator.IDFromToken(leaked.Token)
	if hex.EncodeToString(id[:]) != registered {
		return false, fmt.Errorf("harvested token has ID %x, but the client is registered under %s", id[:], registered)
	}
	r.say("  mallory (%s) harvests demo/client's certificate from its HBONE port: the registered token of ID %x… and a %d-byte stapled proof", mallory.IP, id[:8], len(leaked.Staple))

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	identity := rbeauth.Identity{TrustDomain: testbed.TrustDomain, Namespace: victim.Namespace, ServiceAccount: victim.ServiceAccount}
	der, err := rbeauth.NewCertificate(key, identity, leaked.Token, time.Now().Add(10*time.Minute))
	if err != nil {
		return false, err
	}
	keyPEM, err := pemKey(key)
	if err != nil {
		return false, err
	}
	r.say("  mallory wraps the token in a certificate for %s with its own key, staples the client's proof, and connects from %s (the token's pod has %s)", identity, mallory.IP, victim.IP)
	return r.probe(ctx, "a", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, leaked.Staple, "pod_mismatch")
}

// attackRogueCA plays someone who took over istiod: it reads istiod's CA
// key and signs a certificate for the server's identity, which every peer
// that trusts Istio's CA would accept.
func (r *run) attackRogueCA(ctx context.Context) (bool, error) {
	secret, err := r.tb.Client().CoreV1().Secrets(testbed.IstioNamespace).Get(ctx, "istio-ca-secret", metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("read istiod's CA secret: %w", err)
	}
	caCert, caKey, err := parseCA(secret.Data["ca-cert.pem"], secret.Data["ca-key.pem"])
	if err != nil {
		return false, err
	}
	web := r.pods["web"]
	id := rbeauth.Identity{TrustDomain: testbed.TrustDomain, Namespace: web.Namespace, ServiceAccount: web.ServiceAccount}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	uri, _ := url.Parse(id.String())
	template := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{uri}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, caCert, &key.PublicKey, caKey)
	if err != nil {
		return false, fmt.Errorf("sign the rogue certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return false, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false, fmt.Errorf("the rogue certificate does not chain to istiod's CA: %w", err)
	}
	r.say("  signed a certificate for %s with the key in %s/istio-ca-secret; it chains to istiod's root %q", id, testbed.IstioNamespace, caCert.Subject.String())
	keyPEM, err := pemKey(key)
	if err != nil {
		return false, err
	}
	certPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})...)
	return r.probe(ctx, "b", certPEM, keyPEM, nil, "certificate_invalid")
}

func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, errors.New("istio-ca-secret lacks PEM ca-cert.pem or ca-key.pem")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse istiod's CA certificate: %w", err)
	}
	if k, err := x509.ParsePKCS1PrivateKey(kb.Bytes); err == nil {
		return cert, k, nil
	}
	if k, err := x509.ParseECPrivateKey(kb.Bytes); err == nil {
		return cert, k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse istiod's CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("istiod's CA key is a %T, not a signing key", k)
	}
	return cert, signer, nil
}

// attackReRegister plays a curator that appends a second registration of
// the server's ID, bound to the attacker's IP and TLS key, and requests the
// witnesses' cosignatures.
func (r *run) attackReRegister(ctx context.Context) (bool, error) {
	web := r.pods["web"]
	hexID, err := r.agents["node-b"].registeredID(ctx, string(web.UID))
	if err != nil || hexID == "" {
		return false, fmt.Errorf("read the server's registered ID: %v", err)
	}
	id, err := curator.ParseID(hexID)
	if err != nil {
		return false, err
	}
	before, err := r.mesh.Size(ctx)
	if err != nil {
		return false, err
	}
	start := time.Now()
	res, err := r.mesh.ReRegister(ctx, id, r.pods["mallory"].IP)
	if err != nil {
		return false, err
	}
	r.say("  curator appended entry %d: a second registration of web's ID %s… for %s and an attacker TLS key", res.Index, hexID[:16], r.pods["mallory"].IP)
	blocked := res.Cosigned == 0 && len(res.Rejections) == 2
	for _, rej := range res.Rejections {
		r.say("  %s rejected it within %d ms: %d %s", rej.Witness, time.Since(start).Milliseconds(), rej.Status, rej.Body)
		blocked = blocked && rej.Status == 422 && strings.Contains(rej.Body, curator.ErrReRegistration.Error())
	}
	after, err := r.mesh.Size(ctx)
	if err != nil {
		return false, err
	}
	r.say("  cosignatures: %d of 2 (quorum 2); the published checkpoint stays at %d entries (was %d), so no agent can be shown the entry", res.Cosigned, after, before)
	for _, f := range res.Evidence {
		r.say("  evidence: %s", f)
	}
	// NOTE: the defence shown is the witnesses' replay. Without a quorum
	// the entry never reaches an agent, so the demo does not exercise the
	// victim agent's UnexpectedReRegistration alert or a handshake that
	// staples the rogue entry. The threat suite's
	// TestAttackReRegistrationWithColludingWitnesses does.
	return blocked && after == before && len(res.Evidence) >= 2, nil
}

// attackFork plays a curator that keeps a second history, fork B, and shows
// it to node-b's agent alone, while the witnesses and node-a see the honest
// one.
func (r *run) attackFork(ctx context.Context) (bool, error) {
	nodeB, nodeA := r.agents["node-b"], r.agents["node-a"]
	fork := map[string]string{"alert": audit.AlertFork}
	before, err := nodeB.counter(ctx, "mazu_curator_alerts_total", fork)
	if err != nil {
		return false, err
	}
	beforeA, err := nodeA.counter(ctx, "mazu_curator_alerts_total", fork)
	if err != nil {
		return false, err
	}
	honest, err := r.mesh.Size(ctx)
	if err != nil {
		return false, err
	}
	neighbor := r.pods["neighbor"]
	register := func(ctx context.Context, forkURL string) error {
		return r.registerRaw(ctx, forkURL, neighbor)
	}
	res, err := r.mesh.StartFork(ctx, r.forkBase, "node-b", register)
	if err != nil {
		return false, err
	}
	switched := time.Now()
	r.say("  fork B shares the honest log's first %d entries, then holds its own registrations: %d entries against the honest %d", res.Base, res.Size, honest)
	rejected := len(res.Rejections) == 2
	for _, rej := range res.Rejections {
		r.say("  %s rejected fork B: %d %s", rej.Witness, rej.Status, rej.Body)
		rejected = rejected && rej.Status == 422
	}
	r.say("  node-b's agent is now served fork B's checkpoint, signed by the log key alone")
	var after float64
	err = poll(ctx, 10*time.Second, "fork alert on node-b", func() (bool, error) {
		var err error
		after, err = nodeB.counter(ctx, "mazu_curator_alerts_total", fork)
		return after > before, err
	})
	if err != nil {
		r.say("  node-b's agent raised no %s alert: %v", audit.AlertFork, err)
		return false, nil
	}
	r.say("  node-b's agent: mazu_curator_alerts_total{alert=%q} %v -> %v, %.1f s after the switch (audit interval 1 s)", audit.AlertFork, before, after, time.Since(switched).Seconds())
	afterA, err := nodeA.counter(ctx, "mazu_curator_alerts_total", fork)
	if err != nil {
		return false, err
	}
	r.say("  node-a's agent, on the honest log: %v fork alerts (was %v)", afterA, beforeA)
	events, err := r.tb.Client().CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range events.Items {
			if e.Reason == audit.AlertFork {
				r.say("  Kubernetes Event default/%s: %s %s on %s/%s", e.Name, e.Type, e.Reason, e.InvolvedObject.Kind, e.InvolvedObject.Name)
				break
			}
		}
	}
	for _, f := range res.Evidence {
		r.say("  evidence (both checkpoints, signed by the log key): %s", f)
	}
	return rejected && len(res.Evidence) >= 2 && afterA == beforeA, nil
}

// registerRaw registers a fresh token of pod with the curator at url, as
// a node agent does: reserve a slot, derive the RBE key, prove possession
// of the TLS key.
func (r *run) registerRaw(ctx context.Context, url string, pod *testbed.Pod) error {
	token, err := r.tb.RequestToken(ctx, pod, curator.DefaultAudience, 10*time.Minute)
	if err != nil {
		return err
	}
	client := &curator.Client{URL: url}
	var reserved server.ReserveResponse
	if err := client.PostJSON(ctx, "/v1/reserve", map[string]string{"token": token}, &reserved); err != nil {
		return fmt.Errorf("reserve a slot: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	sk, err := rbe.DeriveSecretKey([]byte(token), pod.IP.AsSlice(), spki)
	if err != nil {
		return err
	}
	pk, err := r.mesh.CRS.KeyGen(sk, int(reserved.Slot))
	if err != nil {
		return err
	}
	rbeKey, err := pk.MarshalBinary()
	if err != nil {
		return err
	}
	entry := &curator.Entry{Kind: curator.KindRegistration, ID: curator.IDFromToken(token), PrevIndex: curator.NoPrev,
		RBEKey: rbeKey, TLSKey: spki, PodIP: pod.IP.AsSlice()}
	pop, err := curator.SignPoP(key, curator.PoPMessage(entry))
	if err != nil {
		return err
	}
	req := &server.KeyRequest{Token: token, Block: reserved.Block, Slot: reserved.Slot, RBEKey: rbeKey, TLSKey: spki, PodIP: pod.IP.String(), PoPSig: pop}
	var resp server.KeyResponse
	if err := client.PostJSON(ctx, "/v1/register", req, &resp); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	return nil
}
