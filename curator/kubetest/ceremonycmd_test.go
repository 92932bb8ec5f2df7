package kubetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestCeremonyCommands runs the ceremony as an operator does, with the
// mazu-curator ceremony subcommands against a curator and three witnesses
// that have no CRS file. It makes two contributions, checks status,
// verifies against a matching and a different CRS file, and contributes
// once more after the first registration.
func TestCeremonyCommands(t *testing.T) {
	tb := getTestbed(t)
	bin := curatorBinary(t)
	dir := t.TempDir()
	node := testbed.NewNode(t, tb, "cur-cmd")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "curator-test", Name: "cmd", ServiceAccount: "workload"})
	agent := agentPod(t, tb, node)
	url, vkeyFile, witnessKeys := startCeremonyCurator(t, dir, tb.Kubeconfig(), 2)

	tokenFile := filepath.Join(dir, "token")
	writeToken := func() {
		tok, err := tb.RequestToken(t.Context(), agent, curator.DefaultAudience, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ceremony := func(sub string, extra ...string) (string, error) {
		args := []string{"ceremony", sub, "-url", url, "-log-key", vkeyFile}
		for _, k := range witnessKeys {
			args = append(args, "-witness-key", k)
		}
		out, err := exec.Command(bin, append(args, extra...)...).CombinedOutput()
		return string(out), err
	}
	// The witnesses may cosign a contribution's checkpoint a moment after
	// the curator replies, so wait until status shows it.
	waitStatus := func(want string) string {
		t.Helper()
		var out string
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if out, err = ceremony("status"); err == nil && strings.Contains(out, want) {
				return out
			}
		}
		t.Fatalf("ceremony status = %v, want %q in\n%s", err, want, out)
		return ""
	}
	fingerprintRE := regexp.MustCompile(`(?m)^fingerprint ([0-9a-f]{64})$`)

	if out, err := ceremony("status"); err != nil || !strings.Contains(out, "contributions 0\n") {
		t.Fatalf("ceremony status before any contribution = %v\n%s", err, out)
	}
	writeToken()
	if out, err := ceremony("contribute", "-token-file", tokenFile); err == nil || !strings.Contains(out, "set its block size with -n") {
		t.Fatalf("first contribute without -n = %v, want an error asking for -n\n%s", err, out)
	}
	out, err := ceremony("contribute", "-token-file", tokenFile, "-n", "16")
	if err != nil {
		t.Fatalf("first contribute: %v\n%s", err, out)
	}
	first := fingerprintRE.FindStringSubmatch(out)
	if first == nil {
		t.Fatalf("first contribute printed no fingerprint:\n%s", out)
	}
	waitStatus("contributions 1\n")

	writeToken()
	if out, err = ceremony("contribute", "-token-file", tokenFile); err != nil {
		t.Fatalf("second contribute: %v\n%s", err, out)
	}
	second := fingerprintRE.FindStringSubmatch(out)
	if second == nil || second[1] == first[1] {
		t.Fatalf("second contribute fingerprint = %v, want a new one after %s:\n%s", second, first[1], out)
	}

	status := waitStatus("contributions 2\n")
	for _, want := range []string{"fingerprint " + second[1] + "\n", "block size 16\n", "closed false"} {
		if !strings.Contains(status, want) {
			t.Errorf("ceremony status lacks %q:\n%s", want, status)
		}
	}

	pinned := filepath.Join(dir, "pinned-crs.bin")
	if out, err = ceremony("verify", "-out", pinned); err != nil {
		t.Fatalf("ceremony verify -out: %v\n%s", err, out)
	}
	b, err := os.ReadFile(pinned)
	if err != nil {
		t.Fatal(err)
	}
	crs, err := rbe.ParseCRS(b)
	if err != nil {
		t.Fatalf("parse the CRS that verify -out wrote: %v", err)
	}
	if got := fmt.Sprintf("%x", crs.Fingerprint()); got != second[1] {
		t.Fatalf("verify -out wrote CRS %s, want the second contribution's %s", got, second[1])
	}
	if out, err = ceremony("verify", "-crs", pinned); err != nil || !strings.Contains(out, "matches the ceremony's CRS") {
		t.Fatalf("ceremony verify -crs with the log's CRS = %v\n%s", err, out)
	}

	other := filepath.Join(dir, "other-crs.bin")
	if out, err := exec.Command(bin, "crs", "-n", "16", "-out", other).CombinedOutput(); err != nil {
		t.Fatalf("mazu-curator crs: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	otherCRS, err := rbe.ParseCRS(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err = ceremony("verify", "-crs", other)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("ceremony verify -crs with another CRS = %v, want a non-zero exit\n%s", err, out)
	}
	if !strings.Contains(out, fmt.Sprintf("%x", otherCRS.Fingerprint())) || !strings.Contains(out, second[1]) {
		t.Errorf("ceremony verify -crs mismatch does not name both fingerprints:\n%s", out)
	}

	r := &registrar{tb: tb, pod: pod, agent: agent, files: files{crsObj: crs}, acked: map[curator.ID]uint64{}}
	if _, err := r.register(t.Context(), url); err != nil {
		t.Fatalf("register after the ceremony: %v", err)
	}
	writeToken()
	out, err = ceremony("contribute", "-token-file", tokenFile)
	if err == nil || !strings.Contains(out, "the ceremony is closed") {
		t.Fatalf("contribute after the first registration = %v, want an error saying the ceremony is closed\n%s", err, out)
	}
	t.Logf("contribute after the first registration:\n%s", out)
	t.Logf("final status:\n%s", waitStatus("closed true"))

	// The same status, with the keys from a C2SP tlog-policy file.
	policy := "log " + mustRead(t, vkeyFile) + "\n"
	for i, k := range witnessKeys {
		policy += fmt.Sprintf("witness w%d %s\n", i, k)
	}
	policy += "group all 3 w0 w1 w2\nquorum all\n"
	policyFile := filepath.Join(dir, "policy.txt")
	if err := os.WriteFile(policyFile, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	policyOut, err := exec.Command(bin, "ceremony", "status", "-url", url, "-policy", policyFile).CombinedOutput()
	if err != nil || !strings.Contains(string(policyOut), "fingerprint "+second[1]+"\n") || !strings.Contains(string(policyOut), "closed true") {
		t.Fatalf("ceremony status -policy = %v, want the final CRS, closed\n%s", err, policyOut)
	}
}

// startCeremonyCurator starts three witnesses and a curator without a CRS
// file that opens registrations after minContributions ceremony
// contributions. It returns the curator's URL, its verifier key file and
// the witnesses' verifier keys.
func startCeremonyCurator(t *testing.T, dir, kubeconfig string, minContributions int) (string, string, []string) {
	t.Helper()
	bin := curatorBinary(t)
	if out, err := exec.Command(bin, "keygen", "-kind", "log", "-name", curatortest.Origin, "-out", filepath.Join(dir, "log")).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	vkeyFile := filepath.Join(dir, "log.vkey")
	curatorAddr := freeAddr(t)
	var witnessFlags, witnessKeys []string
	for i := range 3 {
		prefix := filepath.Join(dir, fmt.Sprintf("w%d", i))
		out, err := exec.Command(bin, "keygen", "-kind", "witness", "-name", fmt.Sprintf("witness-%d.cmd.test", i), "-out", prefix).CombinedOutput()
		if err != nil {
			t.Fatalf("keygen: %v\n%s", err, out)
		}
		w := startProc(t, "witness", "-listen", "127.0.0.1:0", "-db", prefix+".db", "-key", prefix+".key",
			"-log-key", vkeyFile, "-curator", "http://"+curatorAddr, "-kubeconfig", kubeconfig)
		vkey := strings.TrimSpace(string(out))
		witnessFlags = append(witnessFlags, "-witness", w.url()+"="+vkey)
		witnessKeys = append(witnessKeys, vkey)
	}
	args := append([]string{"serve", "-listen", curatorAddr, "-db", filepath.Join(dir, "curator.db"), "-key", filepath.Join(dir, "log.key"),
		"-ceremony", "-ceremony-min-contributions", fmt.Sprint(minContributions), "-kubeconfig", kubeconfig}, witnessFlags...)
	return startProc(t, args...).url(), vkeyFile, witnessKeys
}
