package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentServiceAccountFromEnv checks that serve reads
// MAZU_AGENT_SERVICE_ACCOUNT, which the chart sets, and rejects a value
// that is not namespace/name before it starts anything.
func TestAgentServiceAccountFromEnv(t *testing.T) {
	for _, value := range []string{"mazu-ztunnel", "/mazu-ztunnel", "istio-system/", "istio-system/mazu/ztunnel"} {
		t.Run(value, func(t *testing.T) {
			t.Setenv("MAZU_AGENT_SERVICE_ACCOUNT", value)
			var out, errOut bytes.Buffer
			err := run(context.Background(), []string{"serve", "-db", "", "-key", "", "-crs", ""}, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), "invalid -agent-service-account") || !strings.Contains(err.Error(), value) {
				t.Errorf("serve with MAZU_AGENT_SERVICE_ACCOUNT=%q = %v, want an error naming the invalid value", value, err)
			}
		})
	}

	t.Run("valid", func(t *testing.T) {
		// A valid name passes the check, so serve stops at the next one.
		t.Setenv("MAZU_AGENT_SERVICE_ACCOUNT", "istio-system/mazu-ztunnel")
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"serve", "-db", "", "-key", "", "-crs", ""}, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), "serve needs") {
			t.Errorf("serve with a valid MAZU_AGENT_SERVICE_ACCOUNT = %v, want the missing-flags error", err)
		}
		if strings.Contains(errOut.String(), "no -agent-service-account") {
			t.Errorf("serve warned about a missing agent service account although MAZU_AGENT_SERVICE_ACCOUNT is set:\n%s", errOut.String())
		}
	})

	t.Run("unset", func(t *testing.T) {
		t.Setenv("MAZU_AGENT_SERVICE_ACCOUNT", "")
		var out, errOut bytes.Buffer
		_ = run(context.Background(), []string{"serve", "-db", "", "-key", "", "-crs", ""}, &out, &errOut)
		if !strings.Contains(errOut.String(), "no -agent-service-account") {
			t.Errorf("serve without an agent service account logged no warning:\n%s", errOut.String())
		}
	})
}

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
