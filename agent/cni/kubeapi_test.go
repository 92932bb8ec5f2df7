package cni

import (
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const testToken = "test-token"

// fakeAPI serves pods and namespaces the way the Kubernetes API does, to
// callers presenting testToken.
type fakeAPI struct {
	server *httptest.Server
	mu     sync.Mutex
	// objects maps an API path to the object served there.
	objects map[string]map[string]any
}

func startFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	api := &fakeAPI{objects: map[string]map[string]any{}}
	api.server = httptest.NewTLSServer(http.HandlerFunc(api.serve))
	t.Cleanup(api.server.Close)
	return api
}

func (a *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"kind":"Status","reason":"Unauthorized"}`))
		return
	}
	a.mu.Lock()
	obj, ok := a.objects[r.URL.Path]
	a.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"kind":"Status","reason":"NotFound"}`))
		return
	}
	_ = json.NewEncoder(w).Encode(obj)
}

func (a *fakeAPI) addNamespace(name string, labels map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.objects["/api/v1/namespaces/"+name] = map[string]any{
		"kind":     "Namespace",
		"metadata": map[string]any{"name": name, "labels": labels},
	}
}

func (a *fakeAPI) addPod(namespace, name, uid string, labels map[string]string, deleting bool) {
	meta := map[string]any{"name": name, "namespace": namespace, "uid": uid, "labels": labels}
	if deleting {
		meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.objects["/api/v1/namespaces/"+namespace+"/pods/"+name] = map[string]any{"kind": "Pod", "metadata": meta}
}

func (a *fakeAPI) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.server.Certificate().Raw})
}

// writeKubeconfig writes a kubeconfig for the fake API with token.
func (a *fakeAPI) writeKubeconfig(t *testing.T, token string) string {
	t.Helper()
	data, err := json.Marshal(newKubeconfig(a.server.URL, a.caPEM(), token))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeServiceAccount writes a token and CA bundle as Kubernetes mounts
// them into a pod, and returns the folder.
func (a *fakeAPI) writeServiceAccount(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), a.caPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestKubeconfigClientReadsPod(t *testing.T) {
	api := startFakeAPI(t)
	api.addPod("shop", "web", "uid-1", map[string]string{"app": "web"}, false)
	client, err := loadKubeconfig(api.writeKubeconfig(t, testToken))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := client.getPod(t.Context(), "shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	if pod.Metadata.UID != "uid-1" || pod.Metadata.Labels["app"] != "web" {
		t.Errorf("pod = %+v, want UID uid-1 and label app=web", pod.Metadata)
	}
	if _, err := client.getPod(t.Context(), "shop", "gone"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing pod error = %v, want not found", err)
	}
}

func TestKubeconfigClientRejectedToken(t *testing.T) {
	api := startFakeAPI(t)
	client, err := loadKubeconfig(api.writeKubeconfig(t, "expired"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.getNamespace(t.Context(), "shop")
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("error = %v, want the 401 status", err)
	}
}
