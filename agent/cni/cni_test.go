package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// recordingHandler enrolls pods whose name starts with "ambient-" and fails
// for "broken-", recording every request.
type recordingHandler struct {
	mu       sync.Mutex
	requests []Request
}

func (h *recordingHandler) record(req Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests = append(h.requests, req)
}

func (h *recordingHandler) Enroll(_ context.Context, req Request) (bool, error) {
	h.record(req)
	if strings.HasPrefix(req.Name, "broken-") {
		return false, errors.New("capture could not attach")
	}
	return strings.HasPrefix(req.Name, "ambient-"), nil
}

func (h *recordingHandler) Unenroll(_ context.Context, req Request) error {
	h.record(req)
	return nil
}

func (h *recordingHandler) Enrolled(_ context.Context, req Request) (bool, error) {
	h.record(req)
	return true, nil
}

// pluginBuild is the binary of cmd/mazu-cni that buildPlugin builds once
// per test run, in a folder TestMain removes.
var pluginBuild struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pluginBuild.dir != "" {
		os.RemoveAll(pluginBuild.dir)
	}
	os.Exit(code)
}

// buildPlugin builds cmd/mazu-cni, so the tests drive the real binary
// through the CNI protocol: environment variables and JSON on stdin.
func buildPlugin(t *testing.T) string {
	t.Helper()
	pluginBuild.once.Do(func() {
		pluginBuild.dir, pluginBuild.err = os.MkdirTemp("", "mazu-cni-test-")
		if pluginBuild.err != nil {
			return
		}
		pluginBuild.bin = filepath.Join(pluginBuild.dir, "mazu-cni")
		out, err := exec.Command("go", "build", "-o", pluginBuild.bin, "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-cni").CombinedOutput()
		if err != nil {
			pluginBuild.err = fmt.Errorf("build mazu-cni: %w\n%s", err, out)
		}
	})
	if pluginBuild.err != nil {
		t.Fatal(pluginBuild.err)
	}
	return pluginBuild.bin
}

