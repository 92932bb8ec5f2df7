package cni

import (
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultServiceAccountDir is the folder in which Kubernetes mounts a pod's
// service-account token and the API server's CA bundle.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Defaults of the installer's loop.
const (
	// DefaultPollInterval is how often the installer checks its files.
	DefaultPollInterval = 2 * time.Second
	// DefaultLeaseTTL is how long a lease counts as held after its last
	// refresh. It is many poll intervals, so a slow node does not lose it.
	DefaultLeaseTTL = 30 * time.Second
)

// InstallConfig configures `mazu-cni install`. InstallConfigFromEnv reads it
// from the environment the chart sets.
type InstallConfig struct {
	// BinDir is the CNI plugin folder as mounted in the installer
	// (CNI_BIN_DIR).
	BinDir string
	// ConfDir is the CNI configuration folder as mounted in the installer
	// (CNI_CONF_DIR).
	ConfDir string
	// HostConfDir is ConfDir's path on the node (HOST_CNI_CONF_DIR),
	// written into the plugin configuration for the kubeconfig.
	HostConfDir string
	// ConfName is the configuration file to add the plugin to; empty means
	// the first valid one (CNI_CONF_NAME).
	ConfName string
	// Socket is the node path of the agent's socket (MAZU_CNI_SOCKET).
	Socket string
	// ExcludeNamespaces are written into the plugin configuration
	// (EXCLUDE_NAMESPACES, plus POD_NAMESPACE).
	ExcludeNamespaces []string
	// PodUID, PodName and PodNamespace identify the installer's pod. The
	// UID names its lease; name and namespace let it check on SIGTERM
	// whether the pod is being deleted.
	PodUID, PodName, PodNamespace string
	LogLevel                      slog.Level
	// ServiceAccountDir holds the token and CA bundle the installer writes
	// into the plugin's kubeconfig; empty means none.
	ServiceAccountDir string
	// APIServer is the API server URL for that kubeconfig, from
	// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
	APIServer string
	// BinarySource is the plugin binary to copy, normally the installer's
	// own executable.
	BinarySource string
	PollInterval time.Duration
	LeaseTTL     time.Duration
}

var namespaceName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// InstallConfigFromEnv reads the installer's settings. lookup is
// os.LookupEnv in production. Values the installer cannot honour return an
// error that names the value and the fix.
func InstallConfigFromEnv(lookup func(string) (string, bool)) (InstallConfig, error) {
	get := func(key string) string {
		v, _ := lookup(key)
		return strings.TrimSpace(v)
	}
	cfg := InstallConfig{
		BinDir:            get("CNI_BIN_DIR"),
		ConfDir:           get("CNI_CONF_DIR"),
		HostConfDir:       get("HOST_CNI_CONF_DIR"),
		ConfName:          get("CNI_CONF_NAME"),
		Socket:            get("MAZU_CNI_SOCKET"),
		PodUID:            get("POD_UID"),
		PodName:           get("POD_NAME"),
		PodNamespace:      get("POD_NAMESPACE"),
		ServiceAccountDir: DefaultServiceAccountDir,
		PollInterval:      DefaultPollInterval,
		LeaseTTL:          DefaultLeaseTTL,
	}
	for key, dir := range map[string]string{"CNI_BIN_DIR": cfg.BinDir, "CNI_CONF_DIR": cfg.ConfDir} {
		if dir == "" {
			return InstallConfig{}, fmt.Errorf("%s is not set: set it to the folder where the node's CNI folder is mounted", key)
		}
	}
	if cfg.HostConfDir == "" {
		cfg.HostConfDir = cfg.ConfDir
	}
	if !filepath.IsAbs(cfg.HostConfDir) {
		return InstallConfig{}, fmt.Errorf("invalid HOST_CNI_CONF_DIR %q: want an absolute path on the node", cfg.HostConfDir)
	}
	if err := validateConfName(cfg.ConfName); err != nil {
		return InstallConfig{}, err
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if !filepath.IsAbs(cfg.Socket) {
		return InstallConfig{}, fmt.Errorf("invalid MAZU_CNI_SOCKET %q: want the absolute path of the agent's socket on the node", cfg.Socket)
	}
	if cfg.PodUID == "" {
		return InstallConfig{}, fmt.Errorf("POD_UID is not set: set it from the pod's metadata.uid, because it names the installer's lease")
	}
	if strings.ContainsRune(cfg.PodUID, '/') {
		return InstallConfig{}, fmt.Errorf("invalid POD_UID %q: a pod UID has no '/'", cfg.PodUID)
	}

	if err := checkUnsupportedBools(get); err != nil {
		return InstallConfig{}, err
	}
	level, err := parseLogLevel(get("LOG_LEVEL"))
	if err != nil {
		return InstallConfig{}, err
	}
	cfg.LogLevel = level

	exclude, set := lookup("EXCLUDE_NAMESPACES")
	if cfg.ExcludeNamespaces, err = parseNamespaces(exclude, set, cfg.PodNamespace); err != nil {
		return InstallConfig{}, err
	}

	host, port := get("KUBERNETES_SERVICE_HOST"), get("KUBERNETES_SERVICE_PORT")
	if host != "" && port != "" {
		cfg.APIServer = "https://" + net.JoinHostPort(host, port)
	}
	return cfg, nil
}

// checkUnsupportedBools rejects the switches the installer must not accept
// silently: a value other than the one mazu-ztunnel implements would
// promise behaviour that does not exist.
func checkUnsupportedBools(get func(string) string) error {
	checks := []struct {
		key       string
		supported bool
		reason    string
		fix       string
	}{
		{"CHAINED_CNI_PLUGIN", true,
			"mazu-cni runs only as a chained plugin after the primary network plugin",
			"set it to true (chart value cni.chained)"},
		{"AMBIENT_DNS_CAPTURE", false,
			"the mazu-ztunnel agent has no DNS proxy, so DNS traffic is never captured",
			"set it to false (chart value cni.dnsCapture)"},
		{"AMBIENT_IPV6", true,
			"the agent always captures a pod's IPv6 traffic when the pod has an IPv6 address and has no switch to leave it uncaptured",
			"set it to true (chart value cni.ipv6)"},
	}
	for _, c := range checks {
		raw := get(c.key)
		if raw == "" {
			continue
		}
		v, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("invalid %s %q: want true or false", c.key, raw)
		}
		if v != c.supported {
			return fmt.Errorf("%s=%t is not supported: %s; %s", c.key, v, c.reason, c.fix)
		}
	}
	return nil
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("invalid LOG_LEVEL %q: want debug, info, warn or error", s)
}

// parseNamespaces splits EXCLUDE_NAMESPACES. Unset means
// DefaultExcludeNamespaces; an empty value means none. The installer's own
// namespace is always added, so the agent's pod starts while no agent runs.
func parseNamespaces(raw string, set bool, own string) ([]string, error) {
	var list []string
	if !set {
		list = slices.Clone(DefaultExcludeNamespaces)
	}
	for ns := range strings.SplitSeq(raw, ",") {
		ns = strings.TrimSpace(ns)
		if ns == "" {
			continue
		}
		if !namespaceName.MatchString(ns) {
			return nil, fmt.Errorf("invalid namespace %q in EXCLUDE_NAMESPACES: want comma-separated namespace names", ns)
		}
		if !slices.Contains(list, ns) {
			list = append(list, ns)
		}
	}
	if own != "" && !slices.Contains(list, own) {
		list = append(list, own)
	}
	return list, nil
}
