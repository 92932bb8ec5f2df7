package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

const witnessKeyPrefix = "PRIVATE+COSIGNATURE+"

func runKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("kind", "log", "key kind: log (the curator's checkpoint key, named after the origin) or witness")
	name := fs.String("name", "", "key name: the log origin, or the witness name")
	out := fs.String("out", "", "output prefix: writes PREFIX.key (secret, mode 0600) and PREFIX.vkey")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || *out == "" {
		return errors.New("keygen needs -name and -out")
	}
	var skey, vkey string
	switch *kind {
	case "log":
		var err error
		if skey, vkey, err = note.GenerateKey(rand.Reader, *name); err != nil {
			return fmt.Errorf("generate log key: %w", err)
		}
	case "witness":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		skey = witnessKeyPrefix + *name + "+" + base64.StdEncoding.EncodeToString(k.Seed())
		vkey = curator.NewCosignatureSigner(*name, k).VerifierKey()
	default:
		return fmt.Errorf("invalid -kind %q: want log or witness", *kind)
	}
	if err := os.WriteFile(*out+".key", []byte(skey+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(*out+".vkey", []byte(vkey+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func loadWitnessKey(path string) (*curator.CosignatureSigner, error) {
	s, err := readTrimmed(path)
	if err != nil {
		return nil, fmt.Errorf("read witness key: %w", err)
	}
	rest, ok := strings.CutPrefix(s, witnessKeyPrefix)
	name, seed64, ok2 := strings.Cut(rest, "+")
	seed, err := base64.StdEncoding.DecodeString(seed64)
	if !ok || !ok2 || err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("invalid witness key in %s: want the output of keygen -kind witness", path)
	}
	return curator.NewCosignatureSigner(name, ed25519.NewKeyFromSeed(seed)), nil
}

func runCRS(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("crs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 64, "RBE block size")
	out := fs.String("out", "", "output file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("crs needs -out")
	}
	// NOTE: one local contribution makes a CRS for development and tests
	// only; production CRSs come from a multi-party ceremony.
	start, err := rbe.NewCeremony(*n)
	if err != nil {
		return err
	}
	crs, _, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		return err
	}
	b, err := crs.MarshalBinary()
	if err != nil {
		return err
	}
	fp := crs.Fingerprint()
	fmt.Fprintf(stdout, "CRS n=%d fingerprint %x\n", *n, fp)
	return os.WriteFile(*out, b, 0o644)
}

// loadSchemeOrFollow loads the CRS file, or, when path is empty or the file
// does not exist and follow is set, returns a scheme that takes its CRS from
// the log's ceremony entries.
func loadSchemeOrFollow(path string, follow bool) (curator.Scheme, error) {
	if follow {
		if _, err := os.Stat(path); path == "" || errors.Is(err, os.ErrNotExist) {
			return rbescheme.NewFollower(), nil
		}
	}
	return loadScheme(path)
}

func loadScheme(path string) (curator.Scheme, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CRS: %w", err)
	}
	crs, err := rbe.ParseCRS(bytes.Clone(b))
	if err != nil {
		return nil, fmt.Errorf("parse CRS %s: %w", path, err)
	}
	if err := crs.Validate(); err != nil {
		return nil, fmt.Errorf("validate CRS %s: %w", path, err)
	}
	crs.Precompute()
	return rbescheme.New(crs), nil
}
