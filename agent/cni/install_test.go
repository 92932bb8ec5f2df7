package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sampleConflist is formatted as a primary plugin might write it, with keys
// out of order, so that only a byte-exact restore reproduces it.
const sampleConflist = `{
    "name": "k8s-pod-network",
    "cniVersion": "1.0.0",
    "plugins": [
        {"type": "ptp", "ipMasq": true, "mtu": 1450, "ipam": {"type": "host-local", "subnet": "198.19.1.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
    ]
}
`

const sampleConf = `{"name":"bridge-net","cniVersion":"0.4.0","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"198.19.2.0/24"}}
`

// waitTimeout bounds how long a test waits for the installer's loop. It is
// a limit for a hung test, not a measured duration.
const waitTimeout = 20 * time.Second

// testInstallConfig returns a configuration over temporary folders with
// one file in the configuration folder.
func testInstallConfig(t *testing.T, confName, content string) InstallConfig {
	t.Helper()
	root := t.TempDir()
	cfg := InstallConfig{
		BinDir:            filepath.Join(root, "bin"),
		ConfDir:           filepath.Join(root, "net.d"),
		HostConfDir:       "/etc/cni/net.d",
		Socket:            "/var/run/mazu-ztunnel/cni.sock",
		ExcludeNamespaces: []string{"kube-system", "istio-system"},
		PodUID:            "uid-a",
		PodName:           "mazu-ztunnel-a",
		PodNamespace:      "istio-system",
		BinarySource:      filepath.Join(root, "source-binary"),
		PollInterval:      10 * time.Millisecond,
		LeaseTTL:          30 * time.Second,
	}
	for _, dir := range []string{cfg.BinDir, cfg.ConfDir} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(cfg.BinarySource, []byte("#!/bin/sh\necho plugin\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if confName != "" {
		writeFile(t, filepath.Join(cfg.ConfDir, confName), content)
	}
	return cfg
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// installOnce runs the installer's start and first insertion, without its
// loop.
func installOnce(t *testing.T, cfg InstallConfig) *Installer {
	t.Helper()
	in := NewInstaller(cfg, testLogger(t))
	if err := in.start(); err != nil {
		t.Fatal(err)
	}
	if err := in.ensureConfig(true); err != nil {
		t.Fatal(err)
	}
	return in
}

// pluginTypes returns the types of a configuration list's plugins.
func pluginTypes(t *testing.T, path string) ([]string, cniConfig) {
	t.Helper()
	list, err := parseConfig([]byte(readFile(t, path)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	plugins, _ := list["plugins"].([]any)
	var types []string
	for _, p := range plugins {
		types = append(types, p.(map[string]any)["type"].(string))
	}
	return types, list
}

// runInstaller starts Run in the background and returns a function that
// stops it and returns Run's error.
func runInstaller(t *testing.T, cfg InstallConfig) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewInstaller(cfg, testLogger(t)).Run(ctx) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(waitTimeout):
			t.Fatal("installer did not stop")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasEntry(path string) bool {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	list, err := parseConfig(raw)
	if err != nil {
		return false
	}
	found, err := findEntries(list)
	return err == nil && len(found) == 1
}

func TestInstallAddsEntryToConflist(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	installOnce(t, cfg)

	path := filepath.Join(cfg.ConfDir, "10-ptp.conflist")
	types, list := pluginTypes(t, path)
	if strings.Join(types, ",") != "ptp,portmap,mazu-cni" {
		t.Fatalf("plugin chain = %v, want ptp, portmap, mazu-cni", types)
	}
	if list["name"] != "k8s-pod-network" || list["cniVersion"] != "1.0.0" {
		t.Errorf("list name and version = %v %v, want them unchanged", list["name"], list["cniVersion"])
	}
	entry := list["plugins"].([]any)[2].(map[string]any)
	if entry["socket"] != cfg.Socket {
		t.Errorf("entry socket = %v, want %s", entry["socket"], cfg.Socket)
	}
	if got, _ := json.Marshal(entry["excludeNamespaces"]); string(got) != `["kube-system","istio-system"]` {
		t.Errorf("entry excludeNamespaces = %s", got)
	}
	if _, ok := entry["kubeconfig"]; ok {
		t.Errorf("entry names a kubeconfig although the installer has no token: %v", entry)
	}
	ptp := list["plugins"].([]any)[0].(map[string]any)
	if ptp["mtu"] != json.Number("1450") {
		t.Errorf("ptp mtu = %#v, want the number 1450 unchanged", ptp["mtu"])
	}

	bin := filepath.Join(cfg.BinDir, PluginType)
	if readFile(t, bin) != readFile(t, cfg.BinarySource) {
		t.Error("installed binary differs from the source")
	}
	if info, err := os.Stat(bin); err != nil || info.Mode().Perm() != 0o755 {
		t.Errorf("installed binary mode = %v (%v), want 0755", info.Mode(), err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(cfg.ConfDir, ".*.tmp"))
	binLeftovers, _ := filepath.Glob(filepath.Join(cfg.BinDir, ".*.tmp"))
	if len(leftovers)+len(binLeftovers) != 0 {
		t.Errorf("temporary files left: %v %v", leftovers, binLeftovers)
	}
}

func TestInstallConvertsConf(t *testing.T) {
	cfg := testInstallConfig(t, "10-bridge.conf", sampleConf)
	installOnce(t, cfg)

	if _, err := os.Stat(filepath.Join(cfg.ConfDir, "10-bridge.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("10-bridge.conf still exists (%v), so the runtime would pick it before the list", err)
	}
	types, list := pluginTypes(t, filepath.Join(cfg.ConfDir, "10-bridge.conflist"))
	if strings.Join(types, ",") != "bridge,mazu-cni" {
		t.Fatalf("plugin chain = %v, want bridge, mazu-cni", types)
	}
	if list["name"] != "bridge-net" || list["cniVersion"] != "0.4.0" {
		t.Errorf("list name and version = %v %v, want the .conf's bridge-net 0.4.0", list["name"], list["cniVersion"])
	}
}

func TestInstallIsIdempotent(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	path := filepath.Join(cfg.ConfDir, "10-ptp.conflist")
	installOnce(t, cfg)
	first := readFile(t, path)
	firstInfo, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	installOnce(t, cfg)
	if second := readFile(t, path); second != first {
		t.Errorf("second install changed the file:\n%s\nwant:\n%s", second, first)
	}
	if info, err := os.Stat(path); err != nil || !info.ModTime().Equal(firstInfo.ModTime()) {
		t.Errorf("second install rewrote the file (%v)", err)
	}
	// The saved original is still the file without the entry.
	if saved := readFile(t, filepath.Join(cfg.ConfDir, stateDirName, "original", "10-ptp.conflist")); saved != sampleConflist {
		t.Errorf("saved original = %q, want the primary plugin's file", saved)
	}
}

func TestInstallReplacesEntryWithOtherSettings(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	installOnce(t, cfg)
	cfg.Socket = "/run/other/cni.sock"
	installOnce(t, cfg)

	types, list := pluginTypes(t, filepath.Join(cfg.ConfDir, "10-ptp.conflist"))
	if strings.Join(types, ",") != "ptp,portmap,mazu-cni" {
		t.Fatalf("plugin chain = %v, want one mazu-cni entry", types)
	}
	if socket := list["plugins"].([]any)[2].(map[string]any)["socket"]; socket != "/run/other/cni.sock" {
		t.Errorf("entry socket = %v, want the new setting", socket)
	}
}

func TestInstallUsesNamedConfig(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	writeFile(t, filepath.Join(cfg.ConfDir, "20-bridge.conf"), sampleConf)
	cfg.ConfName = "20-bridge.conf"
	installOnce(t, cfg)

	if readFile(t, filepath.Join(cfg.ConfDir, "10-ptp.conflist")) != sampleConflist {
		t.Error("installer changed 10-ptp.conflist although CNI_CONF_NAME names 20-bridge.conf")
	}
	if !hasEntry(filepath.Join(cfg.ConfDir, "20-bridge.conflist")) {
		t.Error("20-bridge.conflist has no mazu-cni entry")
	}
	// A second run finds the converted list under the .conf name.
	installOnce(t, cfg)
}

func TestFindPrimaryConfigSkipsInvalidFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "00-broken.conflist"), "{not json")
	writeFile(t, filepath.Join(dir, "05-empty.conflist"), `{"name":"x","plugins":[]}`)
	writeFile(t, filepath.Join(dir, "07-list-in-conf.conf"), `{"name":"x","plugins":[{"type":"ptp"}]}`)
	writeFile(t, filepath.Join(dir, "08-other.json"), `{"name":"x","type":"ptp"}`)
	writeFile(t, filepath.Join(dir, "10-bridge.conf"), sampleConf)
	writeFile(t, filepath.Join(dir, "20-ptp.conflist"), sampleConflist)
	if err := os.Mkdir(filepath.Join(dir, "01-folder.conflist"), 0o755); err != nil {
		t.Fatal(err)
	}

	name, skipped, err := findPrimaryConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if name != "10-bridge.conf" {
		t.Errorf("primary = %s, want 10-bridge.conf", name)
	}
	if len(skipped) != 3 {
		t.Errorf("skipped = %v, want the three invalid files", skipped)
	}
}

func TestInstallerReinsertsAfterRewrite(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	path := filepath.Join(cfg.ConfDir, "10-ptp.conflist")
	bin := filepath.Join(cfg.BinDir, PluginType)
	stop := runInstaller(t, cfg)
	waitFor(t, "the first insertion", func() bool { return hasEntry(path) })

	// The primary plugin rewrites its file, as Cilium does on restart.
	rewritten := strings.Replace(sampleConflist, `"mtu": 1450`, `"mtu": 1400`, 1)
	writeFile(t, path, rewritten)
	waitFor(t, "the entry to return", func() bool { return hasEntry(path) })
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the binary to return", func() bool { _, err := os.Stat(bin); return err == nil })

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Uninstalling restores the rewritten file, not the first one.
	if got := readFile(t, path); got != rewritten {
		t.Errorf("after stop the file is\n%s\nwant the rewritten original\n%s", got, rewritten)
	}
}

func TestInstallerStopRestoresOriginal(t *testing.T) {
	cases := []struct {
		name, file, content, listFile string
	}{
		{"conflist", "10-ptp.conflist", sampleConflist, "10-ptp.conflist"},
		{"conf", "10-bridge.conf", sampleConf, "10-bridge.conflist"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testInstallConfig(t, tc.file, tc.content)
			stop := runInstaller(t, cfg)
			waitFor(t, "the insertion", func() bool { return hasEntry(filepath.Join(cfg.ConfDir, tc.listFile)) })

			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, filepath.Join(cfg.ConfDir, tc.file)); got != tc.content {
				t.Errorf("after stop %s is\n%s\nwant the original\n%s", tc.file, got, tc.content)
			}
			files, _ := os.ReadDir(cfg.ConfDir)
			if len(files) != 1 {
				t.Errorf("configuration folder holds %d entries after stop, want only %s", len(files), tc.file)
			}
			if _, err := os.Stat(filepath.Join(cfg.BinDir, PluginType)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("plugin binary still installed after stop (%v)", err)
			}
		})
	}
}

func TestInstallerStopWhileWaitingForConfig(t *testing.T) {
	cfg := testInstallConfig(t, "", "")
	stop := runInstaller(t, cfg)
	bin := filepath.Join(cfg.BinDir, PluginType)
	waitFor(t, "the binary", func() bool { _, err := os.Stat(bin); return err == nil })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("plugin binary still installed after stop (%v)", err)
	}
}