func startServer(t *testing.T, h Handler) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "cni.sock")
	srv, err := Listen(socket, h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })
	return socket
}

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"198.19.1.7/24","interface":0}]}`

func invoke(t *testing.T, bin, command, pod, socket string) (int, map[string]any) {
	t.Helper()
	return invokeIn(t, bin, command, "shop", pod, map[string]any{"socket": socket})
}

// invokeIn runs the plugin for a pod with UID 1234, with settings merged
// into a network configuration that has a previous result.
func invokeIn(t *testing.T, bin, command, namespace, pod string, settings map[string]any) (int, map[string]any) {
	t.Helper()
	netConf := map[string]any{
		"cniVersion":     "1.0.0",
		"name":           "k8s-pod-network",
		"type":           "mazu-cni",
		"timeoutSeconds": 5,
		"prevResult":     json.RawMessage(prevResult),
	}
	for k, v := range settings {
		netConf[k] = v
	}
	conf, err := json.Marshal(netConf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=c0ffee",
		"CNI_NETNS=/var/run/netns/test-pod",
		"CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + namespace + ";K8S_POD_NAME=" + pod + ";K8S_POD_UID=1234",
	}
	cmd.Stdin = bytes.NewReader(conf)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err = cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if code == 0 && stdout.Len() == 0 {
		// A successful CHECK writes nothing.
		return code, out
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("plugin output is not JSON: %v\n%s", err, stdout.String())
	}
	return code, out
}

func TestPluginAddPassesResultThrough(t *testing.T) {
	bin := buildPlugin(t)
	h := &recordingHandler{}
	socket := startServer(t, h)

	code, out := invoke(t, bin, "ADD", "ambient-web", socket)
	if code != 0 {
		t.Fatalf("ADD exit code %d, output %v", code, out)
	}
	if ips, _ := out["ips"].([]any); len(ips) != 1 {
		t.Errorf("ADD output lost the previous result's IPs: %v", out)
	}
	if len(h.requests) != 1 {
		t.Fatalf("agent got %d requests, want 1", len(h.requests))
	}
	req := h.requests[0]
	if req.Op != OpAdd || req.Namespace != "shop" || req.Name != "ambient-web" || req.UID != "1234" || req.Netns != "/var/run/netns/test-pod" {
		t.Errorf("agent got %+v", req)
	}
}

func TestPluginAddFailsWhenAgentFails(t *testing.T) {
	bin := buildPlugin(t)
	socket := startServer(t, &recordingHandler{})
	code, out := invoke(t, bin, "ADD", "broken-web", socket)
	if code == 0 {
		t.Fatal("ADD succeeded although the agent failed to enroll")
	}
	if out["code"] != float64(codeTryAgain) || !strings.Contains(out["details"].(string), "capture could not attach") {
		t.Errorf("CNI error = %v, want code %d naming the agent's error", out, codeTryAgain)
	}
}

func TestPluginAddFailsWithoutAgent(t *testing.T) {
	bin := buildPlugin(t)
	missing := filepath.Join(t.TempDir(), "absent.sock")
	if code, out := invoke(t, bin, "ADD", "ambient-web", missing); code == 0 {
		t.Fatalf("ADD succeeded with no agent: %v", out)
	}
	// DEL succeeds regardless, so the runtime can always tear a sandbox down.
	if code, out := invoke(t, bin, "DEL", "ambient-web", missing); code != 0 {
		t.Fatalf("DEL failed with no agent: %v", out)
	}
}

func TestPluginVersion(t *testing.T) {
	bin := buildPlugin(t)
	code, out := invoke(t, bin, "VERSION", "x", "/nonexistent")
	if code != 0 || out["supportedVersions"] == nil {
		t.Fatalf("VERSION = %d %v", code, out)
	}
}

func TestPluginRejectsUnknownCommand(t *testing.T) {
	bin := buildPlugin(t)
	code, out := invoke(t, bin, "RESTART", "x", "/nonexistent")
	if code == 0 || out["code"] != float64(codeInvalidEnv) {
		t.Fatalf("unknown command = %d %v, want code %d", code, out, codeInvalidEnv)
	}
}

// failingReader fails the test that reads from it.
type failingReader struct{ t *testing.T }

func (r failingReader) Read([]byte) (int, error) {
	r.t.Error("the plugin read stdin before checking CNI_COMMAND")
	return 0, io.EOF
}

func TestPluginMissingCommand(t *testing.T) {
	var out bytes.Buffer
	code := RunPlugin(func(string) string { return "" }, failingReader{t}, &out)
	var res Error
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("decode CNI error %q: %v", out.String(), err)
	}
	if code == 0 {
		t.Error("exit code = 0, want non-zero")
	}
	if res.Code != codeInvalidEnv {
		t.Errorf("code = %d, want %d (invalid environment variables)", res.Code, codeInvalidEnv)
	}
	if !strings.Contains(res.Msg, "CNI_COMMAND") {
		t.Errorf("message %q does not name CNI_COMMAND", res.Msg)
	}
}

func TestPluginUndecodableConfig(t *testing.T) {
	env := map[string]string{"CNI_COMMAND": "ADD"}
	var out bytes.Buffer
	code := RunPlugin(func(k string) string { return env[k] }, strings.NewReader("not json"), &out)
	var res Error
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("decode CNI error %q: %v", out.String(), err)
	}
	if code == 0 {
		t.Error("exit code = 0, want non-zero")
	}
	if res.Code != codeDecode {
		t.Errorf("code = %d, want %d (failed to decode content)", res.Code, codeDecode)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"op":"add","namespace":"a","name":"b","netns":"/x"}`))
	f.Add([]byte(`{"op":"del","namespace":"a","name":"b"}`))
	f.Add([]byte(`{"op":"zap"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := decodeRequest(data)
		if err != nil {
			return
		}
		if req.Namespace == "" || req.Name == "" || (req.Op == OpAdd && req.Netns == "") {
			t.Fatalf("decodeRequest accepted an incomplete request: %+v", req)
		}
	})
}
