package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/curator/witness"
)

func runWitness(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("witness", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFlags
	lf.register(fs)
	listen := fs.String("listen", "127.0.0.1:8444", "add-checkpoint address (port 0 picks one, printed on stdout)")
	metricsAddr := fs.String("metrics-listen", "", "Prometheus metrics address; empty disables")
	dbPath := fs.String("db", "witness.db", "bbolt state file")
	keyPath := fs.String("key", "", "witness key (from keygen -kind witness)")
	logKeyPath := fs.String("log-key", "", "the curator's verifier key file (.vkey)")
	crsPath := fs.String("crs", "", "RBE CRS file")
	curatorURL := fs.String("curator", "", "curator base URL, for tiles and token signatures")
	jwksPath := fs.String("jwks", "", "service-account issuer JWKS file; empty fetches /openid/v1/jwks with -kubeconfig")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig to fetch the issuer JWKS")
	evidence := fs.String("evidence", "", "folder for rejected requests; empty keeps none")
	audience := fs.String("audience", curator.DefaultAudience, "token audience reserved for the curator")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	if *keyPath == "" || *logKeyPath == "" || *crsPath == "" || *curatorURL == "" {
		return errors.New("witness needs -key, -log-key, -crs and -curator")
	}
	signer, err := loadWitnessKey(*keyPath)
	if err != nil {
		return err
	}
	vkey, err := readTrimmed(*logKeyPath)
	if err != nil {
		return fmt.Errorf("read -log-key: %w", err)
	}
	logVerifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("parse -log-key: %w", err)
	}
	var jwksData []byte
	if *jwksPath != "" {
		jwksData, err = os.ReadFile(*jwksPath)
	} else {
		jwksData, err = fetchJWKS(ctx, *kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("load issuer JWKS: %w", err)
	}
	jwks, err := curator.ParseJWKS(jwksData)
	if err != nil {
		return err
	}
	scheme, err := loadScheme(*crsPath)
	if err != nil {
		return err
	}
	if *evidence != "" {
		if err := os.MkdirAll(*evidence, 0o700); err != nil {
			return err
		}
	}
	st, err := store.Open(*dbPath)
	if err != nil {
		return err
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	w, err := witness.New(witness.Config{Origin: logVerifier.Name(), LogVerifier: logVerifier, Signer: signer, Store: st,
		Scheme: scheme, JWKS: jwks, Audience: *audience, CuratorURL: *curatorURL, EvidenceDir: *evidence,
		Logger: log, Registry: reg})
	if err != nil {
		return err
	}
	if *metricsAddr != "" {
		if _, _, err := serveHTTP(ctx, log, "metrics", *metricsAddr, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})); err != nil {
			return err
		}
	}
	addr, wait, err := serveHTTP(ctx, log, "witness", *listen, w.Handler())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "listening on %s\n", addr)
	return wait()
}

func fetchJWKS(ctx context.Context, kubeconfig string) ([]byte, error) {
	kc, err := kubeClient(kubeconfig)
	if err != nil {
		return nil, err
	}
	return kc.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
}
