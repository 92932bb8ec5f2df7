package kubetest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/fakerbe"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

func TestMain(m *testing.M) {
	testbed.Main(m, testbed.Options{NoControllerManager: true})
}

// getTestbed returns the shared testbed. It skips when none runs, unless
// MAZU_REQUIRE_TESTBED=1, which turns the skip into a failure.
func getTestbed(t *testing.T) *testbed.Testbed {
	t.Helper()
	var tb *testbed.Testbed
	t.Run("testbed", func(st *testing.T) { tb = testbed.Get(st) })
	if tb == nil {
		if os.Getenv("MAZU_REQUIRE_TESTBED") == "1" {
			t.Fatal("testbed unavailable and MAZU_REQUIRE_TESTBED=1 forbids skipping")
		}
		t.Skip("testbed unavailable")
	}
	return tb
}

var scheme = fakerbe.Scheme{N: 16}

func fakeKey(slot int) ([]byte, []byte, error) {
	pk := make([]byte, 32)
	rand.Read(pk)
	return pk, scheme.Helpers(slot, pk), nil
}

// issuerJWKS reads the service-account issuer keys from the API server.
func issuerJWKS(t *testing.T, tb *testbed.Testbed) []byte {
	b, err := tb.Client().Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("get issuer JWKS: %v", err)
	}
	return b
}

type kubeEnv struct {
	tb   *testbed.Testbed
	c    *curatortest.Cluster
	node *testbed.Node
	ns   string
}

func newKubeEnv(t *testing.T, now func() time.Time) *kubeEnv {
	tb := getTestbed(t)
	reviewer := &server.KubeReviewer{Client: tb.Client(), Audience: curator.DefaultAudience}
	c := curatortest.Start(t, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: reviewer,
		JWKS: issuerJWKS(t, tb), Now: now})
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 20 {
		name = name[:20]
	}
	node := testbed.NewNode(t, tb, "cur-"+name)
	return &kubeEnv{tb: tb, c: c, node: node, ns: "curator-test"}
}

func (k *kubeEnv) pod(t *testing.T, name string) *testbed.Pod {
	return testbed.NewPod(t, k.tb, k.node, testbed.PodSpec{Namespace: k.ns, Name: name, ServiceAccount: "workload"})
}

func (k *kubeEnv) token(t *testing.T, p *testbed.Pod, aud string) string {
	tok, err := k.tb.RequestToken(t.Context(), p, aud, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRegisterWithPodBoundTokens(t *testing.T) {
	k := newKubeEnv(t, nil)
	ctx := t.Context()
	var ids []curator.ID
	for _, name := range []string{"a", "b", "c"} {
		p := k.pod(t, "reg-"+name)
		w := curatortest.NewWorkload(t, k.token(t, p, curator.DefaultAudience), p.IP)
		r, err := k.c.Register(ctx, w, fakeKey)
		if err != nil {
			t.Fatalf("Register(pod %s) = %v", p.Name, err)
		}
		reg, err := curator.VerifyBundle(r.Bundle, k.c.Policy, r.ID, time.Now())
		if err != nil {
			t.Fatalf("VerifyBundle(pod %s) = %v", p.Name, err)
		}
		if reg.PodIP != p.IP {
			t.Errorf("bundle pod IP = %v, want %v", reg.PodIP, p.IP)
		}
		ids = append(ids, r.ID)
	}
	// The witnesses checked every token signature against the issuer
	// JWKS: all of them cosigned the final checkpoint.
	cp, err := k.c.Client.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opened, err := k.c.Policy.Open(cp, time.Now())
	if err != nil || opened.Signed != 4 {
		t.Fatalf("Open(checkpoint) = %+v, %v; want 4 cosignatures", opened, err)
	}
}

// TestNodeCheckOnAPIServer: a registration token for a pod on node B,
// sent by the agent of node A, is rejected.
func TestNodeCheckOnAPIServer(t *testing.T) {
	tb := getTestbed(t)
	reviewer := &server.KubeReviewer{Client: tb.Client(), Audience: curator.DefaultAudience}
	c := curatortest.Start(t, curatortest.Options{Witnesses: 1, Scheme: scheme, Reviewer: reviewer,
		JWKS: issuerJWKS(t, tb), NodeCheck: true})
	nodeA, nodeB := testbed.NewNode(t, tb, "cur-node-a"), testbed.NewNode(t, tb, "cur-node-b")
	agentA := agentPod(t, tb, nodeA)
	agentTok := func() string {
		tok, err := tb.RequestToken(t.Context(), agentA, curator.DefaultAudience, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct {
		name string
		node *testbed.Node
		want string
	}{
		{"pod on the agent's node", nodeA, ""},
		{"pod on another node", nodeB, "the agent runs on node cur-node-a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testbed.NewPod(t, tb, tc.node, testbed.PodSpec{Namespace: "curator-test", Name: "nc-" + tc.node.Name, ServiceAccount: "workload"})
			tok, err := tb.RequestToken(t.Context(), p, curator.DefaultAudience, 10*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			w := curatortest.NewWorkload(t, tok, p.IP)
			w.AgentToken = agentTok()
			_, err = c.Register(t.Context(), w, fakeKey)
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

func TestTokenRejectionsOnAPIServer(t *testing.T) {
	k := newKubeEnv(t, nil)
	ctx := t.Context()
	p := k.pod(t, "victim")
	good := k.token(t, p, curator.DefaultAudience)

	gone := k.pod(t, "gone")
	goneToken := k.token(t, gone, curator.DefaultAudience)
	if err := k.tb.DeletePod(ctx, gone); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, token, want string
	}{
		{"forged signature", forge(t, good), "Kubernetes API"},
		{"wrong audience", k.token(t, p, "https://kubernetes.default.svc"), `lacks "mazu-curator"`},
		{"deleted pod", goneToken, "Kubernetes API"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := curatortest.NewWorkload(t, tc.token, p.IP)
			_, err := k.c.Register(ctx, w, fakeKey)
			var he *curator.HTTPError
			if !errors.As(err, &he) || he.Code != 403 || !strings.Contains(he.Body, tc.want) {
				t.Fatalf("Register = %v, want HTTP 403 containing %q", err, tc.want)
			}
			t.Logf("rejected: %s", he.Body)
		})
	}
}

// An expired token: the curator's clock runs an hour ahead of the token's
// expiry, as it would if the token were replayed later. The test moves the
// clock because Kubernetes issues no service-account token valid for less
// than 10 minutes (the minimum expirationSeconds, as the k8s.io/api v0.37
// docs state), so a test cannot wait for a real token to expire. It covers
// the curator's own expiry check (CheckClaims at the curator's clock) on a
// token the API server issued, which runs before the TokenReview, and the
// 403 reply. The API server's own expiry check is not exercised.
func TestExpiredTokenOnAPIServer(t *testing.T) {
	k := newKubeEnv(t, func() time.Time { return time.Now().Add(time.Hour) })
	p := k.pod(t, "late")
	w := curatortest.NewWorkload(t, k.token(t, p, curator.DefaultAudience), p.IP)
	_, err := k.c.Register(t.Context(), w, fakeKey)
	var he *curator.HTTPError
	if !errors.As(err, &he) || he.Code != 403 || !strings.Contains(he.Body, "token expired") {
		t.Fatalf("Register = %v, want HTTP 403 token expired", err)
	}
}

// forge re-signs a real token's header and claims with a key the issuer
// never published.
func forge(t *testing.T, token string) string {
	input, _, err := curator.SplitToken(token)
	if err != nil {
		t.Fatal(err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

var _ = context.Background
