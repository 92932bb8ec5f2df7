package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// writeLogKey writes a curator log verifier key to a file and returns its
// path and the key.
func writeLogKey(t *testing.T) (string, string) {
	t.Helper()
	_, vkey, err := note.GenerateKey(rand.Reader, "mazu.test/log")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "log.vkey")
	if err := os.WriteFile(path, []byte(vkey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, vkey
}

// parseNodeFlags registers the flags with env as the environment, parses
// args and builds the configuration.
func parseNodeFlags(t *testing.T, env map[string]string, args ...string) (NodeConfig, error) {
	t.Helper()
	fs := flag.NewFlagSet("mazu-ztunnel", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	build := NodeConfigFromFlags(fs, func(name string) string { return env[name] })
	if err := fs.Parse(args); err != nil {
		return NodeConfig{}, err
	}
	return build()
}

// TestNodeConfigFromEnvironment sets every variable the chart passes and
// checks the field each one fills.
func TestNodeConfigFromEnvironment(t *testing.T) {
	logKeyFile, logKey := writeLogKey(t)
	env := map[string]string{
		"NODE_NAME":                         "node-a",
		"TRUST_DOMAIN":                      "example.org",
		"MAZU_ROOT_NAMESPACE":               "mesh-root",
		"MAZU_CURATOR_AUDIENCE":             "mazu-curator.istio-system.svc/east",
		"MAZU_CURATOR_URL":                  "http://mazu-curator.istio-system.svc:8080",
		"MAZU_CRS_MIN_CONTRIBUTIONS":        "3",
		"MAZU_TOKEN_MAX_EXPIRATION_SECONDS": "1200",
		"TERMINATION_GRACE_PERIOD_SECONDS":  "30",
		"MAZU_NETNS_DIR":                    "/host/var/run/netns",
		"MAZU_LOG_KEY_FILE":                 logKeyFile,
		"MAZU_CURATOR_TOKEN_FILE":           "/var/run/secrets/mazu/curator-token",
		"MAZU_CGROUP_ROOT":                  "/host/sys/fs/cgroup",
		"MAZU_BPF_PIN_DIR":                  "/sys/fs/bpf/test",
		"MAZU_CNI_SOCKET":                   "/var/run/mazu-ztunnel/cni.sock",
		"MAZU_STATE_DIR":                    "/var/run/mazu-ztunnel",
		"POOL_UNUSED_RELEASE_TIMEOUT":       "90s",
		"MAZU_ISTIOD_COMPAT":                "true",
		"CA_ADDRESS":                        "istiod.mesh-control.svc:15012",
		"ISTIO_META_CLUSTER_ID":             "east",
		"LOG_LEVEL":                         "debug",
		"LOG_FORMAT":                        "text",
	}
	cfg, err := parseNodeFlags(t, env)
	if err != nil {
		t.Fatalf("build configuration: %v", err)
	}

	fields := []struct{ name, got, want string }{
		{"NodeName", cfg.NodeName, "node-a"},
		{"TrustDomain", cfg.TrustDomain, "example.org"},
		{"RootNamespace", cfg.RootNamespace, "mesh-root"},
		{"Audience", cfg.Audience, "mazu-curator.istio-system.svc/east"},
		{"CuratorURL", cfg.CuratorURL, "http://mazu-curator.istio-system.svc:8080"},
		{"NetnsDir", cfg.NetnsDir, "/host/var/run/netns"},
		{"LogKey", cfg.LogKey, logKey},
		{"AgentTokenFile", cfg.AgentTokenFile, "/var/run/secrets/mazu/curator-token"},
		{"CgroupRoot", cfg.CgroupRoot, "/host/sys/fs/cgroup"},
		{"PinDir", cfg.PinDir, "/sys/fs/bpf/test"},
		{"CNISocket", cfg.CNISocket, "/var/run/mazu-ztunnel/cni.sock"},
		{"StateDir", cfg.StateDir, "/var/run/mazu-ztunnel"},
	}
	for _, c := range fields {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}

	if cfg.CRSMinContributions != 3 {
		t.Errorf("CRSMinContributions = %d, want 3", cfg.CRSMinContributions)
	}
	if cfg.TokenLifetime != 1200*time.Second {
		t.Errorf("TokenLifetime = %s, want 20m", cfg.TokenLifetime)
	}
	if cfg.DrainTimeout != 29*time.Second {
		t.Errorf("DrainTimeout = %s, want the grace period less one second, 29s", cfg.DrainTimeout)
	}
	if cfg.PoolIdleTimeout != 90*time.Second {
		t.Errorf("PoolIdleTimeout = %s, want 90s", cfg.PoolIdleTimeout)
	}

	if cfg.Compat == nil {
		t.Fatal("MAZU_ISTIOD_COMPAT=true left compatibility mode off")
	}
	if cfg.Compat.CAAddress != "istiod.mesh-control.svc:15012" || cfg.Compat.ClusterID != "east" {
		t.Errorf("Compat = %+v, want CA address istiod.mesh-control.svc:15012 and cluster east", *cfg.Compat)
	}
	if cfg.Logger == nil || !cfg.Logger.Handler().Enabled(t.Context(), slog.LevelDebug) {
		t.Error("LOG_LEVEL=debug did not enable debug logging")
	}
}

// TestNodeConfigDefaults builds a configuration from only the required
// variables and checks the defaults, and that a flag overrides its
// variable.
func TestNodeConfigDefaults(t *testing.T) {
	logKeyFile, _ := writeLogKey(t)
	env := map[string]string{"MAZU_CURATOR_URL": "http://curator.test:8080", "MAZU_LOG_KEY_FILE": logKeyFile, "TRUST_DOMAIN": "example.org"}
	cfg, err := parseNodeFlags(t, env, "-trust-domain=flag.example")
	if err != nil {
		t.Fatalf("build configuration: %v", err)
	}
	if cfg.TrustDomain != "flag.example" {
		t.Errorf("TrustDomain = %q, want the flag's flag.example over TRUST_DOMAIN", cfg.TrustDomain)
	}
	if cfg.RootNamespace != "istio-system" || cfg.Audience != curator.DefaultAudience || cfg.CNISocket != cni.DefaultSocket {
		t.Errorf("RootNamespace, Audience, CNISocket = %q, %q, %q; want istio-system, %s, %s", cfg.RootNamespace, cfg.Audience, cfg.CNISocket, curator.DefaultAudience, cni.DefaultSocket)
	}
	if cfg.DrainTimeout != 5*time.Second || cfg.PoolIdleTimeout != 5*time.Minute || cfg.CRSMinContributions != 1 {
		t.Errorf("DrainTimeout, PoolIdleTimeout, CRSMinContributions = %s, %s, %d; want 5s, 5m, 1", cfg.DrainTimeout, cfg.PoolIdleTimeout, cfg.CRSMinContributions)
	}
	if cfg.Compat != nil {
		t.Error("compatibility mode on without MAZU_ISTIOD_COMPAT")
	}

	if _, err := parseNodeFlags(t, map[string]string{"MAZU_LOG_KEY_FILE": logKeyFile}); err == nil || !strings.Contains(err.Error(), "MAZU_CURATOR_URL") {
		t.Errorf("no curator URL = %v, want an error naming MAZU_CURATOR_URL", err)
	}
}

// TestNodeConfigInvalidEnvironment sets each variable that must parse to an
// invalid value: -h still prints help, and building names the variable.
func TestNodeConfigInvalidEnvironment(t *testing.T) {
	logKeyFile, _ := writeLogKey(t)
	for _, name := range []string{
		"MAZU_CRS_MIN_CONTRIBUTIONS",
		"MAZU_TOKEN_MAX_EXPIRATION_SECONDS",
		"TERMINATION_GRACE_PERIOD_SECONDS",
		"POOL_UNUSED_RELEASE_TIMEOUT",
		"MAZU_ISTIOD_COMPAT",
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{"MAZU_CURATOR_URL": "http://curator.test:8080", "MAZU_LOG_KEY_FILE": logKeyFile, name: "invalid"}
			if _, err := parseNodeFlags(t, env, "-h"); !errors.Is(err, flag.ErrHelp) {
				t.Errorf("-h with %s=invalid = %v, want flag.ErrHelp", name, err)
			}
			if _, err := parseNodeFlags(t, env); err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("build with %s=invalid = %v, want an error naming it", name, err)
			}
		})
	}
}

