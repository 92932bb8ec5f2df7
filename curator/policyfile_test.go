package curator

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
)

func TestParsePolicyFile(t *testing.T) {
	_, vkey, _ := GenerateLogKey("kc.test/log")
	var lines []string
	for i := range 4 {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		lines = append(lines, fmt.Sprintf("witness w%d %s http://127.0.0.1:%d", i, NewCosignatureSigner(fmt.Sprintf("w%d", i), k).VerifierKey(), 9000+i))
	}
	text := "# test policy\nlog " + vkey + "\n" + strings.Join(lines, "\n") + "\ngroup all-w 3 w0 w1 w2 w3\nquorum all-w\n"
	pf, err := ParsePolicyFile(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(pf.Witnesses) != 4 || pf.Quorum != 3 || pf.Witnesses[2].URL != "http://127.0.0.1:9002" {
		t.Fatalf("ParsePolicyFile = %+v, want 4 witnesses with URLs and quorum 3", pf)
	}
	p, err := pf.Policy("kc.test/log")
	if err != nil || p.quorum() != 3 {
		t.Fatalf("Policy = %v, %v", p, err)
	}
	for _, bad := range []string{
		"witness w0 nokey",
		"log " + vkey + "\ngroup g 5 w0\nquorum g",
		"log " + vkey + "\ngroup g 1 other\nquorum g",
		"log " + vkey + "\nquorum missing",
		"frobnicate",
	} {
		if _, err := ParsePolicyFile(bad); err == nil {
			t.Errorf("ParsePolicyFile(%q) succeeded", bad)
		}
	}
}

func FuzzParsePolicyFile(f *testing.F) {
	f.Add("log a+b+c\nwitness w k\ngroup g any w\nquorum g\n")
	f.Fuzz(func(t *testing.T, s string) {
		ParsePolicyFile(s)
	})
}
