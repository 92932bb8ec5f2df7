package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// runServeKey prints the curator's log verifier key, generating the key
// pair first when it belongs in $MAZU_DATA_DIR and is not there yet, as
// serve does on first start. Operators put the key on the "log" line of
// the witness policy.
func runServeKey(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := envOr("MAZU_DATA_DIR", "")
	keyPath := fs.String("key", dataPath(dataDir, "log.key"), "the log's note signing key (default $MAZU_DATA_DIR/log.key)")
	origin := fs.String("origin", envOr("MAZU_LOG_ORIGIN", ""), "log origin for a new key (env MAZU_LOG_ORIGIN)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyPath == "" {
		return errors.New("serve key needs -key or MAZU_DATA_DIR")
	}
	vkeyPath := strings.TrimSuffix(*keyPath, ".key") + ".vkey"
	if err := ensureLogKey(*keyPath, vkeyPath, *origin, dataDir, io.Discard); err != nil {
		return err
	}
	vkey, err := readTrimmed(vkeyPath)
	if err != nil {
		return fmt.Errorf("read the log's verifier key: %w", err)
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}

// runWitnessKey prints a witness's cosignature verifier key, generating the
// key first when it belongs in $MAZU_DATA_DIR and is not there yet, as the
// witness does on first start. Operators put the key on the witness's line
// of the witness policy.
func runWitnessKey(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("witness key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := envOr("MAZU_DATA_DIR", "")
	keyPath := fs.String("key", dataPath(dataDir, "witness.key"), "witness key (default $MAZU_DATA_DIR/witness.key)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyPath == "" {
		return errors.New("witness key needs -key or MAZU_DATA_DIR")
	}
	if err := ensureWitnessKey(*keyPath, dataDir); err != nil {
		return err
	}
	signer, err := loadWitnessKey(*keyPath)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, signer.VerifierKey())
	return nil
}