func TestInstallerStopKeepsPluginForOtherInstaller(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	path := filepath.Join(cfg.ConfDir, "10-ptp.conflist")
	stop := runInstaller(t, cfg)
	waitFor(t, "the insertion", func() bool { return hasEntry(path) })

	// The new installer of a DaemonSet update holds a fresh lease.
	writeFile(t, filepath.Join(cfg.ConfDir, stateDirName, "leases", "uid-b"), "istio-system/mazu-ztunnel-b\n")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !hasEntry(path) {
		t.Error("stop removed the entry although another installer runs")
	}
	if _, err := os.Stat(filepath.Join(cfg.BinDir, PluginType)); err != nil {
		t.Errorf("stop removed the binary although another installer runs: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.ConfDir, stateDirName, "leases", "uid-a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stop kept its own lease (%v)", err)
	}
}

func TestInstallerPrunesStaleLease(t *testing.T) {
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	state := filepath.Join(cfg.ConfDir, stateDirName)
	if err := os.MkdirAll(filepath.Join(state, "leases"), 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(state, "leases", "uid-killed")
	writeFile(t, stale, "istio-system/mazu-ztunnel-old\n")
	writeFile(t, filepath.Join(state, "kubeconfig-uid-killed"), "{}")
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}

	stop := runInstaller(t, cfg)
	waitFor(t, "the stale lease and its kubeconfig to go", func() bool {
		_, errLease := os.Stat(stale)
		_, errKube := os.Stat(filepath.Join(state, "kubeconfig-uid-killed"))
		return errors.Is(errLease, os.ErrNotExist) && errors.Is(errKube, os.ErrNotExist)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// With only a stale lease left the installer uninstalls.
	if got := readFile(t, filepath.Join(cfg.ConfDir, "10-ptp.conflist")); got != sampleConflist {
		t.Errorf("after stop the file is\n%s\nwant the original", got)
	}
}

func TestInstallerWritesKubeconfig(t *testing.T) {
	api := startFakeAPI(t)
	api.addNamespace("shop", map[string]string{dataplaneModeLabel: "ambient"})
	api.addPod("shop", "web", "1234", nil, false)
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	cfg.ServiceAccountDir = api.writeServiceAccount(t)
	cfg.APIServer = api.server.URL
	cfg.HostConfDir = cfg.ConfDir
	installOnce(t, cfg)

	_, list := pluginTypes(t, filepath.Join(cfg.ConfDir, "10-ptp.conflist"))
	entry := list["plugins"].([]any)[2].(map[string]any)
	kubeconfigPath, _ := entry["kubeconfig"].(string)
	if kubeconfigPath != filepath.Join(cfg.ConfDir, stateDirName, "kubeconfig-uid-a") {
		t.Fatalf("entry kubeconfig = %q", kubeconfigPath)
	}
	if info, err := os.Stat(kubeconfigPath); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig mode = %v (%v), want 0600", info.Mode(), err)
	}
	// The plugin can read the pod's namespace with what the installer wrote.
	ambient, err := lookUpAmbient(kubeconfigPath, Request{Namespace: "shop", Name: "web", UID: "1234"})
	if err != nil || !ambient {
		t.Errorf("lookUpAmbient with the installed kubeconfig = %t, %v; want true", ambient, err)
	}
}

func TestInstallerRewritesKubeconfigOnTokenRotation(t *testing.T) {
	api := startFakeAPI(t)
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	cfg.ServiceAccountDir = api.writeServiceAccount(t)
	cfg.APIServer = api.server.URL
	kubeconfigPath := filepath.Join(cfg.ConfDir, stateDirName, "kubeconfig-uid-a")
	runInstaller(t, cfg)
	waitFor(t, "the kubeconfig", func() bool { _, err := os.Stat(kubeconfigPath); return err == nil })

	writeFile(t, filepath.Join(cfg.ServiceAccountDir, "token"), "rotated-token")
	waitFor(t, "the rotated token in the kubeconfig", func() bool {
		data, err := os.ReadFile(kubeconfigPath)
		return err == nil && bytes.Contains(data, []byte("rotated-token"))
	})
}

func TestInstallerLoopRespectsOtherInstallersEntry(t *testing.T) {
	api := startFakeAPI(t)
	cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
	cfg.ServiceAccountDir = api.writeServiceAccount(t)
	cfg.APIServer = api.server.URL
	cfg.HostConfDir = cfg.ConfDir
	path := filepath.Join(cfg.ConfDir, "10-ptp.conflist")
	state := filepath.Join(cfg.ConfDir, stateDirName)
	runInstaller(t, cfg)
	waitFor(t, "the insertion", func() bool { return hasEntry(path) })

	// A newer installer of the same node writes its own entry. The loop
	// leaves it while the kubeconfig it names exists ...
	otherKubeconfig := filepath.Join(state, "kubeconfig-uid-b")
	writeFile(t, otherKubeconfig, "{}")
	writeFile(t, filepath.Join(state, "leases", "uid-b"), "istio-system/mazu-ztunnel-b\n")
	other := fmt.Sprintf(`{"name":"k8s-pod-network","cniVersion":"1.0.0","plugins":[{"type":"ptp"},`+
		`{"type":"mazu-cni","socket":"/run/b/cni.sock","excludeNamespaces":[],"kubeconfig":%q}]}`, otherKubeconfig)
	writeFile(t, path, other)
	for range 20 {
		time.Sleep(cfg.PollInterval)
		if got := readFile(t, path); got != other {
			t.Fatalf("the loop replaced the other installer's entry:\n%s", got)
		}
	}

	// ... and repairs it once that kubeconfig is gone.
	if err := os.Remove(otherKubeconfig); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the entry to name this installer's kubeconfig", func() bool {
		return strings.Contains(readFile(t, path), "kubeconfig-uid-a")
	})
}

