package curatortest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/curator/witness"
)

// Origin is the log origin of test clusters.
const Origin = "kc.test.local/registrations"

// LogKey is a log key pair for tests.
type LogKey struct{ Signer, VKey string }

// NewLogKey generates a log key named Origin.
func NewLogKey(tb testing.TB) LogKey {
	s, v, err := note.GenerateKey(rand.Reader, Origin)
	if err != nil {
		tb.Fatal(err)
	}
	return LogKey{s, v}
}

// Options configure a test cluster.
type Options struct {
	Witnesses int
	Scheme    curator.Scheme
	Reviewer  server.TokenReviewer
	JWKS      []byte
	Key       *LogKey // nil generates one
	// WitnessKeys reuses the witnesses of another cluster (a fork).
	WitnessOf *Cluster
	MaxBatch  int
	Now       func() time.Time // the curator's clock; nil is time.Now
	Registry  prometheus.Registerer
	NodeCheck bool
}

// A Cluster is a curator with its witnesses, all on loopback.
type Cluster struct {
	Key          LogKey
	Log          *server.Log
	URL          string
	Store        *store.Store
	Witnesses    []*witness.Witness
	WitnessURLs  []string
	WitnessKeys  []*curator.CosignatureSigner
	EvidenceDirs []string
	Policy       *curator.Policy
	Client       *curator.Client
}

func listen(tb testing.TB, h http.Handler) (net.Listener, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln, "http://" + ln.Addr().String()
}

func serve(tb testing.TB, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
}

// Start starts a curator and opts.Witnesses witnesses.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	c := &Cluster{}
	if opts.Key != nil {
		c.Key = *opts.Key
	} else {
		c.Key = NewLogKey(tb)
	}
	signer, err := note.NewSigner(c.Key.Signer)
	if err != nil {
		tb.Fatal(err)
	}
	logVerifier, _ := note.NewVerifier(c.Key.VKey)
	curLn, curURL := listen(tb, nil)
	c.URL = curURL
	dir := tb.TempDir()

	var ws []server.Witness
	var vkeys []string
	if opts.WitnessOf != nil {
		o := opts.WitnessOf
		c.Witnesses, c.WitnessURLs, c.WitnessKeys, c.EvidenceDirs = o.Witnesses, o.WitnessURLs, o.WitnessKeys, o.EvidenceDirs
	} else {
		jwks, err := curator.ParseJWKS(opts.JWKS)
		if err != nil {
			tb.Fatal(err)
		}
		for i := range opts.Witnesses {
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			ws := curator.NewCosignatureSigner(fmt.Sprintf("witness-%d.test", i), k)
			st, err := store.Open(filepath.Join(dir, fmt.Sprintf("witness-%d.db", i)))
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { st.Close() })
			ev := filepath.Join(dir, fmt.Sprintf("evidence-%d", i))
			if err := mkdir(ev); err != nil {
				tb.Fatal(err)
			}
			w, err := witness.New(witness.Config{Origin: Origin, LogVerifier: logVerifier, Signer: ws, Store: st,
				Scheme: opts.Scheme, JWKS: jwks, CuratorURL: curURL, EvidenceDir: ev, Logger: TestLogger(tb)})
			if err != nil {
				tb.Fatal(err)
			}
			ln, u := listen(tb, nil)
			serve(tb, ln, w.Handler())
			c.Witnesses = append(c.Witnesses, w)
			c.WitnessURLs = append(c.WitnessURLs, u)
			c.WitnessKeys = append(c.WitnessKeys, ws)
			c.EvidenceDirs = append(c.EvidenceDirs, ev)
		}
	}
	for i, u := range c.WitnessURLs {
		v, err := curator.NewCosignatureVerifier(c.WitnessKeys[i].VerifierKey())
		if err != nil {
			tb.Fatal(err)
		}
		ws = append(ws, server.Witness{URL: u, Verifier: v})
		vkeys = append(vkeys, c.WitnessKeys[i].VerifierKey())
	}
	st, err := store.Open(filepath.Join(dir, "curator.db"))
	if err != nil {
		tb.Fatal(err)
	}
	c.Store = st
	l, err := server.New(server.Config{Origin: Origin, Signer: signer, VerifierKey: c.Key.VKey, Store: st,
		Scheme: opts.Scheme, Reviewer: opts.Reviewer, Witnesses: ws, WitnessTimeout: 5 * time.Second, MaxBatch: opts.MaxBatch,
		Logger: TestLogger(tb), Now: opts.Now, Registry: opts.Registry,
		NodeCheck: opts.NodeCheck})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close(); st.Close() })
	c.Log = l
	serve(tb, curLn, l.Handler())
	c.Policy, err = curator.NewPolicy(Origin, c.Key.VKey, vkeys, 0)
	if err != nil {
		tb.Fatal(err)
	}
	c.Policy.MaxAge = 5 * time.Minute
	c.Client = &curator.Client{URL: c.URL}
	return c
}

// Register reserves a slot for w and registers it.
func (c *Cluster) Register(ctx context.Context, w *Workload, mk KeyMaker) (*server.KeyResponse, error) {
	var res server.ReserveResponse
	if err := c.Client.PostJSON(ctx, "/v1/reserve", map[string]string{"token": w.Token}, &res); err != nil {
		return nil, fmt.Errorf("reserve: %w", err)
	}
	req, err := w.RegisterRequest(res.Block, res.Slot, mk)
	if err != nil {
		return nil, err
	}
	var resp server.KeyResponse
	if err := c.Client.PostJSON(ctx, "/v1/register", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}
