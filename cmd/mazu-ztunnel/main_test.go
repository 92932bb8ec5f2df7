package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

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

	var cfg agent.NodeConfig
	if err := loadTrust(&cfg, "", logFile, []string{keys[0], w1File}); err != nil {
		t.Fatalf("load a log key file, a key string and a key file: %v", err)
	}
	if cfg.LogKey != logVKey {
		t.Errorf("LogKey = %q, want %q", cfg.LogKey, logVKey)
	}
	if strings.Join(cfg.WitnessKeys, " ") != strings.Join(keys, " ") {
		t.Errorf("WitnessKeys = %q, want %q", cfg.WitnessKeys, keys)
	}

	if err := loadTrust(&agent.NodeConfig{}, filepath.Join(dir, "policy"), logFile, nil); err == nil || !strings.Contains(err.Error(), "policy file alone") {
		t.Errorf("policy file with -log-key = %v, want a conflict error", err)
	}
	if err := loadTrust(&agent.NodeConfig{}, "", "", nil); err == nil || !strings.Contains(err.Error(), "MAZU_WITNESS_POLICY_FILE") {
		t.Errorf("no log key = %v, want advice naming MAZU_WITNESS_POLICY_FILE", err)
	}
	if err := loadTrust(&agent.NodeConfig{}, "", logFile, []string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("a witness key that is neither a key nor a file was accepted")
	}
}
