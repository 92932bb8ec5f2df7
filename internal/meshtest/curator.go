// Package meshtest runs the parts of a mazu mesh that end-to-end tests and
// the demo need beside the testbed: a curator with witnesses on loopback,
// sharing one RBE CRS, and the files node agents read.
package meshtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/mod/sumdb/note"
	"k8s.io/client-go/kubernetes"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/curator/witness"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// Origin is the log origin of the test curator.
const Origin = "mazu.test/registrations"

// CuratorOptions configures StartCurator.
type CuratorOptions struct {
	Client kubernetes.Interface
	// Dir holds the databases and the files agents read.
	Dir string
	// Witnesses is the number of witnesses; the quorum is ⌊2n/3⌋+1.
	Witnesses int
	// BlockSize is the RBE block size n; small sizes keep KeyGen fast.
	BlockSize int
	// Audience is the token audience the curator reviews registrations
	// for. Empty means curator.DefaultAudience; a chart install uses the
	// log origin.
	Audience string
	Logger   *slog.Logger
	// ForkOf starts a split-view double of another curator, for tests of
	// fork detection: it signs with ForkOf's log key, uses ForkOf's CRS, and
	// its witnesses sign with ForkOf's witness keys but keep their own
	// state. The two logs then diverge while one policy accepts both, as if
	// the log key and the witnesses were compromised. Witnesses and
	// BlockSize are taken from ForkOf.
	ForkOf *Curator
	// Ceremony starts the curator and witnesses without a CRS and logs the
	// CRS's contribution as the log's first entry, so nodes can take the
	// CRS from the log. CRSFile is still written. Not with ForkOf.
	Ceremony bool
}

// Curator is a running curator and its witnesses.
type Curator struct {
	URL          string
	LogVKey      string
	WitnessVKeys []string
	CRS          *rbe.CRS
	Policy       *curator.Policy
	// CRSFile, LogKeyFile and WitnessKeyFiles are what agents are given.
	CRSFile         string
	LogKeyFile      string
	WitnessKeyFiles []string
	EvidenceDirs    []string

	log     *server.Log
	servers []*http.Server
	stores  []*store.Store
	// logSKey and witnessKeys are kept so that ForkOf can reuse them.
	logSKey     string
	witnessKeys []ed25519.PrivateKey
}

