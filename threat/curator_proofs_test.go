package threat

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/internal/rogue"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// auditInterval is the node agents' audit interval in this package.
const auditInterval = time.Second

// managedIdentity is a workload identity that the test manages with
// rbeauth.Workloads, the identity manager node agents run, for a pod that
// no agent enrolls, so that the test can rotate it and keep its keys.
type managedIdentity struct {
	w   *rbeauth.Workloads
	tb  *testbed.Testbed
	pod *testbed.Pod
}

// newManagedIdentity registers pod with the shared mesh's curator.
func newManagedIdentity(t *testing.T, m *mesh, pod *testbed.Pod) *managedIdentity {
	t.Helper()
	w, err := rbeauth.NewWorkloads(rbeauth.WorkloadsOptions{
		Client: m.tb.Client(), Curator: &curator.Client{URL: m.curator.URL}, Policy: m.curator.Policy, CRS: m.curator.CRS,
		TrustDomain: testbed.TrustDomain, Audience: curator.DefaultAudience,
	})
	if err != nil {
		t.Fatal(err)
	}
	mi := &managedIdentity{w: w, tb: m.tb, pod: pod}
	mi.register(t)
	return mi
}

// register requests a new token for the pod, makes a new TLS key and
// registers them, as an agent does at enrollment and at token renewal.
func (mi *managedIdentity) register(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod, err := mi.tb.Client().CoreV1().Pods(mi.pod.Namespace).Get(ctx, mi.pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read pod %s: %v", mi.pod.Name, err)
	}
	if err := mi.w.Register(ctx, pod, mi.pod.IP); err != nil {
		t.Fatalf("register %s: %v", mi.pod.Name, err)
	}
}

// certificate returns the pod's current certificate with its staple.
func (mi *managedIdentity) certificate(t *testing.T) tls.Certificate {
	t.Helper()
	cert, err := mi.w.Certificate(mi.pod.UID)
	if err != nil {
		t.Fatal(err)
	}
	return *cert
}

// registration is the log position of the pod's current registration.
type registration struct {
	id          curator.ID
	index       uint64
	block, slot uint32
}

func (mi *managedIdentity) registration(t *testing.T) registration {
	t.Helper()
	d, ok := mi.w.Describe(mi.pod.UID).(map[string]any)
	if !ok {
		t.Fatalf("no registration for %s", mi.pod.Name)
	}
	id, err := curator.ParseID(d["id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return registration{id: id, index: d["logIndex"].(uint64), block: d["block"].(uint32), slot: d["slot"].(uint32)}
}

// revoke revokes reg, which key registered, as an agent's token renewal
// does once the new registration is in, and returns the revocation's index.
func (mi *managedIdentity) revoke(t *testing.T, url string, reg registration, key *ecdsa.PrivateKey) uint64 {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	entry := &curator.Entry{Kind: curator.KindRevocation, ID: reg.id, PrevIndex: reg.index, PodIP: mi.pod.IP.AsSlice(), TLSKey: spki}
	sig, err := curator.SignPoP(key, curator.PoPMessage(entry))
	if err != nil {
		t.Fatal(err)
	}
	req := &server.KeyRequest{ID: &reg.id, PrevIndex: reg.index, Block: reg.block, Slot: reg.slot, TLSKey: spki, PodIP: mi.pod.IP.String(), OldKeySig: sig}
	var resp server.KeyResponse
	if err := (&curator.Client{URL: url}).PostJSON(context.Background(), "/v1/revoke", req, &resp); err != nil {
		t.Fatalf("revoke entry %d: %v", reg.index, err)
	}
	return resp.Index
}

// expectProbeAccepted runs probeHBONE and fails the test unless the server
// let the connection through and its agent na counted an accepted peer. It
// is the positive control of the tests that have a genuine identity.
func expectProbeAccepted(t *testing.T, na *nodeAgent, from *testbed.Pod, target netip.AddrPort, cert tls.Certificate) {
	t.Helper()
	before := na.accepted(t)
	res := probeHBONE(t, from, target, cert, nil, rbeALPN)
	if !res.Connected {
		t.Fatalf("positive control from %s to %s: the genuine identity was rejected: %v", from.Name, target, res.Err)
	}
	eventually(t, 5*time.Second, "an accepted peer counted", func() bool { return na.accepted(t) > before })
}

// waitCovered waits until the curator's published checkpoint covers entry
// index and then for three audit intervals, so that every agent's monitor
// has polled a checkpoint that covers it. No agent exposes its trusted
// checkpoint, so the wait is for the monitor's known period.
func waitCovered(t *testing.T, m *mesh, index uint64) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("a published checkpoint covering entry %d", index), func() bool {
		return publishedSize(t, m.curator.URL, m.curator.Policy) > int64(index)
	})
	time.Sleep(3 * auditInterval)
}

