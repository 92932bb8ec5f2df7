package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/fakerbe"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

var scheme = fakerbe.Scheme{N: 16}

func fakeKey(slot int) ([]byte, []byte, error) {
	pk := make([]byte, 32)
	rand.Read(pk)
	return pk, scheme.Helpers(slot, pk), nil
}

type env struct {
	is  *curatortest.Issuer
	c   *curatortest.Cluster
	ctx context.Context
}

func newEnv(t *testing.T, witnesses int) *env {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: witnesses, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	return &env{is: is, c: c, ctx: t.Context()}
}

func (e *env) workload(t *testing.T, name string, n int) *curatortest.Workload {
	ip := netip.AddrFrom4([4]byte{10, 1, 0, byte(n)})
	p := e.is.AddPod("default", name, ip)
	return curatortest.NewWorkload(t, e.is.Token(p, curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
}

func TestRegisterAndVerifyBundle(t *testing.T) {
	e := newEnv(t, 4)
	var ws []*curatortest.Workload
	var resps []*server.KeyResponse
	for i := range 5 {
		w := e.workload(t, "pod", i)
		r, err := e.c.Register(e.ctx, w, fakeKey)
		if err != nil {
			t.Fatalf("Register(%d) = %v", i, err)
		}
		ws, resps = append(ws, w), append(resps, r)
	}
	for i, r := range resps {
		if len(r.Bundle) == 0 {
			t.Fatalf("registration %d: response has no bundle", i)
		}
		if len(r.Opening) == 0 || len(r.BlockDigest) == 0 || r.BlockVersion == 0 {
			t.Errorf("registration %d: response lacks the opening, digest or version", i)
		}
		reg, err := curator.VerifyBundle(r.Bundle, e.c.Policy, r.ID, time.Now())
		if err != nil {
			t.Fatalf("VerifyBundle(registration %d) = %v", i, err)
		}
		if reg.Index != r.Index || reg.Slot != r.Slot || reg.TLSKeyHash != sha(ws[i].TLSDER) {
			t.Errorf("VerifyBundle(registration %d) = index %d slot %d, want %d %d and the TLS key hash", i, reg.Index, reg.Slot, r.Index, r.Slot)
		}
		if reg.Checkpoint.Signed < 3 {
			t.Errorf("checkpoint counted %d cosignatures, want at least 3", reg.Checkpoint.Signed)
		}
		if _, err := curator.VerifyBundle(r.Bundle, e.c.Policy, resps[(i+1)%5].ID, time.Now()); err == nil {
			t.Errorf("VerifyBundle(registration %d) with another ID succeeded", i)
		}
	}
	// Fresh bundles agree with the ones in the responses.
	b, err := e.c.Client.Bundle(e.ctx, resps[4].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := curator.VerifyBundle(b, e.c.Policy, resps[4].ID, time.Now()); err != nil {
		t.Fatalf("VerifyBundle(fetched) = %v", err)
	}
}

func sha(b []byte) [32]byte {
	return curator.IDFromToken(string(b))
}

func TestReRegistrationRejected(t *testing.T) {
	is := curatortest.NewIssuer(t)
	reg := prometheus.NewRegistry()
	e := &env{is: is, ctx: t.Context(),
		c: curatortest.Start(t, curatortest.Options{Scheme: scheme, Reviewer: is, JWKS: is.JWKS(), Registry: reg})}
	w := e.workload(t, "pod", 1)
	if _, err := e.c.Register(e.ctx, w, fakeKey); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.Register(e.ctx, w, fakeKey)
	var he *curator.HTTPError
	if !errors.As(err, &he) || he.Code != 409 || !strings.Contains(he.Body, "already registered") {
		t.Fatalf("second Register = %v, want HTTP 409 naming the existing registration", err)
	}
	for _, c := range []struct {
		kind, result string
		want         float64
	}{{"registration", "ok", 1}} {
		if got := testutil.ToFloat64(counter(t, reg, "mazu_curator_requests_total", c.kind, c.result)); got != c.want {
			t.Errorf("mazu_curator_requests_total{kind=%s,result=%s} = %v, want %v", c.kind, c.result, got, c.want)
		}
	}
	if got := testutil.CollectAndCount(reg, "mazu_curator_log_entries"); got != 1 {
		t.Errorf("mazu_curator_log_entries series = %d, want 1", got)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 2 && m.GetLabel()[0].GetValue() == labels[0] && m.GetLabel()[1].GetValue() == labels[1] {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return nil
}

func TestTokenRejections(t *testing.T) {
	e := newEnv(t, 0)
	ip := netip.MustParseAddr("10.1.0.9")
	p := e.is.AddPod("default", "victim", ip)
	gone := e.is.AddPod("default", "gone", ip)
	e.is.DeletePod(gone)
	now := time.Now()
	for _, tc := range []struct {
		name, token, want string
	}{
		{"forged signature", e.is.ForgedToken(t, p, curator.DefaultAudience, now), "invalid token signature"},
		{"expired", e.is.Token(p, curator.DefaultAudience, now.Add(-time.Hour), 10*time.Minute), "token expired"},
		{"wrong audience", e.is.Token(p, "https://kubernetes.default.svc", now, 10*time.Minute), "lacks \"mazu-curator\""},
		{"deleted pod", e.is.Token(gone, curator.DefaultAudience, now, 10*time.Minute), "deleted"},
		{"not a JWS", "abc", "three dot-separated parts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := curatortest.NewWorkload(t, tc.token, ip)
			_, err := e.c.Register(e.ctx, w, fakeKey)
			var he *curator.HTTPError
			if !errors.As(err, &he) || he.Code != 403 || !strings.Contains(he.Body, tc.want) {
				t.Fatalf("Register = %v, want HTTP 403 containing %q", err, tc.want)
			}
		})
	}
}

func TestNodeCheck(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Scheme: scheme, Reviewer: is, JWKS: is.JWKS(), NodeCheck: true})
	ip := netip.MustParseAddr("10.1.0.7")
	agentHere := is.AddPod("mazu-system", "agent-a", netip.MustParseAddr("10.1.0.100"))
	agentThere := is.AddPod("mazu-system", "agent-b", netip.MustParseAddr("10.1.0.101"))
	agentThere.Node = "node-2"
	now := time.Now()
	for _, tc := range []struct {
		name, agentToken, want string
	}{
		{"missing agent token", "", "agent_token missing"},
		{"agent on another node", is.Token(agentThere, curator.DefaultAudience, now, 10*time.Minute), "the agent runs on node node-2"},
		{"agent token with wrong audience", is.Token(agentHere, "other", now, 10*time.Minute), "agent token"},
		{"agent on the same node", is.Token(agentHere, curator.DefaultAudience, now, 10*time.Minute), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := is.AddPod("default", "w", ip)
			w := curatortest.NewWorkload(t, is.Token(p, curator.DefaultAudience, now, 10*time.Minute), ip)
			w.AgentToken = tc.agentToken
			_, err := c.Register(t.Context(), w, fakeKey)
			var he *curator.HTTPError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Register = %v, want success", err)
			case tc.want != "" && (!errors.As(err, &he) || he.Code != 403 || !strings.Contains(he.Body, tc.want)):
				t.Fatalf("Register = %v, want HTTP 403 containing %q", err, tc.want)
			}
		})
	}
}

