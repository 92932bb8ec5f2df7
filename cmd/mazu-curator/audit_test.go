package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
)

// TestPrintViolationEvidence prints a violation in a log of five records
// and checks the printed evidence on its own: the checkpoint verifies under
// the log key, and the printed proof includes the printed entry in it.
func TestPrintViolationEvidence(t *testing.T) {
	var stored []tlog.Hash
	hashes := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("stored hash %d not found", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	var records [][]byte
	for i := range 5 {
		rec := []byte("record " + strconv.Itoa(i))
		hs, err := tlog.StoredHashes(int64(i), rec, hashes)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
		records = append(records, rec)
	}
	root, err := tlog.TreeHash(5, hashes)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := tlog.ProveRecord(5, 3, hashes)
	if err != nil {
		t.Fatal(err)
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, "log.test")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	cp, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint("log.test", tlog.Tree{N: 5, Hash: root}))}, signer)
	if err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	printReport(&out, &audit.Report{Tree: tlog.Tree{N: 5, Hash: root}, Violations: []audit.Violation{{
		Index: 3, Kind: curator.KindRegistration, Err: "entry 3: invalid", Entry: records[3], Inclusion: proof, Checkpoint: cp}}})

	t.Logf("report:\n%s", out.String())
	sections := map[string]string{}
	var name string
	for _, line := range strings.SplitAfter(out.String(), "\n") {
		if title, ok := strings.CutPrefix(line, "--- "); ok {
			name = strings.Fields(title)[0]
			continue
		}
		sections[name] += line
	}
	entry, err := base64.StdEncoding.DecodeString(strings.TrimSpace(sections["entry"]))
	if err != nil || !bytes.Equal(entry, records[3]) {
		t.Fatalf("printed entry = %q, %v; want record 3 in base64", sections["entry"], err)
	}
	var printed tlog.RecordProof
	for _, line := range strings.Fields(sections["inclusion"]) {
		h, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(h) != tlog.HashSize {
			t.Fatalf("printed proof line %q is not a base64 hash", line)
		}
		printed = append(printed, tlog.Hash(h))
	}
	verifier, _ := note.NewVerifier(vkey)
	n, err := note.Open([]byte(sections["checkpoint"]), note.VerifierList(verifier))
	if err != nil {
		t.Fatalf("printed checkpoint %q does not verify: %v", sections["checkpoint"], err)
	}
	_, tree, err := curator.ParseCheckpoint(n.Text)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckRecord(printed, tree.N, tree.Hash, 3, tlog.RecordHash(entry)); err != nil {
		t.Errorf("printed proof does not include the printed entry in the printed checkpoint: %v", err)
	}
}