// TestLoadTrust reads the log key from a file and witness keys given as
// strings or files, and rejects a policy file combined with key flags and
// a missing log key.
func TestLoadTrust(t *testing.T) {
	dir := t.TempDir()
	_, logVKey, err := note.GenerateKey(rand.Reader, "mazu.test/log")
	if err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "log.vkey")
	if err := os.WriteFile(logFile, []byte(logVKey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, name := range []string{"w0.mazu.test", "w1.mazu.test"} {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, curator.NewCosignatureSigner(name, k).VerifierKey())
	}
	w1File := filepath.Join(dir, "w1.vkey")
	if err := os.WriteFile(w1File, []byte(keys[1]+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	var cfg NodeConfig
	if err := loadTrust(&cfg, "", logFile, []string{keys[0], w1File}); err != nil {
		t.Fatalf("load a log key file, a key string and a key file: %v", err)
	}
	if cfg.LogKey != logVKey {
		t.Errorf("LogKey = %q, want %q", cfg.LogKey, logVKey)
	}
	if strings.Join(cfg.WitnessKeys, " ") != strings.Join(keys, " ") {
		t.Errorf("WitnessKeys = %q, want %q", cfg.WitnessKeys, keys)
	}

	if err := loadTrust(&NodeConfig{}, filepath.Join(dir, "policy"), logFile, nil); err == nil || !strings.Contains(err.Error(), "policy file alone") {
		t.Errorf("policy file with -log-key = %v, want a conflict error", err)
	}
	if err := loadTrust(&NodeConfig{}, "", "", nil); err == nil || !strings.Contains(err.Error(), "MAZU_WITNESS_POLICY_FILE") {
		t.Errorf("no log key = %v, want advice naming MAZU_WITNESS_POLICY_FILE", err)
	}
	if err := loadTrust(&NodeConfig{}, "", logFile, []string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("a witness key that is neither a key nor a file was accepted")
	}
}
