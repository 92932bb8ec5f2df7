package audit_test

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/fakerbe"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
)

var scheme = fakerbe.Scheme{N: 8}

func fakeKey(slot int) ([]byte, []byte, error) {
	pk := make([]byte, 32)
	rand.Read(pk)
	return pk, scheme.Helpers(slot, pk), nil
}

func register(t *testing.T, c *curatortest.Cluster, is *curatortest.Issuer, name string, n int) (*curatortest.Workload, *server.KeyResponse) {
	t.Helper()
	ip := netip.AddrFrom4([4]byte{10, 2, 0, byte(n)})
	p := is.AddPod("default", name, ip)
	w := curatortest.NewWorkload(t, is.Token(p, curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
	r, err := c.Register(t.Context(), w, fakeKey)
	if err != nil {
		t.Fatalf("Register(%s) = %v", name, err)
	}
	return w, r
}

func TestAuditCleanLog(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: is, JWKS: is.JWKS(), MaxBatch: 3})
	for i := range 20 {
		register(t, c, is, "pod", i)
	}
	r, err := audit.Audit(t.Context(), audit.Config{Client: c.Client, Policy: c.Policy, Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.IDs != 20 || r.Entries[curator.KindRegistration] != 20 || r.Entries[curator.KindState] == 0 {
		t.Fatalf("Audit = %+v, want 20 clean registrations", r)
	}
}

// TestSplitView runs a curator that shows fork A to the witnesses and to
// one client, and fork B, built with the same log key, to another.
func TestSplitView(t *testing.T) {
	is := curatortest.NewIssuer(t)
	forkA := curatortest.Start(t, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	key := forkA.Key
	forkB := curatortest.Start(t, curatortest.Options{Scheme: scheme, Reviewer: is, Key: &key, WitnessOf: forkA})
	ctx := t.Context()

	for i := range 3 {
		register(t, forkA, is, "a", i)
	}
	cpA, err := forkA.Client.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	trustedA, err := forkA.Policy.Open(cpA, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Fork B diverges and grows past A; the witnesses refuse it.
	for i := range 5 {
		_, r := register(t, forkB, is, "b", 10+i)
		if len(r.Bundle) != 0 {
			t.Fatalf("fork B registration %d got a cosigned bundle", i)
		}
	}
	if _, err := forkB.Client.Checkpoint(ctx); err == nil {
		t.Fatal("fork B published a checkpoint without a witness quorum")
	}
	for i, dir := range forkA.EvidenceDirs {
		ents, _ := os.ReadDir(dir)
		if len(ents) == 0 || !strings.HasPrefix(ents[0].Name(), "inconsistent-") {
			t.Errorf("witness %d evidence = %v, want an inconsistent-* file", i, ents)
		}
	}

	// Fork B's tree, signed by the log key alone, as the curator would
	// show a client that checks the log signature only.
	n, _ := forkB.Store.Size()
	hB, err := tlog.TreeHash(n, forkB.Store)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(key.Signer)
	cpB, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, tlog.Tree{N: n, Hash: hB}))}, signer)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := tlog.ProveTree(n, trustedA.Tree.N, forkB.Store)
	if err != nil {
		t.Fatal(err)
	}
	logOnly, err := curator.NewPolicy(curatortest.Origin, key.VKey, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A client with the witness policy rejects B for lack of a quorum.
	if _, err := forkA.Policy.Open(cpB, time.Now()); !errors.Is(err, curator.ErrQuorum) {
		t.Errorf("Open(fork B) under the witness policy = %v, want ErrQuorum", err)
	}
	// A client holding A's checkpoint rejects B with a consistency error.
	resp := &curator.UpdatesResponse{Checkpoint: cpB, Consistency: proof}
	_, err = curator.VerifyUpdates(resp, logOnly, trustedA, nil, time.Now())
	var fork *curator.ForkError
	if !errors.As(err, &fork) {
		t.Fatalf("VerifyUpdates(fork B) = %v, want a ForkError", err)
	}
	// The evidence is self-contained: both notes verify under the log key
	// and the proof does not link them.
	v, _ := note.NewVerifier(key.VKey)
	for _, msg := range [][]byte{fork.Old, fork.New} {
		if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
			t.Errorf("evidence note does not verify: %v", err)
		}
	}
	if tlog.CheckTree(fork.Proof, n, hB, trustedA.Tree.N, trustedA.Tree.Hash) == nil {
		t.Error("evidence proof links the two trees")
	}

	// An auditor reading fork B, holding A's checkpoint, reports the fork.
	r, err := audit.Audit(ctx, audit.Config{Client: &curator.Client{URL: forkB.URL}, Policy: logOnly, Scheme: scheme, Others: [][]byte{cpA}})
	if err == nil {
		t.Fatalf("Audit(fork B) with no published checkpoint = %+v, want an error", r)
	}
	forkB.Store.SetCheckpoint(cpB)
	forkB.Log.Reload()
	r, err = audit.Audit(ctx, audit.Config{Client: &curator.Client{URL: forkB.URL}, Policy: logOnly, Scheme: scheme, Others: [][]byte{cpA}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Forks) != 1 || len(r.Violations) != 0 {
		t.Fatalf("Audit(fork B) = %d forks, %d violations; want 1 fork", len(r.Forks), len(r.Violations))
	}
}

func TestMonitorUnexpectedEntry(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 3, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	ctx := t.Context()
	w, r := register(t, c, is, "own", 1)
	m := &audit.Monitor{Client: c.Client, Policy: c.Policy}
	regEntry := &curator.Entry{Kind: curator.KindRegistration, ID: r.ID, PrevIndex: curator.NoPrev}
	b, err := curator.ParseBundle(r.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := curator.ParseEntry(b.Entry)
	regEntry.RBEKey, regEntry.RBEHelpers, regEntry.TLSKey, regEntry.PodIP = e.RBEKey, e.RBEHelpers, e.TLSKey, e.PodIP
	m.Expect(r.ID, curator.PoPMessage(regEntry))
	alerts, err := m.Poll(ctx)
	if err != nil || len(alerts) != 0 {
		t.Fatalf("Poll after own registration = %v, %v; want no alerts", alerts, err)
	}
	// Someone holding the TLS key rotates the ID behind the agent's back.
	req, err := w.ChangeRequest(curator.KindRotation, r.Block, r.Slot, r.Index, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	var rot server.KeyResponse
	if err := c.Client.PostJSON(ctx, "/v1/rotate", req, &rot); err != nil {
		t.Fatal(err)
	}
	alerts, err = m.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 1 || alerts[0].Name != audit.AlertUnexpectedEntry || alerts[0].Entry.Index != rot.Index {
		t.Fatalf("Poll after a foreign rotation = %v, want one %s for entry %d", alerts, audit.AlertUnexpectedEntry, rot.Index)
	}
}