func TestInstallerStopDependsOnPodDeletion(t *testing.T) {
	cases := []struct {
		name      string
		pod       bool
		deleting  bool
		uninstall bool
	}{
		{"pod stays", true, false, false},
		{"pod deleting", true, true, true},
		{"pod gone", false, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			api := startFakeAPI(t)
			cfg := testInstallConfig(t, "10-ptp.conflist", sampleConflist)
			if tc.pod {
				api.addPod(cfg.PodNamespace, cfg.PodName, cfg.PodUID, nil, tc.deleting)
			}
			cfg.ServiceAccountDir = api.writeServiceAccount(t)
			cfg.APIServer = api.server.URL
			path := filepath.Join(cfg.ConfDir, "10-ptp.conflist")
			stop := runInstaller(t, cfg)
			waitFor(t, "the insertion", func() bool { return hasEntry(path) })

			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if tc.uninstall {
				if got := readFile(t, path); got != sampleConflist {
					t.Errorf("after stop the file is\n%s\nwant the original", got)
				}
				return
			}
			if !hasEntry(path) {
				t.Error("stop removed the entry although the pod is not being deleted")
			}
			if _, err := os.Stat(filepath.Join(cfg.ConfDir, stateDirName, "kubeconfig-uid-a")); err != nil {
				t.Errorf("stop removed the kubeconfig the entry names: %v", err)
			}
		})
	}
}

