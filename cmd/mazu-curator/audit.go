package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
)

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "curator base URL")
	logKeyPath := fs.String("log-key", "", "the curator's verifier key file (.vkey)")
	crsPath := fs.String("crs", "", "RBE CRS file; empty takes the CRS from the log's ceremony entries")
	var witnessKeys, others multiFlag
	fs.Var(&witnessKeys, "witness-key", "witness verifier key (repeat); none accepts log-signed checkpoints")
	fs.Var(&others, "checkpoint", "another signed checkpoint file to check for a fork (repeat)")
	quorum := fs.Int("quorum", 0, "cosignatures required; 0 means ⌊2n/3⌋+1")
	if err := fs.Parse(args); err != nil {
		return err
	}

	if *url == "" || *logKeyPath == "" {
		return errors.New("audit needs -url and -log-key")
	}

	vkey, err := readTrimmed(*logKeyPath)
	if err != nil {
		return fmt.Errorf("read -log-key: %w", err)
	}

	name, _, _ := cutName(vkey)
	policy, err := curator.NewPolicy(name, vkey, witnessKeys, *quorum)
	if err != nil {
		return err
	}

	scheme, err := loadSchemeOrFollow(*crsPath, true)
	if err != nil {
		return err
	}

	var notes [][]byte
	for _, p := range others {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		notes = append(notes, b)
	}

	r, err := audit.Audit(ctx, audit.Config{Client: &curator.Client{URL: *url}, Policy: policy, Scheme: scheme, Others: notes})
	if err != nil {
		return err
	}

	printReport(stdout, r)
	if !r.OK() {
		return fmt.Errorf("audit found %d violations and %d forks", len(r.Violations), len(r.Forks))
	}

	return nil
}

func cutName(vkey string) (string, string, bool) {
	for i := range vkey {
		if vkey[i] == '+' {
			return vkey[:i], vkey[i+1:], true
		}
	}

	return vkey, "", false
}

func printReport(w io.Writer, r *audit.Report) {
	fmt.Fprintf(w, "tree size %d root %v\n", r.Tree.N, r.Tree.Hash)
	kinds := make([]int, 0, len(r.Entries))
	for k := range r.Entries {
		kinds = append(kinds, int(k))
	}

	sort.Ints(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-12v %d\n", curator.Kind(k), r.Entries[curator.Kind(k)])
	}

	fmt.Fprintf(w, "IDs %d\n", r.IDs)
	for _, v := range r.Violations {
		printViolation(w, &v)
	}

	for _, f := range r.Forks {
		fmt.Fprintf(w, "FORK\n--- checkpoint\n%s--- inconsistent with\n%s--- consistency proof %v\n", f.Old, f.New, f.Proof)
	}

	if r.OK() {
		fmt.Fprintln(w, "OK")
	}
}

// printViolation prints a violation with evidence that another verifier
// can check without this tool. The evidence is the entry in base64, its
// RFC 6962 inclusion proof as one base64 hash per line, and the signed
// checkpoint note that the proof is against.
func printViolation(w io.Writer, v *audit.Violation) {
	fmt.Fprintf(w, "VIOLATION entry %d (%v, ID %v): %s\n", v.Index, v.Kind, v.ID, v.Err)
	fmt.Fprintf(w, "--- entry %d (base64)\n%s\n", v.Index, base64.StdEncoding.EncodeToString(v.Entry))
	fmt.Fprintf(w, "--- inclusion proof of entry %d under the checkpoint below (RFC 6962, base64 hashes)\n", v.Index)
	for _, h := range v.Inclusion {
		fmt.Fprintln(w, base64.StdEncoding.EncodeToString(h[:]))
	}
	fmt.Fprintf(w, "--- checkpoint\n%s", v.Checkpoint)
	if !bytes.HasSuffix(v.Checkpoint, []byte("\n")) {
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "--- end of violation")
}
