package threat

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/internal/rogue"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// rogueMesh is a mesh of its own for one test, whose curator misbehaves on
// demand: a rogue.Curator with two witnesses, and two nodes with an agent
// each. Agent i reads the curator through the front door frontName(i), so
// the curator can show each node another log. The attacks that change what
// agents trust cannot share the package's mesh.
type rogueMesh struct {
	*mesh
	cur *rogue.Curator
}

// frontName is the rogue curator's front door for agent i.
func frontName(i int) string { return fmt.Sprintf("agent-%d", i) }

// newRogueMesh starts a rogueMesh whose nodes are named prefix-1 and
// prefix-2. The package's mesh provides the testbed, mazu-cni and the bare
// node for attacker pods. Everything stops when the test ends.
func newRogueMesh(t *testing.T, prefix string) *rogueMesh {
	t.Helper()
	shared := sharedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	logw, err := os.Create(filepath.Join(dir, "curator.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logw.Close() })
	cur, err := rogue.Start(ctx, rogue.Options{
		Client: shared.tb.Client(), Dir: filepath.Join(dir, "curator"), Fronts: []string{frontName(0), frontName(1)},
		Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatalf("start the rogue curator: %v", err)
	}
	t.Cleanup(cur.Stop)
	rm := &rogueMesh{mesh: &mesh{tb: shared.tb, cni: shared.cni, bare: shared.bare, dir: dir}, cur: cur}
	for i := range rm.agents {
		node := testbed.NewNode(t, shared.tb, fmt.Sprintf("%s-%d", prefix, i+1))
		// startAgent reads only the public fields of a meshtest.Curator:
		// these point the agent at its own front door.
		view := &meshtest.Curator{URL: cur.URL(frontName(i)), CRSFile: cur.CRSFile, LogVKey: cur.LogVKey, WitnessVKeys: cur.WitnessVKeys}
		na, stop, err := startAgent(ctx, shared.tb, view, node, filepath.Join(dir, node.Name))
		if stop != nil {
			t.Cleanup(stop)
		}
		if err != nil {
			t.Fatal(err)
		}
		rm.agents[i] = na
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, na := range rm.agents {
			if data, err := os.ReadFile(na.logFile); err == nil {
				t.Logf("log of the agent on %s:\n%s", na.node.Name, data)
			}
		}
		if data, err := os.ReadFile(logw.Name()); err == nil {
			t.Logf("log of the rogue curator:\n%s", data)
		}
	})
	return rm
}

// registeredID is the curator ID of a mazu workload, learnt as anyone can:
// the hash of the token in the certificate its HBONE port presents.
func registeredID(t *testing.T, from, pod *testbed.Pod) curator.ID {
	t.Helper()
	return curator.IDFromToken(harvestIdentity(t, from, pod).Token)
}

// viewStaple is the staple an attacker builds for id from a rogue log: the
// view's proof bundle and the block opening at the same checkpoint.
func viewStaple(t *testing.T, v *rogue.View, id curator.ID) []byte {
	t.Helper()
	bundle, err := v.Bundle(id)
	if err != nil {
		t.Fatalf("bundle of %v in the rogue log: %v", id, err)
	}
	resp, err := v.Updates(&curator.UpdatesRequest{IDs: []curator.ID{id}})
	if err != nil || len(resp.IDs) != 1 {
		t.Fatalf("opening of %v in the rogue log: %v", id, err)
	}
	iu := resp.IDs[0]
	staple := &rbeauth.Staple{Bundle: bundle, Block: iu.Block, Version: iu.BlockVersion, Digest: iu.BlockDigest, BlockProof: iu.BlockProof, Opening: iu.Opening}
	b, err := staple.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// certificateWith returns a workload certificate for id that carries token,
// with key as its TLS key.
func certificateWith(t *testing.T, id rbeauth.Identity, token string, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	der, err := rbeauth.NewCertificate(key, id, token, time.Now().Add(10*time.Minute))
	if err != nil {
		t.Fatalf("certificate for %s: %v", id, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// alerts returns the agent's mazu_curator_alerts_total count for alert.
func (na *nodeAgent) alerts(t *testing.T, alert string) float64 {
	t.Helper()
	return counterSum(t, na.registry, "mazu_curator_alerts_total", map[string]string{"alert": alert})
}

// logContains reports whether a line of the agent's log contains every one
// of parts.
func (na *nodeAgent) logContains(t *testing.T, parts ...string) bool {
	t.Helper()
	data, err := os.ReadFile(na.logFile)
	if err != nil {
		t.Fatalf("read the log of the agent on %s: %v", na.node.Name, err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		all := true
		for _, p := range parts {
			all = all && bytes.Contains(line, []byte(p))
		}
		if all {
			return true
		}
	}
	return false
}

// waitEvent waits up to timeout for a Kubernetes Event in namespace with
// reason whose involved object is named object, and returns its message.
func waitEvent(t *testing.T, tb *testbed.Testbed, namespace, reason, object string, timeout time.Duration) string {
	t.Helper()
	var msg string
	eventually(t, timeout, "Event "+reason+" on "+namespace+"/"+object, func() bool {
		list, err := tb.Client().CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range list.Items {
			if e.Reason == reason && e.InvolvedObject.Name == object {
				msg = e.Message
				return true
			}
		}
		return false
	})
	return msg
}

// expectWitnessesRejected fails the test unless all want witnesses
// rejected the checkpoint with HTTP 422 and a body that contains cause.
func expectWitnessesRejected(t *testing.T, rejections []rogue.Rejection, cosigned, want int, cause string) {
	t.Helper()
	if cosigned != 0 || len(rejections) != want {
		t.Fatalf("witnesses: %d cosigned, %d rejected (%v); expected all %d to reject", cosigned, len(rejections), rejections, want)
	}
	for _, r := range rejections {
		if r.Status != 422 || !strings.Contains(r.Body, cause) {
			t.Fatalf("witness %s returned %d %q; expected 422 containing %q", r.Witness, r.Status, r.Body, cause)
		}
		t.Logf("witness %s rejected: %d %s", r.Witness, r.Status, r.Body)
	}
}

// expectEvidence fails the test unless at least want evidence files exist
// and each contains a signed checkpoint of the curator's log.
func expectEvidence(t *testing.T, files []string, want int) {
	t.Helper()
	if len(files) < want {
		t.Fatalf("%d evidence files kept (%v), want at least %d", len(files), files, want)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("read evidence: %v", err)
		}
		if !bytes.Contains(data, []byte(rogue.Origin)) || !bytes.Contains(data, []byte("\n— ")) {
			t.Fatalf("evidence %s contains no signed checkpoint of %s:\n%s", f, rogue.Origin, data)
		}
		t.Logf("evidence kept: %s", f)
	}
}

// registerToken registers a fresh token of pod with the curator at url, as
// a node agent does: reserve a slot, derive the RBE key under crs, prove
// possession of a new TLS key. It returns the registration's log index.
func registerToken(ctx context.Context, tb *testbed.Testbed, crs *rbe.CRS, url string, pod *testbed.Pod) (uint64, error) {
	token, err := tb.RequestToken(ctx, pod, curator.DefaultAudience, 10*time.Minute)
	if err != nil {
		return 0, err
	}

	client := &curator.Client{URL: url}
	var reserved server.ReserveResponse
	if err := client.PostJSON(ctx, "/v1/reserve", map[string]string{"token": token}, &reserved); err != nil {
		return 0, fmt.Errorf("reserve a slot for a token of %s/%s: %w", pod.Namespace, pod.Name, err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return 0, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return 0, err
	}
	sk, err := rbe.DeriveSecretKey([]byte(token), pod.IP.AsSlice(), spki)
	if err != nil {
		return 0, err
	}
	pk, err := crs.KeyGen(sk, int(reserved.Slot))
	if err != nil {
		return 0, err
	}
	rbeKey, err := pk.MarshalBinary()
	if err != nil {
		return 0, err
	}

	entry := &curator.Entry{Kind: curator.KindRegistration, ID: curator.IDFromToken(token), PrevIndex: curator.NoPrev,
		RBEKey: rbeKey, TLSKey: spki, PodIP: pod.IP.AsSlice()}
	pop, err := curator.SignPoP(key, curator.PoPMessage(entry))
	if err != nil {
		return 0, err
	}
	req := &server.KeyRequest{Token: token, Block: reserved.Block, Slot: reserved.Slot, RBEKey: rbeKey, TLSKey: spki, PodIP: pod.IP.String(), PoPSig: pop}
	var resp server.KeyResponse
	if err := client.PostJSON(ctx, "/v1/register", req, &resp); err != nil {
		return 0, fmt.Errorf("register a token of %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return resp.Index, nil
}

// publishedSize returns the size of the checkpoint that the curator at url
// publishes, verified under policy, or 0 before the first one.
func publishedSize(t *testing.T, url string, policy *curator.Policy) int64 {
	t.Helper()
	raw, err := (&curator.Client{URL: url}).Checkpoint(context.Background())
	var httpErr *curator.HTTPError
	if errors.As(err, &httpErr) && httpErr.Code == http.StatusNotFound {
		return 0
	}
	if err != nil {
		t.Fatalf("read the curator's checkpoint: %v", err)
	}
	cp, err := policy.Open(raw, time.Now())
	if err != nil {
		t.Fatalf("open the curator's checkpoint: %v", err)
	}
	return cp.Tree.N
}

// stapledCheckpoint returns the checkpoint note in a staple's bundle.
func stapledCheckpoint(t *testing.T, staple []byte) []byte {
	t.Helper()
	s, err := rbeauth.ParseStaple(staple)
	if err != nil {
		t.Fatalf("parse staple: %v", err)
	}
	b, err := curator.ParseBundle(s.Bundle)
	if err != nil {
		t.Fatalf("parse bundle: %v", err)
	}
	return b.Checkpoint
}