func TestInstallConfigFromEnv(t *testing.T) {
	env := map[string]string{
		"CNI_BIN_DIR":             "/host/opt/cni/bin",
		"CNI_CONF_DIR":            "/host/etc/cni/net.d",
		"HOST_CNI_CONF_DIR":       "/etc/cni/net.d",
		"CNI_CONF_NAME":           "",
		"CHAINED_CNI_PLUGIN":      "true",
		"MAZU_CNI_SOCKET":         "/var/run/mazu-ztunnel/cni.sock",
		"EXCLUDE_NAMESPACES":      "kube-system, monitoring",
		"AMBIENT_DNS_CAPTURE":     "false",
		"AMBIENT_IPV6":            "true",
		"LOG_LEVEL":               "debug",
		"POD_UID":                 "uid-a",
		"POD_NAME":                "mazu-ztunnel-a",
		"POD_NAMESPACE":           "istio-system",
		"KUBERNETES_SERVICE_HOST": "fd00::1",
		"KUBERNETES_SERVICE_PORT": "443",
	}
	cfg, err := InstallConfigFromEnv(lookupIn(env))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.ExcludeNamespaces, ","); got != "kube-system,monitoring,istio-system" {
		t.Errorf("excluded namespaces = %s, want the list plus the installer's namespace", got)
	}
	if cfg.APIServer != "https://[fd00::1]:443" {
		t.Errorf("API server = %s", cfg.APIServer)
	}
	if cfg.LogLevel != slog.LevelDebug {
		t.Errorf("log level = %v, want debug", cfg.LogLevel)
	}

	delete(env, "EXCLUDE_NAMESPACES")
	cfg, err = InstallConfigFromEnv(lookupIn(env))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.ExcludeNamespaces, ","); got != "kube-system,istio-system" {
		t.Errorf("excluded namespaces without EXCLUDE_NAMESPACES = %s, want kube-system and the installer's namespace", got)
	}
}

