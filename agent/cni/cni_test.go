package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
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

// buildPlugin builds cmd/mazu-cni, so the tests drive the real binary
// through the CNI protocol: environment variables and JSON on stdin.
func buildPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mazu-cni")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("build mazu-cni: %v\n%s", err, out)
	}
	return bin
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
	conf := `{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mazu-cni","socket":"` + socket + `","timeoutSeconds":5,"prevResult":` + prevResult + `}`
	cmd := exec.Command(bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=c0ffee",
		"CNI_NETNS=/var/run/netns/test-pod",
		"CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + pod + ";K8S_POD_UID=1234",
	}
	cmd.Stdin = strings.NewReader(conf)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
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