// StartCurator starts a curator and its witnesses on 127.0.0.1. The CRS
// comes from one local ceremony contribution, which is fit for tests only.
func StartCurator(ctx context.Context, opts CuratorOptions) (_ *Curator, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = 16
	}
	c := &Curator{}
	var contribution rbe.Contribution
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if opts.ForkOf != nil {
		c.CRS = opts.ForkOf.CRS
		opts.Witnesses = len(opts.ForkOf.witnessKeys)
	} else {
		start, err := rbe.NewCeremony(opts.BlockSize)
		if err != nil {
			return nil, err
		}
		if c.CRS, contribution.Proof, err = rbe.Contribute(start, rand.Reader); err != nil {
			return nil, err
		}
		contribution.CRS = c.CRS
	}
	crsBytes, err := c.CRS.MarshalBinary()
	if err != nil {
		return nil, err
	}
	c.CRSFile = filepath.Join(opts.Dir, "crs.bin")
	if err := os.WriteFile(c.CRSFile, crsBytes, 0o644); err != nil {
		return nil, err
	}
	newScheme := func() curator.Scheme { return rbescheme.New(c.CRS) }
	if opts.Ceremony {
		newScheme = func() curator.Scheme { return rbescheme.NewFollower() }
	}

	skey, vkey := "", ""
	if opts.ForkOf != nil {
		skey, vkey = opts.ForkOf.logSKey, opts.ForkOf.LogVKey
	} else if skey, vkey, err = note.GenerateKey(rand.Reader, Origin); err != nil {
		return nil, err
	}
	c.logSKey = skey
	c.LogVKey = vkey
	c.LogKeyFile = filepath.Join(opts.Dir, "log.vkey")
	if err := os.WriteFile(c.LogKeyFile, []byte(vkey), 0o644); err != nil {
		return nil, err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	logVerifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	curatorLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c.URL = "http://" + curatorLn.Addr().String()

	jwks, err := opts.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		curatorLn.Close()
		return nil, fmt.Errorf("read issuer JWKS: %w", err)
	}
	parsedJWKS, err := curator.ParseJWKS(jwks)
	if err != nil {
		curatorLn.Close()
		return nil, err
	}
	var witnesses []server.Witness
	for i := range opts.Witnesses {
		var key ed25519.PrivateKey
		if opts.ForkOf != nil {
			key = opts.ForkOf.witnessKeys[i]
		} else if _, key, err = ed25519.GenerateKey(rand.Reader); err != nil {
			curatorLn.Close()
			return nil, err
		}
		c.witnessKeys = append(c.witnessKeys, key)
		cosigner := curator.NewCosignatureSigner(fmt.Sprintf("witness-%d.mazu.test", i), key)
		st, err := store.Open(filepath.Join(opts.Dir, fmt.Sprintf("witness-%d.db", i)))
		if err != nil {
			curatorLn.Close()
			return nil, err
		}
		c.stores = append(c.stores, st)
		evidence := filepath.Join(opts.Dir, fmt.Sprintf("evidence-%d", i))
		if err := os.MkdirAll(evidence, 0o755); err != nil {
			curatorLn.Close()
			return nil, err
		}
		w, err := witness.New(witness.Config{
			Origin: Origin, LogVerifier: logVerifier, Signer: cosigner, Store: st, Scheme: newScheme(),
			Audience: opts.Audience, JWKS: parsedJWKS, CuratorURL: c.URL, EvidenceDir: evidence, Logger: opts.Logger,
		})
		if err != nil {
			curatorLn.Close()
			return nil, err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			curatorLn.Close()
			return nil, err
		}
		c.serve(ln, w.Handler())
		verifier, err := curator.NewCosignatureVerifier(cosigner.VerifierKey())
		if err != nil {
			curatorLn.Close()
			return nil, err
		}
		witnesses = append(witnesses, server.Witness{URL: "http://" + ln.Addr().String(), Verifier: verifier})
		c.WitnessVKeys = append(c.WitnessVKeys, cosigner.VerifierKey())
		keyFile := filepath.Join(opts.Dir, fmt.Sprintf("witness-%d.vkey", i))
		if err := os.WriteFile(keyFile, []byte(cosigner.VerifierKey()), 0o644); err != nil {
			curatorLn.Close()
			return nil, err
		}
		c.WitnessKeyFiles = append(c.WitnessKeyFiles, keyFile)
		c.EvidenceDirs = append(c.EvidenceDirs, evidence)
	}

	st, err := store.Open(filepath.Join(opts.Dir, "curator.db"))
	if err != nil {
		curatorLn.Close()
		return nil, err
	}
	c.stores = append(c.stores, st)
	audience := opts.Audience
	if audience == "" {
		audience = curator.DefaultAudience
	}
	c.log, err = server.New(server.Config{
		Origin: Origin, Signer: signer, VerifierKey: vkey, Store: st, Scheme: newScheme(),
		Reviewer: &server.KubeReviewer{Client: opts.Client, Audience: audience}, Audience: audience,
		Witnesses: witnesses, WitnessTimeout: 10 * time.Second, Logger: opts.Logger,
	})
	if err != nil {
		curatorLn.Close()
		return nil, err
	}
	c.serve(curatorLn, c.log.Handler())
	if opts.Ceremony {
		enc, err := rbescheme.EncodeContribution(contribution)
		if err != nil {
			return nil, err
		}
		if _, err := c.log.SubmitContribution(ctx, enc); err != nil {
			return nil, fmt.Errorf("log the CRS contribution: %w", err)
		}
	}
	if c.Policy, err = curator.NewPolicy(Origin, vkey, c.WitnessVKeys, 0); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Curator) serve(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	c.servers = append(c.servers, srv)
	go srv.Serve(ln)
}

// Stop closes the servers and databases.
func (c *Curator) Stop() error {
	var errs []error
	for _, srv := range c.servers {
		errs = append(errs, srv.Close())
	}
	if c.log != nil {
		c.log.Close()
	}
	for _, st := range c.stores {
		errs = append(errs, st.Close())
	}
	return errors.Join(errs...)
}