func TestInstallConfigRejectsUnsupportedValues(t *testing.T) {
	cases := []struct {
		key, value string
		message    string
	}{
		{"CNI_CONF_NAME", "../10-ptp.conflist", `invalid CNI_CONF_NAME "../10-ptp.conflist"`},
		{"CNI_CONF_NAME", "10-ptp.json", `invalid CNI_CONF_NAME "10-ptp.json": the container runtime reads only .conf and .conflist`},
		{"CNI_CONF_NAME", ".hidden.conf", `invalid CNI_CONF_NAME ".hidden.conf"`},
		{"CHAINED_CNI_PLUGIN", "false", "CHAINED_CNI_PLUGIN=false is not supported"},
		{"AMBIENT_DNS_CAPTURE", "true", "AMBIENT_DNS_CAPTURE=true is not supported: the mazu-ztunnel agent has no DNS proxy"},
		{"AMBIENT_IPV6", "false", "AMBIENT_IPV6=false is not supported"},
		{"AMBIENT_IPV6", "maybe", `invalid AMBIENT_IPV6 "maybe": want true or false`},
		{"LOG_LEVEL", "loud", `invalid LOG_LEVEL "loud": want debug, info, warn or error`},
		{"EXCLUDE_NAMESPACES", "kube-system,Bad_NS", `invalid namespace "Bad_NS" in EXCLUDE_NAMESPACES`},
		{"MAZU_CNI_SOCKET", "cni.sock", `invalid MAZU_CNI_SOCKET "cni.sock"`},
		{"POD_UID", "", "POD_UID is not set"},
		{"CNI_BIN_DIR", "", "CNI_BIN_DIR is not set"},
	}
	for _, tc := range cases {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			env := map[string]string{
				"CNI_BIN_DIR":  "/host/opt/cni/bin",
				"CNI_CONF_DIR": "/host/etc/cni/net.d",
				"POD_UID":      "uid-a",
			}
			env[tc.key] = tc.value
			_, err := InstallConfigFromEnv(lookupIn(env))
			if err == nil {
				t.Fatalf("accepted %s=%q, want an error containing %q", tc.key, tc.value, tc.message)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error = %q, want it to contain %q", err, tc.message)
			}
		})
	}
}

