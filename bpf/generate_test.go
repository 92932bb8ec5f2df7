package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedObjectsUpToDate regenerates the bpf2go output from the
// go:generate line in gen.go and compares it with the committed files.
// Other clang versions emit different bytes, so it runs only with clang 14.
// It skips when clang is absent even under MAZU_REQUIRE_PRIVILEGED, since
// that is a toolchain matter, not a privilege one.
func TestGeneratedObjectsUpToDate(t *testing.T) {
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed; regeneration needs Debian 12's clang 14 and llvm", tool)
		}
	}
	ver, err := exec.Command("clang", "--version").Output()
	if err != nil {
		t.Fatalf("clang --version: %v", err)
	}
	if !bytes.Contains(ver, []byte("clang version 14.")) {
		t.Skipf("clang is not version 14 (%s); the committed objects come from clang 14", bytes.SplitN(ver, []byte("\n"), 2)[0])
	}

	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go run "); ok {
			args = splitQuoted(t, rest)
		}
	}
	if len(args) < 3 {
		t.Fatalf("gen.go has no go:generate line running bpf2go")
	}

	out := t.TempDir()
	// Flags go before the identifier and source file.
	cmdArgs := append([]string{"run", args[0], "-output-dir", out, "-go-package", "bpf"}, args[1:]...)
	cmd := exec.Command("go", cmdArgs...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=bpf")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(cmdArgs, " "), err, b)
	}

	for _, name := range []string{"capture_bpfel.go", "capture_bpfel.o"} {
		want, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("regenerated %s (%d bytes) differs from the committed one (%d bytes): run go generate ./bpf and commit", name, len(got), len(want))
		}
	}
}

// splitQuoted splits a go:generate line into words, honouring double
// quotes as go generate does.
func splitQuoted(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case r == ' ' && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inQuote {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
