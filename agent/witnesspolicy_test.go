package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// TestLoadWitnessPolicy reads the chart's policy file form into the
// agent's log key, witness keys and quorum, and rejects an empty policy
// with advice and a malformed one with the parser's reason.
func TestLoadWitnessPolicy(t *testing.T) {
	_, logVKey, err := note.GenerateKey(rand.Reader, "mazu.test/log")
	if err != nil {
		t.Fatal(err)
	}
	var witnessVKeys []string
	text := "log " + logVKey + "\n"
	for i := range 3 {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		vkey := curator.NewCosignatureSigner(fmt.Sprintf("w%d.mazu.test", i), k).VerifierKey()
		witnessVKeys = append(witnessVKeys, vkey)
		text += fmt.Sprintf("witness w%d %s https://w%d.mazu.test\n", i, vkey, i)
	}
	text += "group all-of 2 w0 w1 w2\nquorum all-of\n"
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	var cfg NodeConfig
	if err := cfg.LoadWitnessPolicy(write("policy", text)); err != nil {
		t.Fatalf("load a valid policy: %v", err)
	}
	if cfg.LogKey != logVKey {
		t.Errorf("LogKey = %q, want %q", cfg.LogKey, logVKey)
	}
	if strings.Join(cfg.WitnessKeys, ",") != strings.Join(witnessVKeys, ",") {
		t.Errorf("WitnessKeys = %q, want %q", cfg.WitnessKeys, witnessVKeys)
	}
	if cfg.Quorum != 2 {
		t.Errorf("Quorum = %d, want 2", cfg.Quorum)
	}
	if _, err := curator.NewPolicy("mazu.test/log", cfg.LogKey, cfg.WitnessKeys, cfg.Quorum); err != nil {
		t.Errorf("the loaded keys do not make a policy: %v", err)
	}

	err = cfg.LoadWitnessPolicy(write("empty", "\n  \n"))
	if err == nil || !strings.Contains(err.Error(), "curator.witnessPolicy") {
		t.Errorf("load an empty policy = %v, want an error naming curator.witnessPolicy", err)
	}
	err = cfg.LoadWitnessPolicy(write("bad", "witness w0 not-a-key\n"))
	if err == nil || !strings.Contains(err.Error(), "bad") {
		t.Errorf("load a malformed policy = %v, want an error naming the file", err)
	}
	if err := cfg.LoadWitnessPolicy(filepath.Join(dir, "missing")); err == nil {
		t.Error("load a missing policy file succeeded")
	}
}
