package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// stateDirName is the installer's folder inside the CNI configuration
// folder. Container runtimes read only *.conf, *.conflist and *.json files
// there and skip folders.
const stateDirName = "mazu-cni.d"

// Installer runs `mazu-cni install`: it copies the plugin binary, adds the
// plugin to the node's primary CNI configuration, keeps both in place
// while it runs and removes them when it stops for good.
//
// The state folder holds:
//   - leases/<pod UID>: one file per running installer, refreshed every poll,
//     so that during a DaemonSet update the old installer finds the new one
//     and leaves the plugin installed;
//   - kubeconfig-<pod UID>: the plugin's kubeconfig with this installer's
//     service-account token (mode 0600);
//   - original/<file>: each configuration file as it was before the plugin
//     was added, so that uninstalling restores it byte for byte.
type Installer struct {
	cfg      InstallConfig
	log      *slog.Logger
	stateDir string
	// kubeconfig is true when the installer has a service-account token to
	// write into the plugin's kubeconfig.
	kubeconfig bool
	// token is the token last written into the kubeconfig.
	token []byte

	lastError   string
	repeatCount int
	waitLogged  bool
}

// NewInstaller returns an installer for cfg that logs to log.
func NewInstaller(cfg InstallConfig, log *slog.Logger) *Installer {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.HostConfDir == "" {
		cfg.HostConfDir = cfg.ConfDir
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	return &Installer{cfg: cfg, log: log, stateDir: filepath.Join(cfg.ConfDir, stateDirName)}
}

// Run installs the plugin, keeps it installed until ctx ends, then removes
// it unless it must stay (see stop). It returns an error only when it
// cannot start or cannot clean up.
func (in *Installer) Run(ctx context.Context) error {
	if err := in.start(); err != nil {
		return err
	}
	in.log.Info("mazu-cni installer started", "binDir", in.cfg.BinDir, "confDir", in.cfg.ConfDir,
		"confName", in.cfg.ConfName, "socket", in.cfg.Socket, "excludeNamespaces", in.cfg.ExcludeNamespaces,
		"pollInterval", in.cfg.PollInterval)

	ticker := time.NewTicker(in.cfg.PollInterval)
	defer ticker.Stop()
	installed := false
	for {
		if err := in.refreshLease(); err != nil {
			in.report(err)
		}
		if !installed {
			// The first write replaces an entry with other settings, such
			// as one from the previous chart version.
			err := in.ensureConfig(true)
			switch {
			case err == nil:
				installed = true
			case errors.Is(err, errNoConfig):
				in.logWaiting(err)
			default:
				in.report(err)
			}
		} else {
			in.reconcile()
		}
		select {
		case <-ctx.Done():
			return in.stop()
		case <-ticker.C:
		}
	}
}

func (in *Installer) start() error {
	for _, dir := range []string{filepath.Join(in.stateDir, "leases"), filepath.Join(in.stateDir, "original")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create installer state folder: %w", err)
		}
	}
	if err := in.refreshLease(); err != nil {
		return err
	}
	if err := in.pruneLeases(); err != nil {
		in.log.Warn("stale leases not removed", "error", err)
	}
	if err := in.ensureBinary(true); err != nil {
		return err
	}
	in.kubeconfig = in.cfg.ServiceAccountDir != "" && in.cfg.APIServer != ""
	if in.kubeconfig {
		if _, err := os.Stat(filepath.Join(in.cfg.ServiceAccountDir, "token")); err != nil {
			in.kubeconfig = false
		}
	}
	if !in.kubeconfig {
		in.log.Warn("no service-account token or API server address, so the plugin gets no kubeconfig",
			"effect", "while the agent is unreachable the plugin fails every pod outside the excluded namespaces, and SIGTERM always uninstalls",
			"serviceAccountDir", in.cfg.ServiceAccountDir, "apiServer", in.cfg.APIServer)
		return nil
	}
	return in.ensureKubeconfig()
}

// reconcile repairs what another component changed since the last poll.
// It restores a missing entry, binary or kubeconfig but leaves an entry
// with other settings alone: during a DaemonSet update the old and the new
// installer run side by side, and the new one's entry must win.
func (in *Installer) reconcile() {
	if err := in.pruneLeases(); err != nil {
		in.report(err)
	}
	if in.kubeconfig {
		if err := in.ensureKubeconfig(); err != nil {
			in.report(err)
		}
	}
	if err := in.ensureConfig(false); err != nil {
		in.report(err)
	}
	if err := in.ensureBinary(false); err != nil {
		in.report(err)
	}
}