// TestAttackStapleReplayedAfterReRegistration replays a stapled proof that
// a re-registration superseded.
//
// Attack: the victim pod's identity rotates as an agent's token renewal
// does. A new token and TLS key are registered, then the old registration
// is revoked with the old key. An attacker that copied the old
// certificate, its key and its staple (and so the old token) connects from
// the victim's IP with them.
//
// Defence: the staple's bundle is older than the server's trusted
// checkpoint, so the server's agent requests the ID's current entry from
// the curator, finds the revocation and rejects the handshake as
// registration_superseded. The old identity is accepted before the
// rotation and the new one after it.
func TestAttackStapleReplayedAfterReRegistration(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	ns := newNamespace(t, m, "superseded", true)
	web := newAmbientPod(t, m, 1, testbedPodSpec(ns, "web"))
	victim := newBarePod(t, m, nil, testbedPodSpec(ns, "victim"))
	// The test manages the victim's identity so that it can rotate it. The
	// victim pod is on the node without an agent.
	mi := newManagedIdentity(t, m, victim)
	old := mi.certificate(t)
	oldReg := mi.registration(t)
	expectProbeAccepted(t, m.agents[1], victim, hboneAddr(web), old)

	mi.register(t)
	renewed := mi.certificate(t)
	revocation := mi.revoke(t, m.curator.URL, oldReg, old.PrivateKey.(*ecdsa.PrivateKey))
	t.Logf("the victim re-registered and revoked entry %d at entry %d", oldReg.index, revocation)
	waitCovered(t, m, revocation)

	expectProbeRejected(t, m.agents[1], victim, hboneAddr(web), old, nil, rbeALPN, "registration_superseded")
	expectProbeAccepted(t, m.agents[1], victim, hboneAddr(web), renewed)
}

// certificateToken returns the token in a workload certificate.
func certificateToken(t *testing.T, cert tls.Certificate) (string, *x509.Certificate) {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal(rbeauth.OIDTokenExtension) {
			var token string
			if _, err := asn1.UnmarshalWithParams(ext.Value, &token, "utf8"); err != nil {
				t.Fatal(err)
			}
			return token, leaf
		}
	}
	t.Fatal("the certificate has no token extension")
	return "", nil
}

