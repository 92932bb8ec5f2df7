package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadJWKSWithoutFetch checks that a witness without a usable JWKS file
// and without -kubeconfig stops with an error that explains how to get the
// key set, instead of fetching it from the cluster it runs in.
func TestLoadJWKSWithoutFetch(t *testing.T) {
	// Clear the in-cluster variables, so that a fallback to the in-cluster
	// configuration could not reach any server.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.json")
	if err := os.WriteFile(empty, []byte(" \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pinned := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(pinned, []byte(`{"keys":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path, want string
	}{
		{"empty file", empty, "JWKS file " + empty + " is empty"},
		{"missing file", filepath.Join(dir, "missing.json"), "not found"},
		{"no file", "", "no issuer JWKS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadJWKS(context.Background(), tc.path, "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loadJWKS(%q) = %v, want an error containing %q", tc.path, err, tc.want)
			}
			if !strings.Contains(err.Error(), "kubectl get --raw /openid/v1/jwks") {
				t.Errorf("loadJWKS(%q) error %q does not say how to get the key set", tc.path, err)
			}
		})
	}

	t.Run("pinned file", func(t *testing.T) {
		b, err := loadJWKS(context.Background(), pinned, "")
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != `{"keys":[]}` {
			t.Errorf("loadJWKS returned %q, want the file's content", b)
		}
	})
}