// report logs a loop error, and a repeat of the same error only every
// 30th time, with the count.
func (in *Installer) report(err error) {
	msg := err.Error()
	if msg == in.lastError {
		in.repeatCount++
		if in.repeatCount%30 != 0 {
			return
		}
	} else {
		in.lastError, in.repeatCount = msg, 0
	}
	in.log.Error("mazu-cni installer step failed; retrying", "error", err, "repeats", in.repeatCount)
}

func (in *Installer) logWaiting(err error) {
	if in.waitLogged {
		return
	}
	in.waitLogged = true
	_, skipped, _ := findPrimaryConfig(in.cfg.ConfDir)
	in.log.Info("waiting for the primary network plugin's CNI configuration", "confDir", in.cfg.ConfDir,
		"confName", in.cfg.ConfName, "reason", err, "skipped", skipped)
}

// primaryConfig returns the name of the file to add the plugin to.
func (in *Installer) primaryConfig() (string, error) {
	if in.cfg.ConfName != "" {
		return resolveNamedConfig(in.cfg.ConfDir, in.cfg.ConfName)
	}
	name, skipped, err := findPrimaryConfig(in.cfg.ConfDir)
	if len(skipped) > 0 {
		in.log.Debug("CNI configurations skipped", "files", skipped)
	}
	return name, err
}

// entry is the plugin configuration the installer writes.
func (in *Installer) entry() map[string]any {
	exclude := make([]any, 0, len(in.cfg.ExcludeNamespaces))
	for _, ns := range in.cfg.ExcludeNamespaces {
		exclude = append(exclude, ns)
	}
	e := map[string]any{
		"type":              PluginType,
		"socket":            in.cfg.Socket,
		"excludeNamespaces": exclude,
	}
	if in.kubeconfig {
		e["kubeconfig"] = filepath.Join(in.cfg.HostConfDir, stateDirName, in.kubeconfigName())
	}
	return e
}

func (in *Installer) kubeconfigName() string { return "kubeconfig-" + in.cfg.PodUID }

// ensureConfig adds the plugin entry to the primary configuration. With
// force it also replaces an entry with other settings; without, only one
// whose kubeconfig file is gone.
func (in *Installer) ensureConfig(force bool) error {
	name, err := in.primaryConfig()
	if err != nil {
		return err
	}
	path := filepath.Join(in.cfg.ConfDir, name)
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read CNI configuration: %w", err)
	}
	conf, err := parseConfig(raw)
	if err == nil {
		err = validConfig(name, conf)
	}
	if err != nil {
		return fmt.Errorf("invalid CNI configuration %s: %w", path, err)
	}
	mode := os.FileMode(0o644)
	if info, err := os.Stat(path); err == nil {
		mode = info.Mode().Perm()
	}

	list := asList(name, conf)
	desired := in.entry()
	found, err := findEntries(list)
	if err != nil {
		return fmt.Errorf("invalid CNI configuration %s: %w", path, err)
	}
	current, _ := currentEntry(list)
	if current != nil {
		if sameJSON(current, desired) {
			return nil
		}
		if !force && in.referencedKubeconfigExists(current) {
			in.log.Debug("CNI configuration has a mazu-cni entry with other settings, from another installer; leaving it", "file", path)
			return nil
		}
	}
	if len(found) == 0 {
		// The file is as its owner wrote it: keep that for uninstalling.
		if err := writeFileAtomic(filepath.Join(in.stateDir, "original", name), raw, 0o600); err != nil {
			return fmt.Errorf("save original CNI configuration: %w", err)
		}
	}
	updated, err := withEntry(list, desired)
	if err != nil {
		return fmt.Errorf("invalid CNI configuration %s: %w", path, err)
	}
	data, err := encodeConfig(updated)
	if err != nil {
		return err
	}
	target := name
	if !isList(name) {
		target = name + "list"
	}
	if err := writeFileAtomic(filepath.Join(in.cfg.ConfDir, target), data, mode); err != nil {
		return fmt.Errorf("add mazu-cni to CNI configuration: %w", err)
	}
	if target != name {
		// The .conflist sorts after the .conf, so the runtime uses the
		// list only once the single configuration is gone.
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove %s after converting it to %s: %w", name, target, err)
		}
	}
	in.log.Info("added mazu-cni to the CNI configuration", "file", target, "convertedFrom", convertedFrom(name, target),
		"replacedEntry", current != nil || len(found) > 0)
	return nil
}

func convertedFrom(name, target string) string {
	if name == target {
		return ""
	}
	return name
}

// referencedKubeconfigExists reports whether the kubeconfig an entry names
// is still there. A path outside the host configuration folder cannot be
// checked and counts as present.
func (in *Installer) referencedKubeconfigExists(entry map[string]any) bool {
	ref, _ := entry["kubeconfig"].(string)
	if ref == "" {
		return true
	}
	rel, err := filepath.Rel(in.cfg.HostConfDir, ref)
	if err != nil || strings.HasPrefix(rel, "..") {
		return true
	}
	_, err = os.Stat(filepath.Join(in.cfg.ConfDir, rel))
	return err == nil
}