// TestAttackTamperedBlockDigest staples block digests and openings that
// the witnessed state entry does not commit to.
//
// Attack: a curator that wants a key accepted without the RBE block
// containing it computes a block of its own with the workload's key in its
// slot, and staples that block's digest and opening. It also tries the
// committed digest with the forged opening, and another version of the
// block.
//
// Defence: the handshake checks the digest's inclusion proof under the
// state entry's block-digest root, which the witnesses recomputed, and
// then the RBE membership of the derived key. Each tampered staple is
// rejected as registration_missing, and the genuine staple is accepted.
func TestAttackTamperedBlockDigest(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	ns := newNamespace(t, m, "digest", true)
	web := newAmbientPod(t, m, 1, testbedPodSpec(ns, "web"))
	prober := newBarePod(t, m, nil, testbedPodSpec(ns, "prober"))
	mi := newManagedIdentity(t, m, prober)
	genuine := mi.certificate(t)
	expectProbeAccepted(t, m.agents[1], prober, hboneAddr(web), genuine)

	staple, err := rbeauth.ParseStaple(genuine.SignedCertificateTimestamps[0])
	if err != nil {
		t.Fatal(err)
	}
	token, leaf := certificateToken(t, genuine)
	reg := mi.registration(t)
	sk, err := rbe.DeriveSecretKey([]byte(token), prober.IP.AsSlice(), leaf.RawSubjectPublicKeyInfo)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := m.curator.CRS.KeyGen(sk, int(reg.slot))
	if err != nil {
		t.Fatal(err)
	}
	forged := rbe.NewBlock(m.curator.CRS)
	if err := forged.Register(pk); err != nil {
		t.Fatal(err)
	}
	forgedDigest, _ := forged.Digest().MarshalBinary()
	opening, err := forged.Opening(int(reg.slot))
	if err != nil {
		t.Fatal(err)
	}
	forgedOpening, _ := opening.MarshalBinary()

	cases := []struct {
		name   string
		tamper func(s *rbeauth.Staple)
	}{
		{"forged digest and its opening", func(s *rbeauth.Staple) { s.Digest, s.Opening = forgedDigest, forgedOpening }},
		{"committed digest with a forged opening", func(s *rbeauth.Staple) { s.Opening = forgedOpening }},
		{"another version of the block", func(s *rbeauth.Staple) { s.Version++ }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tampered := *staple
			c.tamper(&tampered)
			raw, err := tampered.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			cert := genuine
			cert.SignedCertificateTimestamps = nil
			expectProbeRejected(t, m.agents[1], prober, hboneAddr(web), cert, raw, rbeALPN, "registration_missing")
		})
	}
	expectProbeAccepted(t, m.agents[1], prober, hboneAddr(web), genuine)
}

