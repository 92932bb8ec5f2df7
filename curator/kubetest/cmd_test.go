package kubetest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestCommandsWithWitnesses runs mazu-curator serve with three mazu-curator
// witness processes (quorum 3), registers through it, kills and restarts
// the curator, and audits the result with mazu-curator audit.
func TestCommandsWithWitnesses(t *testing.T) {
	tb := getTestbed(t)
	f := setupFiles(t)
	bin := curatorBinary(t)
	dir := t.TempDir()
	node := testbed.NewNode(t, tb, "cur-cmd")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "curator-test", Name: "cmd", ServiceAccount: "workload"})

	curatorAddr := freeAddr(t)
	var witnessFlags, witnessKeys []string
	for i := range 3 {
		prefix := filepath.Join(dir, fmt.Sprintf("w%d", i))
		out, err := exec.Command(bin, "keygen", "-kind", "witness", "-name", fmt.Sprintf("witness-%d.test", i), "-out", prefix).CombinedOutput()
		if err != nil {
			t.Fatalf("keygen: %v\n%s", err, out)
		}
		vkey := strings.TrimSpace(string(out))
		w := startProc(t, "witness", "-listen", "127.0.0.1:0", "-db", prefix+".db", "-key", prefix+".key",
			"-log-key", f.vkey, "-crs", f.crs, "-curator", "http://"+curatorAddr, "-kubeconfig", tb.Kubeconfig(),
			"-evidence", prefix+"-evidence")
		witnessFlags = append(witnessFlags, "-witness", w.url()+"="+vkey)
		witnessKeys = append(witnessKeys, vkey)
	}
	args := append([]string{"serve", "-listen", curatorAddr, "-db", filepath.Join(dir, "curator.db"), "-key", f.key,
		"-crs", f.crs, "-kubeconfig", tb.Kubeconfig()}, witnessFlags...)
	p := startProc(t, args...)
	policy, err := curator.NewPolicy(curatortest.Origin, mustRead(t, f.vkey), witnessKeys, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := &registrar{tb: tb, pod: pod, agent: agentPod(t, tb, node), files: f, acked: map[curator.ID]uint64{}}
	check := func(url string) {
		t.Helper()
		resp, err := r.register(t.Context(), url)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		reg, err := curator.VerifyBundle(resp.Bundle, policy, resp.ID, time.Now())
		if err != nil {
			t.Fatalf("VerifyBundle = %v", err)
		}
		if reg.Checkpoint.Signed != 3 {
			t.Fatalf("checkpoint has %d cosignatures, want 3", reg.Checkpoint.Signed)
		}
	}
	for range 3 {
		check(p.url())
	}
	p.kill()
	p = startProc(t, args...)
	check(p.url())

	auditArgs := []string{"audit", "-url", p.url(), "-log-key", f.vkey, "-crs", f.crs}
	for _, k := range witnessKeys {
		auditArgs = append(auditArgs, "-witness-key", k)
	}
	out, err := exec.Command(bin, auditArgs...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "\nOK\n") || !strings.Contains(string(out), "IDs 4") {
		t.Fatalf("mazu-curator audit = %v\n%s", err, out)
	}
	t.Logf("audit output:\n%s", out)
}
