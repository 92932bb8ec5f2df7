package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/curator/witness"
)

func runWitness(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "key" {
		return runWitnessKey(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("witness", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFlags
	lf.register(fs)
	dataDir := envOr("MAZU_DATA_DIR", "")
	listen := fs.String("listen", envOr("MAZU_HTTP_ADDRESS", "127.0.0.1:8444"), "add-checkpoint address (port 0 picks one, printed on stdout) (env MAZU_HTTP_ADDRESS)")
	metricsAddr := fs.String("metrics-listen", envOr("MAZU_METRICS_ADDRESS", ""), "Prometheus metrics address; empty disables (env MAZU_METRICS_ADDRESS)")
	dbPath := fs.String("db", cmpOr(dataPath(dataDir, "witness.db"), "witness.db"), "bbolt state file (under $MAZU_DATA_DIR when it is set)")
	keyPath := fs.String("key", dataPath(dataDir, "witness.key"), "witness key (from keygen -kind witness); under $MAZU_DATA_DIR it is generated on first start, named $MAZU_WITNESS_NAME")
	logKeyPath := fs.String("log-key", envOr("MAZU_LOG_KEY_FILE", ""), "the curator's verifier key file (.vkey) (env MAZU_LOG_KEY_FILE)")
	crsPath := fs.String("crs", envOr("MAZU_CRS_FILE", ""), "RBE CRS file; empty takes the CRS from the log's ceremony entries (env MAZU_CRS_FILE)")
	curatorURL := fs.String("curator", envOr("MAZU_CURATOR_URL", ""), "curator base URL, for tiles and token signatures (env MAZU_CURATOR_URL)")
	jwksPath := fs.String("jwks", envOr("MAZU_JWKS_FILE", ""), "the mesh cluster's service-account issuer JWKS file (kubectl get --raw /openid/v1/jwks); if it is missing and -kubeconfig is set, it is fetched once and written there (env MAZU_JWKS_FILE)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the mesh cluster, to fetch a missing -jwks file; empty never fetches")
	evidence := fs.String("evidence", dataPath(dataDir, "evidence"), "folder for rejected requests; empty keeps none (under $MAZU_DATA_DIR when it is set)")
	audience := fs.String("audience", envOr("MAZU_LOG_ORIGIN", curator.DefaultAudience), "token audience reserved for the curator (env MAZU_LOG_ORIGIN)")
	if err := fs.Parse(args); err != nil {
		return err
	}

	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}

	if *keyPath == "" || *logKeyPath == "" || *curatorURL == "" {
		return errors.New("witness needs -key, -log-key and -curator")
	}

	if err := ensureWitnessKey(*keyPath, dataDir); err != nil {
		return err
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

	jwksData, err := loadJWKS(ctx, *jwksPath, *kubeconfig)
	if err != nil {
		return fmt.Errorf("load issuer JWKS: %w", err)
	}

	jwks, err := curator.ParseJWKS(jwksData)
	if err != nil {
		return err
	}
	// Without a CRS file the witness takes the CRS from the log's ceremony.
	scheme, err := loadSchemeOrFollow(*crsPath, true)
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

// loadJWKS returns the issuer JWKS from path. When path is empty or
// missing, it fetches /openid/v1/jwks through an explicit kubeconfig, which
// names the mesh cluster, and keeps the result at path. It never uses the
// in-cluster configuration, because a witness may run in another cluster
// than the mesh, whose keys would be the wrong ones.
func loadJWKS(ctx context.Context, path, kubeconfig string) ([]byte, error) {
	const getJWKS = "kubectl get --raw /openid/v1/jwks against the mesh cluster"
	if path == "" && kubeconfig == "" {
		return nil, fmt.Errorf("no issuer JWKS: pass -jwks FILE with the output of %s, or -kubeconfig for the mesh cluster to fetch it", getJWKS)
	}

	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil && len(bytes.TrimSpace(b)) == 0:
			return nil, fmt.Errorf("JWKS file %s is empty: write the output of %s into it", path, getJWKS)
		case err == nil:
			return b, nil
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("read JWKS file: %w", err)
		case kubeconfig == "":
			return nil, fmt.Errorf("JWKS file %s not found: write the output of %s into it, or pass -kubeconfig for the mesh cluster to fetch it once", path, getJWKS)
		}
	}

	b, err := fetchJWKS(ctx, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("fetch /openid/v1/jwks: %w", err)
	}

	if path != "" {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return nil, fmt.Errorf("keep fetched JWKS: %w", err)
		}
	}

	return b, nil
}

// ensureWitnessKey generates the witness key on first start when it lives
// in the data folder, named $MAZU_WITNESS_NAME.
func ensureWitnessKey(keyPath, dataDir string) error {
	if _, err := os.Stat(keyPath); err == nil || dataDir == "" || keyPath != dataPath(dataDir, "witness.key") {
		return nil
	}

	name := os.Getenv("MAZU_WITNESS_NAME")
	if name == "" {
		return errors.New("no witness key in MAZU_DATA_DIR, and no MAZU_WITNESS_NAME to name a new one")
	}
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}

	skey := witnessKeyPrefix + name + "+" + base64.StdEncoding.EncodeToString(k.Seed())
	if err := os.WriteFile(keyPath, []byte(skey+"\n"), 0o600); err != nil {
		return err
	}

	vkey := curator.NewCosignatureSigner(name, k).VerifierKey()
	return os.WriteFile(strings.TrimSuffix(keyPath, ".key")+".vkey", []byte(vkey+"\n"), 0o644)
}
