package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// TestKeyCommands prints the log's and a witness's verifier keys from an
// empty data folder, which generates them, then again, which must print
// the same keys.
func TestKeyCommands(t *testing.T) {
	t.Setenv("MAZU_DATA_DIR", t.TempDir())
	t.Setenv("MAZU_LOG_ORIGIN", "mazu.test/log")
	t.Setenv("MAZU_WITNESS_NAME", "w0.mazu.test")
	key := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if err := run(context.Background(), args, &out, &errOut); err != nil {
			t.Fatalf("mazu-curator %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
		}
		return strings.TrimSpace(out.String())
	}

	logKey := key("serve", "key")
	v, err := note.NewVerifier(logKey)
	if err != nil {
		t.Fatalf("serve key printed %q, not a note verifier key: %v", logKey, err)
	}
	if v.Name() != "mazu.test/log" {
		t.Errorf("log key is named %q, want the origin mazu.test/log", v.Name())
	}
	if again := key("serve", "key"); again != logKey {
		t.Errorf("second serve key printed %q, want the first key %q", again, logKey)
	}

	witnessKey := key("witness", "key")
	w, err := curator.NewCosignatureVerifier(witnessKey)
	if err != nil {
		t.Fatalf("witness key printed %q, not a cosignature key: %v", witnessKey, err)
	}
	if w.Name() != "w0.mazu.test" {
		t.Errorf("witness key is named %q, want w0.mazu.test", w.Name())
	}
	if again := key("witness", "key"); again != witnessKey {
		t.Errorf("second witness key printed %q, want the first key %q", again, witnessKey)
	}
}