func TestWrongPodIPRejected(t *testing.T) {
	e := newEnv(t, 0)
	p := e.is.AddPod("default", "pod", netip.MustParseAddr("10.1.0.1"))
	w := curatortest.NewWorkload(t, e.is.Token(p, curator.DefaultAudience, time.Now(), 10*time.Minute), netip.MustParseAddr("10.1.0.2"))
	_, err := e.c.Register(e.ctx, w, fakeKey)
	var he *curator.HTTPError
	if !errors.As(err, &he) || he.Code != 403 || !strings.Contains(he.Body, "is not an IP of pod") {
		t.Fatalf("Register = %v, want HTTP 403 about the pod IP", err)
	}
}

func TestRotateRevokeAndUpdates(t *testing.T) {
	e := newEnv(t, 4)
	a, b := e.workload(t, "a", 1), e.workload(t, "b", 2)
	ra, err := e.c.Register(e.ctx, a, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := e.c.Register(e.ctx, b, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	first, err := curator.VerifyBundle(rb.Bundle, e.c.Policy, rb.ID, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	// Rotate a, revoke b.
	req, err := a.ChangeRequest(curator.KindRotation, ra.Block, ra.Slot, ra.Index, fakeKey)
	if err != nil {
		t.Fatal(err)
	}
	var rot server.KeyResponse
	if err := e.c.Client.PostJSON(e.ctx, "/v1/rotate", req, &rot); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	reg, err := curator.VerifyBundle(rot.Bundle, e.c.Policy, ra.ID, time.Now())
	if err != nil || reg.Kind != curator.KindRotation || reg.TLSKeyHash != sha(a.TLSDER) {
		t.Fatalf("VerifyBundle(after rotation) = %+v, %v; want the rotation with the new TLS key", reg, err)
	}
	if _, err := curator.VerifyBundleTree(ra.Bundle, reg.Tree, ra.ID); err == nil {
		t.Error("bundle from before the rotation verified at the new checkpoint")
	}
	req, err = b.ChangeRequest(curator.KindRevocation, rb.Block, rb.Slot, rb.Index, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rev server.KeyResponse
	if err := e.c.Client.PostJSON(e.ctx, "/v1/revoke", req, &rev); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if _, err := e.c.Client.Bundle(e.ctx, rb.ID); err == nil {
		t.Error("bundle of a revoked ID was served")
	}

	// The agent's view from the first checkpoint: one change each.
	var unknown curator.ID
	unknown[0] = 1
	ids := []curator.ID{ra.ID, rb.ID, unknown}
	resp, err := e.c.Client.Updates(e.ctx, first.Tree.N, ids)
	if err != nil {
		t.Fatal(err)
	}
	u, err := curator.VerifyUpdates(resp, e.c.Policy, first.Checkpoint, ids, time.Now())
	if err != nil {
		t.Fatalf("VerifyUpdates = %v", err)
	}
	if v := u.IDs[ra.ID]; v.Current == nil || v.Current.Kind != curator.KindRotation || len(v.Changes) != 1 || len(v.Opening) == 0 {
		t.Errorf("updates of rotated ID = %+v, want one rotation and an opening", v)
	}
	if v := u.IDs[rb.ID]; v.Current == nil || v.Current.Kind != curator.KindRevocation || len(v.Changes) != 1 {
		t.Errorf("updates of revoked ID = %+v, want one revocation", v)
	}
	if v := u.IDs[unknown]; v.Current != nil {
		t.Errorf("updates of unknown ID = %+v, want absent", v)
	}
	// From scratch, the rotated ID's whole chain comes back.
	resp, err = e.c.Client.Updates(e.ctx, 0, ids[:1])
	if err != nil {
		t.Fatal(err)
	}
	u, err = curator.VerifyUpdates(resp, e.c.Policy, nil, ids[:1], time.Now())
	if err != nil || len(u.IDs[ra.ID].Changes) != 2 {
		t.Fatalf("VerifyUpdates(since 0) = %v, %v; want 2 changes", u, err)
	}
	// A tampered response fails.
	resp.IDs[0].Entries[0].Entry[len(resp.IDs[0].Entries[0].Entry)-1] ^= 1
	if _, err := curator.VerifyUpdates(resp, e.c.Policy, nil, ids[:1], time.Now()); err == nil {
		t.Error("VerifyUpdates accepted a tampered entry")
	}
}

// A curator that sequences a forged token is stopped by the witnesses: they
// check the token signature against the issuer keys and refuse to cosign.
func TestWitnessesRejectForgedToken(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: acceptAll{is}, JWKS: is.JWKS()})
	ctx := t.Context()
	ip := netip.MustParseAddr("10.1.0.1")
	good := curatortest.NewWorkload(t, is.Token(is.AddPod("default", "good", ip), curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
	if _, err := c.Register(ctx, good, fakeKey); err != nil {
		t.Fatal(err)
	}
	before, err := c.Client.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	forged := curatortest.NewWorkload(t, is.ForgedToken(t, is.AddPod("default", "evil", ip), curator.DefaultAudience, time.Now()), ip)
	r, err := c.Register(ctx, forged, fakeKey)
	if err != nil {
		t.Fatalf("Register(forged) = %v; the permissive curator should accept it", err)
	}
	if len(r.Bundle) != 0 {
		t.Error("forged registration got a bundle, so its checkpoint reached a quorum")
	}
	after, err := c.Client.Checkpoint(ctx)
	if err != nil || string(after) != string(before) {
		t.Errorf("published checkpoint changed after a forged registration")
	}
	for i, dir := range c.EvidenceDirs {
		if ents, _ := os.ReadDir(dir); len(ents) == 0 {
			t.Errorf("witness %d kept no evidence", i)
		}
	}
}

// acceptAll is a curator-side reviewer that approves every token, standing
// in for a compromised curator.
type acceptAll struct{ is *curatortest.Issuer }

func (a acceptAll) Review(_ context.Context, token string) (*server.PodIdentity, error) {
	return &server.PodIdentity{Namespace: "default", PodName: "x", PodUID: "x", PodIPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}}, nil
}

func newFuzzEnv(f *testing.F) *env {
	is := curatortest.NewIssuer(f)
	c := curatortest.Start(f, curatortest.Options{Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	return &env{is: is, c: c}
}

func curatortestB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// TestCosignatureResultCountedOnce runs a curator whose one witness
// rejects every checkpoint, then one whose witness replies with an invalid
// cosignature. Each request counts once, under rejected or error.
func TestCosignatureResultCountedOnce(t *testing.T) {
	for _, c := range []struct {
		name     string
		reply    func(http.ResponseWriter)
		result   string
		unwanted string
	}{
		{"rejected", func(w http.ResponseWriter) { http.Error(w, "entry 0 breaks the rules", http.StatusUnprocessableEntity) }, "rejected", "error"},
		{"invalid cosignature", func(w http.ResponseWriter) { w.Write([]byte("— w.test AAAA\n")) }, "error", "rejected"},
	} {
		t.Run(c.name, func(t *testing.T) {
			witness := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { c.reply(w) }))
			defer witness.Close()
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			v, err := curator.NewCosignatureVerifier(curator.NewCosignatureSigner("w.test", k).VerifierKey())
			if err != nil {
				t.Fatal(err)
			}
			is := curatortest.NewIssuer(t)
			key := curatortest.NewLogKey(t)
			signer, _ := note.NewSigner(key.Signer)
			st, err := store.Open(filepath.Join(t.TempDir(), "curator.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			reg := prometheus.NewRegistry()
			l, err := server.New(server.Config{Origin: curatortest.Origin, Signer: signer, VerifierKey: key.VKey, Store: st,
				Scheme: scheme, Reviewer: is, Witnesses: []server.Witness{{URL: witness.URL, Verifier: v}}, Registry: reg})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()

			ip := netip.AddrFrom4([4]byte{10, 1, 1, 1})
			w := curatortest.NewWorkload(t, is.Token(is.AddPod("default", "p", ip), curator.DefaultAudience, time.Now(), 10*time.Minute), ip)
			block, slot, _, err := l.Reserve(curator.IDFromToken(w.Token))
			if err != nil {
				t.Fatal(err)
			}
			req, err := w.RegisterRequest(block, slot, fakeKey)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := l.Submit(t.Context(), curator.KindRegistration, req)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Bundle) != 0 {
				t.Fatal("registration got a bundle without a cosignature")
			}
			if got := cosignatureRequests(t, reg, c.result); got != 1 {
				t.Errorf("mazu_curator_cosignature_requests_total{result=%s} = %v, want 1", c.result, got)
			}
			if got := cosignatureRequests(t, reg, c.unwanted); got != 0 {
				t.Errorf("mazu_curator_cosignature_requests_total{result=%s} = %v, want 0", c.unwanted, got)
			}
		})
	}
}

// cosignatureRequests returns the value of
// mazu_curator_cosignature_requests_total{result=result}, or 0 when the
// series does not exist.
func cosignatureRequests(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mazu_curator_cosignature_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
