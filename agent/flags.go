package agent

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
)

// NodeConfigFromFlags registers the node agent's flags on fs and returns
// the function that builds the NodeConfig once fs is parsed. Flags default
// to ztunnel's environment variables where the meaning matches (NODE_NAME,
// TRUST_DOMAIN) and to MAZU_* variables otherwise, as getenv returns them.
// The build function reports invalid environment values, so that -h works
// whatever the environment holds. It leaves NodeConfig.REST to the caller
// and logs to standard error.
func NodeConfigFromFlags(fs *flag.FlagSet, getenv func(string) string) (build func() (NodeConfig, error)) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	cfg := &NodeConfig{}
	// Invalid environment values are collected here and reported by build.
	var envErrs []error

	fs.StringVar(&cfg.NodeName, "node-name", getenv("NODE_NAME"), "node this agent serves (NODE_NAME)")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", env("TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (TRUST_DOMAIN)")
	fs.StringVar(&cfg.RootNamespace, "root-namespace", env("MAZU_ROOT_NAMESPACE", "istio-system"), "Istio root namespace for mesh-wide policies (MAZU_ROOT_NAMESPACE)")
	fs.StringVar(&cfg.Audience, "audience", env("MAZU_CURATOR_AUDIENCE", curator.DefaultAudience), "token audience reserved for mazu registrations and handshakes; the chart sets the log origin (MAZU_CURATOR_AUDIENCE)")
	fs.StringVar(&cfg.CuratorURL, "curator-url", getenv("MAZU_CURATOR_URL"), "curator base URL (MAZU_CURATOR_URL)")
	fs.StringVar(&cfg.CRSFile, "crs", getenv("MAZU_CRS_FILE"), "RBE CRS file; empty takes the CRS from the curator's log, checked contribution by contribution (MAZU_CRS_FILE)")
	minContributions := 1
	if v := getenv("MAZU_CRS_MIN_CONTRIBUTIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			envErrs = append(envErrs, fmt.Errorf("invalid MAZU_CRS_MIN_CONTRIBUTIONS %q: want a whole number of 1 or more", v))
		} else {
			minContributions = n
		}
	}
	fs.IntVar(&cfg.CRSMinContributions, "crs-min-contributions", minContributions, "ceremony contributions the log must hold before the agent takes its CRS from there (MAZU_CRS_MIN_CONTRIBUTIONS)")
	tokenLifetime := rbeauth.DefaultTokenLifetime
	if v := getenv("MAZU_TOKEN_MAX_EXPIRATION_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 600 {
			envErrs = append(envErrs, fmt.Errorf("invalid MAZU_TOKEN_MAX_EXPIRATION_SECONDS %q: want whole seconds, at least 600 (the API server's minimum)", v))
		} else {
			tokenLifetime = time.Duration(n) * time.Second
		}
	}
	fs.DurationVar(&cfg.TokenLifetime, "token-lifetime", tokenLifetime, "lifetime the agent requests for pod tokens; the chart's admission policy allows at most MAZU_TOKEN_MAX_EXPIRATION_SECONDS, which also sets the default")
	// As ztunnel does, drain for the pod's termination grace period less
	// one second, so that streams end before the kubelet kills the agent.
	drain := 5 * time.Second
	if v := getenv("TERMINATION_GRACE_PERIOD_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			envErrs = append(envErrs, fmt.Errorf("invalid TERMINATION_GRACE_PERIOD_SECONDS %q: want whole seconds, at least 2", v))
		} else {
			drain = time.Duration(n-1) * time.Second
		}
	}
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", drain, "how long open streams may finish at shutdown; the default is TERMINATION_GRACE_PERIOD_SECONDS less one second, else 5s")
	fs.StringVar(&cfg.NetnsDir, "netns-dir", getenv("MAZU_NETNS_DIR"), "where the host's /var/run/netns is mounted when the agent runs in a container; empty means host paths (MAZU_NETNS_DIR)")
	policyFile := fs.String("witness-policy", getenv("MAZU_WITNESS_POLICY_FILE"), "C2SP tlog-policy file with the curator's log key, the witnesses' keys and the quorum (MAZU_WITNESS_POLICY_FILE); replaces -log-key, -witness-key and -quorum")
	logKeyFile := fs.String("log-key", getenv("MAZU_LOG_KEY_FILE"), "file with the curator's checkpoint verifier key (MAZU_LOG_KEY_FILE)")
	var witnessKeys listFlag
	fs.Var(&witnessKeys, "witness-key", "a witness's cosignature verifier key, or a file holding one; repeat for each witness")
	fs.IntVar(&cfg.Quorum, "quorum", 0, "witness cosignatures required; 0 means floor(2n/3)+1")
	fs.StringVar(&cfg.AgentTokenFile, "agent-token-file", getenv("MAZU_CURATOR_TOKEN_FILE"), "the agent's own pod-bound token for the curator's node check; empty sends none (MAZU_CURATOR_TOKEN_FILE)")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", env("MAZU_CGROUP_ROOT", "/sys/fs/cgroup"), "cgroup v2 folder under which the kubelet puts pods (MAZU_CGROUP_ROOT)")
	fs.StringVar(&cfg.PinDir, "pin-dir", env("MAZU_BPF_PIN_DIR", "/sys/fs/bpf/mazu-ztunnel"), "bpffs folder for pinned eBPF links and maps (MAZU_BPF_PIN_DIR)")
	fs.StringVar(&cfg.CNISocket, "cni-socket", env("MAZU_CNI_SOCKET", cni.DefaultSocket), "Unix socket for mazu-cni; empty disables it (MAZU_CNI_SOCKET)")
	fs.StringVar(&cfg.StateDir, "state-dir", env("MAZU_STATE_DIR", "/var/run/mazu-ztunnel"), "folder for the enrolled pods' state and saved identities (MAZU_STATE_DIR)")
	fs.DurationVar(&cfg.AuditInterval, "audit-interval", 5*time.Second, "how often the curator's log is audited for this node's IDs")
	poolIdle := 5 * time.Minute
	if v := getenv("POOL_UNUSED_RELEASE_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			envErrs = append(envErrs, fmt.Errorf("invalid POOL_UNUSED_RELEASE_TIMEOUT %q: want a duration such as 5m", v))
		} else {
			poolIdle = d
		}
	}
	fs.DurationVar(&cfg.PoolIdleTimeout, "pool-idle-timeout", poolIdle, "close pooled HBONE connections without streams after this long (POOL_UNUSED_RELEASE_TIMEOUT)")
	fs.StringVar(&cfg.Endpoints.AdminAddr, "admin-addr", DefaultAdminAddr, "admin server address (/config_dump)")
	fs.StringVar(&cfg.Endpoints.MetricsAddr, "metrics-addr", DefaultMetricsAddr, "Prometheus /metrics address")
	fs.StringVar(&cfg.Endpoints.ReadinessAddr, "readiness-addr", DefaultReadinessAddr, "/healthz/ready address")
	compatDefault := false
	if v := getenv("MAZU_ISTIOD_COMPAT"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			envErrs = append(envErrs, fmt.Errorf("invalid MAZU_ISTIOD_COMPAT %q: want true or false", v))
		} else {
			compatDefault = b
		}
	}
	compat := fs.Bool("istiod-compat", compatDefault, "compatibility mode: also obtain istiod-issued certificates and use them only toward peers that trust only Istio's CA (MAZU_ISTIOD_COMPAT); off is strict mode")
	var compatCfg CompatConfig
	fs.StringVar(&compatCfg.CAAddress, "ca-address", env("CA_ADDRESS", "istiod.istio-system.svc:15012"), "istiod CA address host:port, compatibility mode only (CA_ADDRESS)")
	fs.StringVar(&compatCfg.RootCertFile, "ca-root-cert", env("MAZU_ISTIO_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem"), "Istio root certificate (istio-ca-root-cert ConfigMap), compatibility mode only (MAZU_ISTIO_ROOT_CERT)")
	fs.StringVar(&compatCfg.CAServerName, "ca-server-name", "", "name in istiod's serving certificate; empty means the host of -ca-address")
	fs.StringVar(&compatCfg.NodeTokenFile, "ca-node-token-file", env("MAZU_ISTIO_TOKEN_FILE", "/var/run/secrets/tokens/istio-token"), "the agent's own istio-ca token; CSRs then impersonate each pod's identity as ztunnel's do (istiod's CA_TRUSTED_NODE_ACCOUNTS must list the agent). Empty: each CSR carries a token bound to the pod (MAZU_ISTIO_TOKEN_FILE)")
	fs.StringVar(&compatCfg.ClusterID, "cluster-id", env("ISTIO_META_CLUSTER_ID", "Kubernetes"), "cluster ID sent to istiod (ISTIO_META_CLUSTER_ID)")
	logLevel := fs.String("log-level", env("LOG_LEVEL", "info"), "log level: debug, info, warn or error (LOG_LEVEL)")
	logFormat := fs.String("log-format", env("LOG_FORMAT", "json"), "log format: json or text (LOG_FORMAT)")

	return func() (NodeConfig, error) {
		if err := errors.Join(envErrs...); err != nil {
			return NodeConfig{}, err
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
			return NodeConfig{}, fmt.Errorf("invalid -log-level %q: want debug, info, warn or error", *logLevel)
		}
		switch *logFormat {
		case "json":
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		case "text", "plain":
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		default:
			return NodeConfig{}, fmt.Errorf("invalid -log-format %q: want json or text", *logFormat)
		}
		if cfg.CuratorURL == "" {
			return NodeConfig{}, errors.New("no curator URL: set -curator-url or MAZU_CURATOR_URL")
		}
		if err := loadTrust(cfg, *policyFile, *logKeyFile, witnessKeys); err != nil {
			return NodeConfig{}, err
		}
		if *compat {
			cfg.Compat = &compatCfg
		}
		return *cfg, nil
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// loadTrust sets the curator's log key, the witness keys and the quorum,
// from a policy file or from separate key files, but not both.
func loadTrust(cfg *NodeConfig, policyFile, logKeyFile string, witnessKeys []string) error {
	if policyFile != "" {
		if logKeyFile != "" || len(witnessKeys) > 0 {
			return errors.New("both -witness-policy and -log-key or -witness-key are set: use the policy file alone")
		}
		return cfg.LoadWitnessPolicy(policyFile)
	}
	if logKeyFile == "" {
		return errors.New("no curator log key: set -witness-policy (MAZU_WITNESS_POLICY_FILE) or -log-key (MAZU_LOG_KEY_FILE)")
	}
	logKey, err := os.ReadFile(logKeyFile)
	if err != nil {
		return fmt.Errorf("read -log-key: %w", err)
	}
	cfg.LogKey = strings.TrimSpace(string(logKey))
	for _, f := range witnessKeys {
		// mazu-curator takes witness keys as strings, so a value that is a
		// key and not a file is taken as the key itself.
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			if _, kerr := curator.NewCosignatureVerifier(f); kerr == nil {
				cfg.WitnessKeys = append(cfg.WitnessKeys, f)
				continue
			}
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read -witness-key: %w (want a witness verifier key or a file holding one)", err)
		}
		cfg.WitnessKeys = append(cfg.WitnessKeys, strings.TrimSpace(string(b)))
	}
	return nil
}
