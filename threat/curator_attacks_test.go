package threat

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// rbeALPN is the ALPN that two mazu peers negotiate.
var rbeALPN = []string{rbeauth.ALPNRBE}

// TestAttackReRegistrationWithoutQuorum plays a compromised curator that
// re-registers a victim's ID with an attacker's TLS key.
//
// Attack: the curator appends a second registration of web's ID, bound to
// web's IP and to a key the attacker has, and requests the honest
// witnesses' cosignatures. The attacker then presents web's token with its
// own key and a staple from the rogue log, from web's IP and from its own
// pod.
//
// Defence: the witnesses replay the entry under the curator rules and
// reject it, keeping evidence on disk, so the published checkpoint does
// not move. A peer's agent rejects the rogue staple for lacking a witness
// quorum (checkpoint_quorum). It rejects the attacker's own pod because
// the token names another pod (pod_mismatch).
func TestAttackReRegistrationWithoutQuorum(t *testing.T) {
	privtest.Require(t)
	rm := newRogueMesh(t, "rereg")
	s := newVictimSetup(t, rm.mesh, "rereg")
	ctx := context.Background()

	id := registeredID(t, s.mallory, s.web)
	before := publishedSize(t, rm.cur.URL(frontName(1)), rm.cur.Policy)
	res, err := rm.cur.ReRegister(ctx, id, s.web.IP)
	if err != nil {
		t.Fatalf("re-register web's ID: %v", err)
	}
	t.Logf("the curator appended entry %d: a second registration of web's ID %x… for %s and an attacker key", res.Index, id[:8], s.web.IP)
	expectWitnessesRejected(t, res.Rejections, res.Cosigned, 2, curator.ErrReRegistration.Error())
	expectEvidence(t, res.Evidence, 2)
	if after := publishedSize(t, rm.cur.URL(frontName(1)), rm.cur.Policy); after != before {
		t.Fatalf("the published checkpoint moved from %d to %d entries although no witness cosigned", before, after)
	}

	cert := certificateWith(t, podIdentity(s.web), res.Token, res.Key)
	staple := viewStaple(t, res.View, id)
	// From web's network namespace (outside its cgroup, so web's agent
	// does not capture it): the IP that both the token and the rogue
	// entry name, so only the witness quorum is left to reject it.
	expectProbeRejected(t, rm.agents[0], s.web, hboneAddr(s.client), cert, staple, rbeALPN, "checkpoint_quorum")
	expectProbeRejected(t, rm.agents[0], s.mallory, hboneAddr(s.client), cert, staple, rbeALPN, "pod_mismatch")

	if n := rm.agents[1].alerts(t, audit.AlertUnexpectedEntry); n != 0 {
		t.Errorf("web's agent raised %v %s alerts for an entry no checkpoint covers", n, audit.AlertUnexpectedEntry)
	}
	expectOK(t, s.client, webURL(s.web), 2, "hello from web")
}

