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

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFlags
	lf.register(fs)
	listen := fs.String("listen", "127.0.0.1:8443", "API address (host:port; port 0 picks one, printed on stdout)")
	metricsAddr := fs.String("metrics-listen", "127.0.0.1:0", "Prometheus metrics address; empty disables")
	dbPath := fs.String("db", "curator.db", "bbolt log file")
	keyPath := fs.String("key", "", "the log's note signing key (from keygen -kind log)")
	vkeyPath := fs.String("vkey", "", "its verifier key; default: the -key path with .vkey for .key")
	crsPath := fs.String("crs", "", "RBE CRS file")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for TokenReview; empty means in-cluster")
	audience := fs.String("audience", curator.DefaultAudience, "token audience reserved for the curator")
	nodeCheck := fs.Bool("node-check", true, "require the sending agent's own token and the registration token's node to be the agent's node")
	agentSA := fs.String("agent-service-account", "", "namespace/name of the node agents' service account; empty accepts any agent token")
	var witnesses multiFlag
	fs.Var(&witnesses, "witness", "witness as URL=VKEY (repeat); the log publishes a checkpoint once a quorum cosigns")
	quorum := fs.Int("quorum", 0, "cosignatures required; 0 means ⌊2n/3⌋+1 of the n witnesses")
	batch := fs.Duration("batch-interval", 0, "how long a batch waits for more requests after its first; 0 takes what queued during the previous write")
	maxBatch := fs.Int("max-batch", 1024, "most key entries per batch")
	raftFlags := registerRaftFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	if *keyPath == "" || *crsPath == "" {
		return errors.New("serve needs -key and -crs")
	}
	if *vkeyPath == "" {
		*vkeyPath = strings.TrimSuffix(*keyPath, ".key") + ".vkey"
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
	scheme, err := loadScheme(*crsPath)
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
		Reviewer: reviewer, Audience: *audience, NodeCheck: *nodeCheck, AgentServiceAccount: *agentSA, Witnesses: ws, Quorum: *quorum, BatchInterval: *batch,
		MaxBatch: *maxBatch, Logger: log, Registry: reg}
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