// TestAttackForeignCRS gives a node agent a CRS that is not the ceremony's,
// as a curator that hands out a CRS of its own making (whose trapdoor it
// may know) would.
//
// Attack: the agent on a new node reads the foreign CRS and enrolls a pod,
// which registers an RBE key made under that CRS. A rogue curator then
// requests cosignatures for such a registration.
//
// Defence: the curator's key check rejects a key whose CRS fingerprint is
// not the log's. The pod is captured but never registered (its agent
// retries and logs the rejection) nor annotated as enrolled, and the log
// does not grow. The witnesses check every key under the logged CRS, so
// they reject a checkpoint that contains one. The same pod spec enrolls on
// a node whose agent has the genuine CRS.
//
// NOTE: the agent starts with the foreign CRS, because it does not compare
// its CRS file with the log before it serves.
func TestAttackForeignCRS(t *testing.T) {
	privtest.Require(t)
	m := sharedMesh(t)
	ctx := context.Background()
	start, err := rbe.NewCeremony(m.curator.CRS.N())
	if err != nil {
		t.Fatal(err)
	}
	foreign, _, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := foreign.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crsFile := filepath.Join(dir, "foreign-crs.bin")
	if err := os.WriteFile(crsFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	node := testbed.NewNode(t, m.tb, "threat-crs")
	view := &meshtest.Curator{URL: m.curator.URL, CRSFile: crsFile, LogVKey: m.curator.LogVKey, WitnessVKeys: m.curator.WitnessVKeys}
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	na, stop, err := startAgent(startCtx, m.tb, view, node, filepath.Join(dir, "agent"))
	if stop != nil {
		t.Cleanup(stop)
	}
	if err != nil {
		t.Fatal(err)
	}

	ns := newNamespace(t, m, "crs", true)
	before := publishedSize(t, m.curator.URL, m.curator.Policy)
	spec := testbedPodSpec(ns, "tampered")
	spec.OnNetwork = cniAdd(m.cni, na.socket)
	pod := testbed.NewPod(t, m.tb, node, spec)
	// mazu-cni returns once the pod is captured. The agent registers it
	// afterwards and retries until the curator accepts.
	eventually(t, 20*time.Second, "the curator to reject the registration under the foreign CRS", func() bool {
		return na.logContains(t, "registration pending", "pod="+ns+"/tampered", "another CRS")
	})
	select {
	case <-na.agent.Registered(pod.UID):
		t.Fatalf("pod %s registered with a key under a foreign CRS", pod.Name)
	default:
	}
	obj, err := m.tb.Client().CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v := obj.Annotations[agent.RedirectionAnnotation]; v != "" {
		t.Errorf("pod %s is annotated %s=%q without a registration", pod.Name, agent.RedirectionAnnotation, v)
	}
	if after := publishedSize(t, m.curator.URL, m.curator.Policy); after != before {
		t.Errorf("the log grew from %d to %d entries while only the rejected pod registered", before, after)
	}

	// Positive control: the genuine CRS enrolls the same pod spec.
	newAmbientPod(t, m, 0, testbedPodSpec(ns, "genuine"))

	// A curator that accepts the key anyway cannot get it cosigned.
	cur, err := rogue.Start(ctx, rogue.Options{Client: m.tb.Client(), Dir: filepath.Join(dir, "rogue")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cur.Stop)
	bare := newBarePod(t, m, nil, testbedPodSpec(ns, "bare"))
	token, err := m.tb.RequestToken(ctx, bare, curator.DefaultAudience, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	foreignForRogue, _, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cur.RegisterUnderCRS(ctx, token, bare.IP, foreignForRogue)
	if err != nil {
		t.Fatal(err)
	}
	expectWitnessesRejected(t, res.Rejections, res.Cosigned, 2, "check RBE key")
	expectEvidence(t, res.Evidence, 2)
}

// TestAttackTamperedDigestServedToAgent serves a node agent block digests
// that the witnessed state entry does not commit to.
//
// Attack: the curator's front door for web's node changes the block digest
// in every updates reply. The log then grows, so web's agent fetches a new
// opening for web's staple.
//
// Defence: the agent checks each digest's inclusion proof under the state
// entry before it staples it. It rejects the tampered reply, logs that the
// staple was not refreshed and keeps web's previous staple, which peers
// still accept after checking online that it names web's current entry.
// Its log monitor raises InvalidCuratorProof for the same reply.
func TestAttackTamperedDigestServedToAgent(t *testing.T) {
	privtest.Require(t)
	rm := newRogueMesh(t, "served")
	s := newVictimSetup(t, rm.mesh, "served")
	ctx := context.Background()
	webAgent := rm.agents[1]

	before := harvestIdentity(t, s.mallory, s.web).Staple
	alertsBefore := webAgent.alerts(t, audit.AlertInvalidProof)
	if err := rm.cur.TamperDigests(frontName(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := registerToken(ctx, rm.tb, rm.cur.CRS, rm.cur.URL(frontName(0)), s.mallory); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "web's agent rejects the tampered digest", func() bool {
		return webAgent.logContains(t, "staple not refreshed", "pod="+s.ns+"/web", "invalid block digest proof")
	})
	eventually(t, 10*time.Second, "web's agent raises "+audit.AlertInvalidProof, func() bool {
		return webAgent.alerts(t, audit.AlertInvalidProof) > alertsBefore
	})
	if after := harvestIdentity(t, s.mallory, s.web).Staple; !bytes.Equal(after, before) {
		t.Fatalf("web's staple changed while its agent was served only tampered digests")
	}

	// Positive control: a new client, with no pooled connection, reaches
	// web, whose agent kept the previous staple.
	client2 := newAmbientPod(t, rm.mesh, 0, testbedPodSpec(s.ns, "client2"))
	expectOK(t, client2, webURL(s.web), 2, "hello from web")
}
