package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/mod/sumdb/note"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}

	if err != nil {
		return nil, fmt.Errorf("load Kubernetes client config (set -kubeconfig outside a cluster): %w", err)
	}

	return kubernetes.NewForConfig(cfg)
}

// serveHTTP serves h on addr until ctx ends. ready, if set, receives the
// bound address, which matters for ":0".
func serveHTTP(ctx context.Context, log *slog.Logger, what, addr string, h http.Handler) (string, func() error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("listen for %s on %s: %w", what, addr, err)
	}

	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("listening", "what", what, "addr", ln.Addr().String())
	wait := func() error {
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}

	return ln.Addr().String(), wait, nil
}

// checkServiceAccountName returns an error unless name is empty or a
// service account as namespace/name, the form the node check compares
// agent tokens against.
func checkServiceAccountName(name string) error {
	if name == "" {
		return nil
	}

	namespace, account, ok := strings.Cut(name, "/")
	if !ok || namespace == "" || account == "" || strings.Contains(account, "/") {
		return fmt.Errorf("%q is not namespace/name, such as istio-system/mazu-ztunnel", name)
	}

	return nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "key" {
		return runServeKey(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFlags
	lf.register(fs)
	dataDir := envOr("MAZU_DATA_DIR", "")
	listen := fs.String("listen", envOr("MAZU_HTTP_ADDRESS", "127.0.0.1:8443"), "API address (host:port; port 0 picks one, printed on stdout) (env MAZU_HTTP_ADDRESS)")
	metricsAddr := fs.String("metrics-listen", envOr("MAZU_METRICS_ADDRESS", "127.0.0.1:0"), "Prometheus metrics address; empty disables (env MAZU_METRICS_ADDRESS)")
	dbPath := fs.String("db", cmpOr(dataPath(dataDir, "curator.db"), "curator.db"), "bbolt log file (under $MAZU_DATA_DIR when it is set)")
	keyPath := fs.String("key", dataPath(dataDir, "log.key"), "the log's note signing key (from keygen -kind log); under $MAZU_DATA_DIR it is generated on first start")
	vkeyPath := fs.String("vkey", "", "its verifier key; default: the -key path with .vkey for .key")
	crsPath := fs.String("crs", envOr("MAZU_CRS_FILE", dataPath(dataDir, "crs.bin")), "RBE CRS file (env MAZU_CRS_FILE; under $MAZU_DATA_DIR when it is set)")
	origin := fs.String("origin", envOr("MAZU_LOG_ORIGIN", ""), "log origin; must match the key's name (env MAZU_LOG_ORIGIN)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for TokenReview; empty means in-cluster")
	audience := fs.String("audience", envOr("MAZU_LOG_ORIGIN", curator.DefaultAudience), "token audience reserved for the curator (env MAZU_LOG_ORIGIN)")
	policyPath := fs.String("witness-policy", envOr("MAZU_WITNESS_POLICY_FILE", ""), "C2SP tlog-policy file naming the witnesses (with URLs) and the quorum (env MAZU_WITNESS_POLICY_FILE)")
	nodeCheck := fs.Bool("node-check", true, "require the sending agent's own token and the registration token's node to be the agent's node")
	agentSA := fs.String("agent-service-account", envOr("MAZU_AGENT_SERVICE_ACCOUNT", ""), "namespace/name of the node agents' service account, the only one whose tokens the node check accepts as an agent's own; empty accepts any service account (env MAZU_AGENT_SERVICE_ACCOUNT)")
	var witnesses multiFlag
	fs.Var(&witnesses, "witness", "witness as URL=VKEY (repeat); the log publishes a checkpoint once a quorum cosigns")
	quorum := fs.Int("quorum", 0, "cosignatures required; 0 means ⌊2n/3⌋+1 of the n witnesses")
	defBatch, err := time.ParseDuration(envOr("MAZU_BATCH_INTERVAL", "0s"))
	if err != nil {
		return fmt.Errorf("invalid MAZU_BATCH_INTERVAL: %w", err)
	}

	batch := fs.Duration("batch-interval", defBatch, "how long a batch waits for more requests after its first; 0 takes what queued during the previous write (env MAZU_BATCH_INTERVAL)")
	maxBatch := fs.Int("max-batch", 1024, "most key entries per batch")
	ceremony := fs.Bool("ceremony", envOr("MAZU_CEREMONY_ENABLED", "") == "true", "without a CRS file, take the CRS from ceremony contributions posted to /v1/ceremony (env MAZU_CEREMONY_ENABLED)")
	minContrib, err := strconv.Atoi(envOr("MAZU_CEREMONY_MIN_OPERATOR_CONTRIBUTIONS", "0"))
	if err != nil {
		return fmt.Errorf("invalid MAZU_CEREMONY_MIN_OPERATOR_CONTRIBUTIONS: %w", err)
	}

	minContributions := fs.Int("ceremony-min-contributions", minContrib, "ceremony contributions required before registrations open; 0 opens them with the first (env MAZU_CEREMONY_MIN_OPERATOR_CONTRIBUTIONS)")
	raftFlags := registerRaftFlags(fs, dataDir)
	if err := fs.Parse(args); err != nil {
		return err
	}

	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}

	if err := checkServiceAccountName(*agentSA); err != nil {
		return fmt.Errorf("invalid -agent-service-account (env MAZU_AGENT_SERVICE_ACCOUNT): %w", err)
	}

	if *nodeCheck && *agentSA == "" {
		log.Warn("no -agent-service-account: the node check accepts any pod's token as the sending agent's own")
	}

	if *keyPath == "" || (*crsPath == "" && !*ceremony) || *dbPath == "" {
		return errors.New("serve needs -key, -crs (or -ceremony) and -db, or MAZU_DATA_DIR")
	}

	if *vkeyPath == "" {
		*vkeyPath = strings.TrimSuffix(*keyPath, ".key") + ".vkey"
	}

	if err := ensureLogKey(*keyPath, *vkeyPath, *origin, dataDir, stdout); err != nil {
		return err
	}

	skey, err := readTrimmed(*keyPath)
	if err != nil {
		return fmt.Errorf("read -key: %w", err)
	}

	vkey, err := readTrimmed(*vkeyPath)
	if err != nil {
		return fmt.Errorf("read -vkey: %w", err)
	}

	signer, err := note.NewSigner(skey)
	if err != nil {
		return fmt.Errorf("parse -key: %w", err)
	}

	if *origin != "" && signer.Name() != *origin {
		return fmt.Errorf("the log key is named %q, but the origin is %q: use a key made for the origin", signer.Name(), *origin)
	}

	scheme, err := loadSchemeOrFollow(*crsPath, *ceremony)
	if err != nil {
		return err
	}

	var ws []server.Witness
	for _, w := range witnesses {
		u, vk, ok := strings.Cut(w, "=")
		v, err := curator.NewCosignatureVerifier(vk)
		if !ok || err != nil {
			return fmt.Errorf("invalid -witness %q: want URL=VKEY: %v", w, err)
		}
		ws = append(ws, server.Witness{URL: u, Verifier: v})
	}

	quorumK := *quorum
	if *policyPath != "" {
		text, err := os.ReadFile(*policyPath)
		if err != nil {
			return fmt.Errorf("read -witness-policy: %w", err)
		}
		pf, err := curator.ParsePolicyFile(string(text))
		switch {
		case strings.TrimSpace(string(text)) == "":
			// The chart starts with an empty policy: the operator writes
			// it after reading this curator's key with `serve key`.
			log.Warn("witness policy is empty: no witness cosigns, so agents trust no checkpoint until it is set", "file", *policyPath)
			pf = &curator.PolicyFile{LogVKey: vkey}
		case err != nil:
			return err
		}
		if pf.LogVKey != vkey {
			return fmt.Errorf("witness policy names log key %q, this curator's key is %q", pf.LogVKey, vkey)
		}
		for _, w := range pf.Witnesses {
			v, _ := curator.NewCosignatureVerifier(w.VKey)
			if w.URL == "" {
				return fmt.Errorf("witness %s in the policy has no URL for add-checkpoint", w.Name)
			}
			ws = append(ws, server.Witness{URL: w.URL, Verifier: v})
		}
		if quorumK == 0 {
			quorumK = pf.Quorum
		}
	}

	var reviewer server.TokenReviewer
	if kc, err := kubeClient(*kubeconfig); err == nil {
		reviewer = &server.KubeReviewer{Client: kc, Audience: *audience}
	} else {
		return err
	}

	st, err := store.Open(*dbPath)
	if err != nil {
		return err
	}

	defer st.Close()
	reg := prometheus.NewRegistry()
	cfg := server.Config{Origin: signer.Name(), Signer: signer, VerifierKey: vkey, Store: st, Scheme: scheme,
		Reviewer: reviewer, Audience: *audience, NodeCheck: *nodeCheck, MinContributions: *minContributions, AgentServiceAccount: *agentSA, Witnesses: ws, Quorum: quorumK, BatchInterval: *batch,
		MaxBatch: *maxBatch, Logger: log, Registry: reg}
	raftFlags.listen = *listen
	handler, closeFn, err := startLog(ctx, log, cfg, raftFlags)
	if err != nil {
		return err
	}

	defer closeFn()
	if *metricsAddr != "" {
		if _, _, err := serveHTTP(ctx, log, "metrics", *metricsAddr, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})); err != nil {
			return err
		}
	}

	addr, wait, err := serveHTTP(ctx, log, "curator API", *listen, handler)
	if err != nil {
		return err
	}

	fmt.Fprintf(stdout, "listening on %s\n", addr)
	return wait()
}
