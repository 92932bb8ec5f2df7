package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/mod/sumdb/note"
)

// ensureLogKey generates the log key on first start when it lives in the
// data folder and does not exist yet. Elsewhere a missing key is an error.
func ensureLogKey(keyPath, vkeyPath, origin, dataDir string, stdout io.Writer) error {
	if _, err := os.Stat(keyPath); err == nil || dataDir == "" || keyPath != dataPath(dataDir, "log.key") {
		return nil
	}
	if origin == "" {
		return errors.New("no log key in MAZU_DATA_DIR, and no MAZU_LOG_ORIGIN to name a new one")
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return fmt.Errorf("generate log key: %w", err)
	}
	if err := os.WriteFile(keyPath, []byte(skey+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(vkeyPath, []byte(vkey+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "generated log key %s\n", vkey)
	return nil
}