// ensureBinary copies the installer's executable to BinDir/mazu-cni. With
// force it replaces a binary with other content; without, it only restores
// a missing one, so two installer versions do not overwrite each other.
func (in *Installer) ensureBinary(force bool) error {
	dst := filepath.Join(in.cfg.BinDir, PluginType)
	current, err := os.ReadFile(dst)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read installed plugin binary: %w", err)
	}
	if err == nil && !force {
		return nil
	}
	src, err := os.ReadFile(in.cfg.BinarySource)
	if err != nil {
		return fmt.Errorf("read plugin binary to install: %w", err)
	}
	if current != nil && bytes.Equal(current, src) {
		return nil
	}
	if err := writeFileAtomic(dst, src, 0o755); err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	in.log.Info("installed the mazu-cni binary", "path", dst, "bytes", len(src))
	return nil
}

// ensureKubeconfig writes the plugin's kubeconfig when the token changed,
// as the kubelet rotates it, or the file is missing.
func (in *Installer) ensureKubeconfig() error {
	path := filepath.Join(in.stateDir, in.kubeconfigName())
	token, err := os.ReadFile(filepath.Join(in.cfg.ServiceAccountDir, "token"))
	if err != nil {
		return fmt.Errorf("read service-account token: %w", err)
	}
	token = bytes.TrimSpace(token)
	if bytes.Equal(token, in.token) {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
	}
	ca, err := os.ReadFile(filepath.Join(in.cfg.ServiceAccountDir, "ca.crt"))
	if err != nil {
		return fmt.Errorf("read API server CA bundle: %w", err)
	}
	data, err := json.MarshalIndent(newKubeconfig(in.cfg.APIServer, ca, string(token)), "", "  ")
	if err != nil {
		return fmt.Errorf("encode kubeconfig: %w", err)
	}
	if err := writeFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write plugin kubeconfig: %w", err)
	}
	in.token = token
	in.log.Info("wrote the plugin's kubeconfig", "path", path, "apiServer", in.cfg.APIServer)
	return nil
}

func (in *Installer) leasePath(uid string) string {
	return filepath.Join(in.stateDir, "leases", uid)
}

func (in *Installer) refreshLease() error {
	path := in.leasePath(in.cfg.PodUID)
	now := time.Now()
	if err := os.Chtimes(path, now, now); err == nil {
		return nil
	}
	owner := in.cfg.PodNamespace + "/" + in.cfg.PodName + "\n"
	if err := os.WriteFile(path, []byte(owner), 0o600); err != nil {
		return fmt.Errorf("write installer lease: %w", err)
	}
	return nil
}

// liveLeases returns the UIDs of the other installers whose leases were
// refreshed within LeaseTTL.
func (in *Installer) liveLeases() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(in.stateDir, "leases"))
	if err != nil {
		return nil, fmt.Errorf("list installer leases: %w", err)
	}
	var live []string
	for _, e := range entries {
		if e.Name() == in.cfg.PodUID {
			continue
		}
		info, err := e.Info()
		if err == nil && time.Since(info.ModTime()) < in.cfg.LeaseTTL {
			live = append(live, e.Name())
		}
	}
	return live, nil
}

// pruneLeases removes leases older than LeaseTTL, left by installers that
// were killed, and kubeconfigs of installers without a lease.
func (in *Installer) pruneLeases() error {
	leases := filepath.Join(in.stateDir, "leases")
	entries, err := os.ReadDir(leases)
	if err != nil {
		return fmt.Errorf("list installer leases: %w", err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if e.Name() == in.cfg.PodUID || err != nil || time.Since(info.ModTime()) < in.cfg.LeaseTTL {
			continue
		}
		if err := os.Remove(filepath.Join(leases, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale installer lease: %w", err)
		}
		in.log.Info("removed a stale installer lease", "podUID", e.Name(), "lastRefresh", info.ModTime())
	}
	state, err := os.ReadDir(in.stateDir)
	if err != nil {
		return fmt.Errorf("list installer state: %w", err)
	}
	for _, e := range state {
		uid, ok := strings.CutPrefix(e.Name(), "kubeconfig-")
		if !ok || uid == in.cfg.PodUID {
			continue
		}
		if _, err := os.Stat(in.leasePath(uid)); errors.Is(err, os.ErrNotExist) {
			if err := os.Remove(filepath.Join(in.stateDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove kubeconfig of a stopped installer: %w", err)
			}
		}
	}
	return nil
}