func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(key string) (string, bool) {
		v, ok := env[key]
		return v, ok
	}
}

// TestInstallCommandUninstallsOnSIGTERM runs the real binary as the chart
// does and stops it as the kubelet does.
func TestInstallCommandUninstallsOnSIGTERM(t *testing.T) {
	bin := buildPlugin(t)
	cfg := testInstallConfig(t, "10-bridge.conf", sampleConf)
	cmd := exec.Command(bin, "install")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Env = []string{
		"CNI_BIN_DIR=" + cfg.BinDir,
		"CNI_CONF_DIR=" + cfg.ConfDir,
		"CHAINED_CNI_PLUGIN=true",
		"MAZU_CNI_SOCKET=/var/run/mazu-ztunnel/cni.sock",
		"EXCLUDE_NAMESPACES=kube-system",
		"AMBIENT_DNS_CAPTURE=false",
		"AMBIENT_IPV6=true",
		"LOG_LEVEL=debug",
		"POD_UID=uid-a",
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	list := filepath.Join(cfg.ConfDir, "10-bridge.conflist")
	waitFor(t, "the installer to add its entry", func() bool { return hasEntry(list) })
	installed := filepath.Join(cfg.BinDir, PluginType)
	if readFile(t, installed) != readFile(t, bin) {
		t.Error("installed binary differs from the installer's own executable")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("installer exited with %v\n%s", err, stderr.String())
		}
	case <-time.After(waitTimeout):
		t.Fatalf("installer did not exit after SIGTERM\n%s", stderr.String())
	}
	if got := readFile(t, filepath.Join(cfg.ConfDir, "10-bridge.conf")); got != sampleConf {
		t.Errorf("after SIGTERM 10-bridge.conf is\n%s\nwant the original", got)
	}
	if _, err := os.Stat(list); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("10-bridge.conflist still exists after SIGTERM (%v)", err)
	}
	if _, err := os.Stat(installed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("plugin binary still installed after SIGTERM (%v)", err)
	}
	if !strings.Contains(stderr.String(), "uninstalled mazu-cni") {
		t.Errorf("installer log lacks the uninstall message:\n%s", stderr.String())
	}
}

func TestInstallCommandRejectsBadConfName(t *testing.T) {
	bin := buildPlugin(t)
	cmd := exec.Command(bin, "install")
	cmd.Env = []string{"CNI_BIN_DIR=/tmp/none", "CNI_CONF_DIR=/tmp/none", "POD_UID=uid-a", "CNI_CONF_NAME=net.d/10-ptp.conflist"}
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Fatalf("install with a bad CNI_CONF_NAME = %v, want exit code 1\n%s", err, out)
	}
	if !strings.Contains(string(out), `invalid CNI_CONF_NAME "net.d/10-ptp.conflist"`) {
		t.Errorf("output = %s, want it to name the invalid CNI_CONF_NAME", out)
	}
}
