package kubetest

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestCommandsFromEnvironment starts the curator and three witnesses the
// way the Helm chart does: configuration from environment variables, keys
// generated in MAZU_DATA_DIR on first start, a pinned JWKS in MAZU_JWKS_FILE,
// the agents' service account in MAZU_AGENT_SERVICE_ACCOUNT, and the
// witnesses named in a C2SP tlog-policy file. One witness instead fetches
// the JWKS once through -kubeconfig into a missing MAZU_JWKS_FILE.
func TestCommandsFromEnvironment(t *testing.T) {
	tb := getTestbed(t)
	f := setupFiles(t)
	bin := curatorBinary(t)
	node := testbed.NewNode(t, tb, "cur-env")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "curator-test", Name: "env", ServiceAccount: "workload"})

	curDir := t.TempDir()
	// The operator creates the log key; the witnesses need its vkey.
	if out, err := exec.Command(bin, "keygen", "-kind", "log", "-name", curatortest.Origin, "-out", filepath.Join(curDir, "log")).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	curatorAddr := freeAddr(t)
	policy := "log " + mustRead(t, filepath.Join(curDir, "log.vkey")) + "\n"
	var members []string
	issuerKeys := issuerJWKS(t, tb)
	for i := range 3 {
		dir := t.TempDir()
		jwks := filepath.Join(dir, "jwks.json")
		args := []string{"witness", "-audience", curator.DefaultAudience}
		if i == 0 {
			args = append(args, "-kubeconfig", tb.Kubeconfig())
		} else if err := os.WriteFile(jwks, issuerKeys, 0o644); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("witness-%d.env.test", i)
		w := startProcEnv(t, []string{"MAZU_DATA_DIR=" + dir, "MAZU_WITNESS_NAME=" + name, "MAZU_LOG_ORIGIN=" + curatortest.Origin,
			"MAZU_CURATOR_URL=http://" + curatorAddr, "MAZU_HTTP_ADDRESS=127.0.0.1:0", "MAZU_JWKS_FILE=" + jwks,
			"MAZU_LOG_KEY_FILE=" + filepath.Join(curDir, "log.vkey"), "MAZU_CRS_FILE=" + f.crs},
			args...)
		if b, _ := os.ReadFile(jwks); len(b) == 0 {
			t.Errorf("witness %d did not keep the fetched JWKS in %s", i, jwks)
		}
		policy += fmt.Sprintf("witness w%d %s %s\n", i, mustRead(t, filepath.Join(dir, "witness.vkey")), w.url())
		members = append(members, fmt.Sprintf("w%d", i))
	}
	policy += "group all 3 " + strings.Join(members, " ") + "\nquorum all\n"
	policyFile := filepath.Join(curDir, "policy")
	if err := os.WriteFile(policyFile, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := agentPod(t, tb, node)
	p := startProcEnv(t, []string{"MAZU_DATA_DIR=" + curDir, "MAZU_LOG_ORIGIN=" + curatortest.Origin, "MAZU_HTTP_ADDRESS=" + curatorAddr,
		"MAZU_WITNESS_POLICY_FILE=" + policyFile, "MAZU_CRS_FILE=" + f.crs, "MAZU_BATCH_INTERVAL=5ms",
		"MAZU_AGENT_SERVICE_ACCOUNT=" + agent.Namespace + "/" + agent.ServiceAccount},
		"serve", "-kubeconfig", tb.Kubeconfig(), "-audience", curator.DefaultAudience)

	resp, err := http.Get(p.url() + "/healthz/ready")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz/ready = %v, %v", resp, err)
	}
	resp.Body.Close()
	pf, err := curator.ParsePolicyFile(policy)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := pf.Policy(curatortest.Origin)
	if err != nil {
		t.Fatal(err)
	}
	// A pod of another service account on the same node is not the agent,
	// although its token names the node.
	impostor := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: agent.Namespace, Name: "impostor", ServiceAccount: "not-the-agent"})
	rejected := &registrar{tb: tb, pod: pod, agent: impostor, files: f, acked: map[curator.ID]uint64{}}
	_, err = rejected.register(t.Context(), p.url())
	var he *curator.HTTPError
	if !errors.As(err, &he) || he.Code != http.StatusForbidden || !strings.Contains(he.Body, "want the agent service account "+agent.Namespace+"/"+agent.ServiceAccount) {
		t.Errorf("register with a token of service account %s/%s as the agent's = %v, want HTTP 403 naming the agent service account", impostor.Namespace, impostor.ServiceAccount, err)
	}

	r := &registrar{tb: tb, pod: pod, agent: agent, files: f, acked: map[curator.ID]uint64{}}
	kr, err := r.register(t.Context(), p.url())
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	reg, err := curator.VerifyBundle(kr.Bundle, pol, kr.ID, time.Now())
	if err != nil || reg.Checkpoint.Signed != 3 {
		t.Fatalf("VerifyBundle under the policy file = %+v, %v; want 3 cosignatures", reg, err)
	}
}