// TestAttackReRegistrationWithColludingWitnesses plays a compromised
// curator whose witnesses collude.
//
// Attack: the curator appends a second registration of web's ID bound to
// an attacker's key. The honest replay rejects it, but the witness keys
// cosign the rogue checkpoint anyway, so it meets the quorum, and the
// curator serves it to both nodes. The attacker then connects with web's
// token, its own key and the rogue staple.
//
// Defence: web's agent polls the curator for its own IDs every audit
// interval (1 s here) and finds an entry it did not request. It raises
// UnexpectedReRegistration as a metric, an error log line and a Kubernetes
// Event on the web pod. The other agent raises nothing, because the entry
// touches none of its IDs. Peers reject the attacker's handshake from its
// own pod because the token names web's pod (pod_mismatch).
//
// NOTE: the handshake does not reject an attacker that has web's IP as
// well as a colluding quorum, because the quorum is the trust root for the
// log. The alert is the defence left.
func TestAttackReRegistrationWithColludingWitnesses(t *testing.T) {
	privtest.Require(t)
	rm := newRogueMesh(t, "collude")
	s := newVictimSetup(t, rm.mesh, "collude")
	ctx := context.Background()
	victimAgent, peerAgent := rm.agents[1], rm.agents[0]

	id := registeredID(t, s.mallory, s.web)
	res, err := rm.cur.ReRegister(ctx, id, s.web.IP)
	if err != nil {
		t.Fatalf("re-register web's ID: %v", err)
	}
	expectWitnessesRejected(t, res.Rejections, res.Cosigned, 2, curator.ErrReRegistration.Error())
	if err := res.View.Collude(); err != nil {
		t.Fatal(err)
	}
	if _, err := rm.cur.Policy.Open(res.View.Checkpoint(), time.Now()); err != nil {
		t.Fatalf("the colluding witnesses' checkpoint does not meet the policy the agents hold: %v", err)
	}

	victimBefore := victimAgent.alerts(t, audit.AlertUnexpectedEntry)
	peerBefore := peerAgent.alerts(t, audit.AlertUnexpectedEntry)
	shown := time.Now()
	for i := range rm.agents {
		if err := res.View.Show(frontName(i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "web's agent raises "+audit.AlertUnexpectedEntry, func() bool {
		return victimAgent.alerts(t, audit.AlertUnexpectedEntry) > victimBefore
	})
	t.Logf("web's agent raised %s %.1f s after the rogue checkpoint was served (audit interval 1 s)", audit.AlertUnexpectedEntry, time.Since(shown).Seconds())
	if !victimAgent.logContains(t, "curator audit alert", audit.AlertUnexpectedEntry) {
		t.Errorf("web's agent logged no curator audit alert line for %s", audit.AlertUnexpectedEntry)
	}
	msg := waitEvent(t, rm.tb, s.ns, audit.AlertUnexpectedEntry, s.web.Name, 10*time.Second)
	t.Logf("Event on pod %s/%s: %s", s.ns, s.web.Name, msg)

	cert := certificateWith(t, podIdentity(s.web), res.Token, res.Key)
	staple := viewStaple(t, res.View, id)
	expectProbeRejected(t, peerAgent, s.mallory, hboneAddr(s.client), cert, staple, rbeALPN, "pod_mismatch")
	if n := peerAgent.alerts(t, audit.AlertUnexpectedEntry); n != peerBefore {
		t.Errorf("the client's agent raised %v %s alerts for an entry that touches none of its IDs", n-peerBefore, audit.AlertUnexpectedEntry)
	}
}

// TestAttackForkedLogForTwoNodes plays a compromised curator that shows two
// nodes two histories.
//
// Attack: after web and the client registered, the curator serves web's
// node fork B (the shared prefix plus a registration of its own) and the
// client's node the honest log, which then grows with a second client's
// registration. The witness keys cosign fork B as well, as equivocating
// witnesses would, so each node alone is served a log that meets the quorum
// and extends the checkpoint it trusted.
//
// Defence: honest witnesses reject fork B as inconsistent with what they
// cosigned, and keep both checkpoints as evidence. Web restaples its proof
// from fork B, so the second client's agent, which compares the stapled
// checkpoint with its own in the handshake, rejects web with reason
// log_fork. Once the curator serves web's node the honest log again, that
// node's monitor raises KCForkDetected.
func TestAttackForkedLogForTwoNodes(t *testing.T) {
	privtest.Require(t)
	rm := newRogueMesh(t, "fork")
	s := newVictimSetup(t, rm.mesh, "fork")
	ctx := context.Background()
	webAgent, clientAgent := rm.agents[1], rm.agents[0]

	base := publishedSize(t, rm.cur.URL(frontName(1)), rm.cur.Policy)
	register := func(ctx context.Context, url string) error {
		_, err := registerToken(ctx, rm.tb, rm.cur.CRS, url, s.mallory)
		return err
	}
	fork, err := rm.cur.StartColludingFork(ctx, base, frontName(1), register)
	if err != nil {
		t.Fatalf("start fork B: %v", err)
	}
	t.Logf("fork B: the first %d entries of the honest log, then its own, %d in all; served to %s", fork.Base, fork.Size, webAgent.node.Name)

	// The honest log grows past fork B on the client's node.
	client2 := newAmbientPod(t, rm.mesh, 0, testbedPodSpec(s.ns, "client2"))
	for publishedSize(t, rm.cur.URL(frontName(0)), rm.cur.Policy) < fork.Size {
		if _, err := registerToken(ctx, rm.tb, rm.cur.CRS, rm.cur.URL(frontName(0)), s.mallory); err != nil {
			t.Fatal(err)
		}
	}
	if err := rm.cur.AskWitnesses(ctx, fork); err != nil {
		t.Fatal(err)
	}
	expectWitnessesRejected(t, fork.Rejections, 0, 2, "")
	expectEvidence(t, fork.Evidence, 2)

	eventually(t, 20*time.Second, "web restaples its proof from fork B", func() bool {
		return bytes.Equal(stapledCheckpoint(t, harvestIdentity(t, s.mallory, s.web).Staple), fork.Checkpoint)
	})
	before := clientAgent.rejections(t)
	if report := httpFrom(t, client2, webURL(s.web), 2); report.OK != 0 {
		t.Fatalf("client2 reached web, which staples fork B: %d requests succeeded", report.OK)
	}
	waitRejected(t, clientAgent, before, "log_fork")
	if !clientAgent.logContains(t, "peer rejected", "log_fork") {
		t.Errorf("the client's agent logged no rejection with reason log_fork")
	}
	expectForkEvidence(t, clientAgent, "handshake", fork.Checkpoint)

	forkAlerts := webAgent.alerts(t, audit.AlertFork)
	if err := rm.cur.ShowHonest(frontName(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "web's agent raises "+audit.AlertFork, func() bool {
		return webAgent.alerts(t, audit.AlertFork) > forkAlerts
	})
	msg := waitEvent(t, rm.tb, "default", audit.AlertFork, webAgent.node.Name, 10*time.Second)
	t.Logf("Event on node %s: %s", webAgent.node.Name, msg)
	expectForkEvidence(t, webAgent, "audit", fork.Checkpoint)
}

// expectForkEvidence checks that na kept, from source, a fork evidence file
// whose checkpoints include checkpoint, both signed notes.
func expectForkEvidence(t *testing.T, na *nodeAgent, source string, checkpoint []byte) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(na.stateDir, "evidence", "fork-*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			Source string `json:"source"`
			Old    string `json:"old_checkpoint"`
			New    string `json:"new_checkpoint"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatalf("fork evidence %s: %v", f, err)
		}
		if rec.Source == source && (rec.Old == string(checkpoint) || rec.New == string(checkpoint)) && rec.Old != rec.New {
			return
		}
	}
	t.Errorf("agent on %s kept no %s fork evidence naming the forked checkpoint (files: %v)", na.node.Name, source, files)
}

// testbedPodSpec is a pod spec with a service account of the pod's name.
func testbedPodSpec(namespace, name string) testbed.PodSpec {
	return testbed.PodSpec{Namespace: namespace, Name: name, ServiceAccount: name}
}
