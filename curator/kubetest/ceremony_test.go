package kubetest

import (
	"bytes"
	"crypto/rand"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestCeremonyThroughTheLog starts a curator and three witnesses with no
// CRS file. Two contributions posted to /v1/ceremony become log entries;
// registrations open only after them, and the witnesses and the auditor
// take the CRS from the log.
func TestCeremonyThroughTheLog(t *testing.T) {
	tb := getTestbed(t)
	bin := curatorBinary(t)
	dir := t.TempDir()
	node := testbed.NewNode(t, tb, "cur-cer")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "curator-test", Name: "cer", ServiceAccount: "workload"})
	agent := agentPod(t, tb, node)
	url, vkeyFile, witnessKeys := startCeremonyCurator(t, dir, tb.Kubeconfig(), 2)

	agentToken := func() string {
		tok, err := tb.RequestToken(t.Context(), agent, curator.DefaultAudience, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	post := func(token string, body []byte) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/v1/ceremony", bytes.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}

	crs, err := rbe.NewCeremony(16)
	if err != nil {
		t.Fatal(err)
	}
	var encs [][]byte
	for range 2 {
		next, proof, err := rbe.Contribute(crs, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := rbescheme.EncodeContribution(rbe.Contribution{CRS: next, Proof: proof})
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, enc)
		crs = next
	}
	f := files{crsObj: crs}
	r := &registrar{tb: tb, pod: pod, agent: agent, files: f, acked: map[curator.ID]uint64{}}

	if code, body := post("", encs[0]); code != 403 {
		t.Errorf("contribution without a token = %d %s, want 403", code, body)
	}
	if code, body := post(agentToken(), encs[1]); code != 400 {
		t.Errorf("contribution that skips the first = %d %s, want 400", code, body)
	}
	if code, body := post(agentToken(), encs[0]); code != 200 {
		t.Fatalf("first contribution = %d %s", code, body)
	}
	if _, err := r.register(t.Context(), url); err == nil || !strings.Contains(err.Error(), "1 of 2 contributions") {
		t.Fatalf("register before the ceremony ends = %v, want a 503 naming the contributions", err)
	}
	if code, body := post(agentToken(), encs[1]); code != 200 {
		t.Fatalf("second contribution = %d %s", code, body)
	}
	policy, err := curator.NewPolicy(curatortest.Origin, mustRead(t, vkeyFile), witnessKeys, 0)
	if err != nil {
		t.Fatal(err)
	}
	client := &curator.Client{URL: url}
	// The witnesses cosign asynchronously, so the checkpoint may lag the
	// second contribution for a moment.
	var followed *audit.Ceremony
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if followed, err = audit.FollowCeremony(t.Context(), client, policy, time.Now()); err == nil && followed.Contributions == 2 {
			break
		}
	}
	if err != nil || followed.Contributions != 2 {
		t.Fatalf("FollowCeremony before any registration = %+v, %v; want 2 contributions", followed, err)
	}
	if followed.Fingerprint != crs.Fingerprint() || followed.Closed {
		t.Fatalf("FollowCeremony = fingerprint %x closed %v, want the second contribution's %x, still open", followed.Fingerprint[:8], followed.Closed, crs.Fingerprint())
	}
	kr, err := r.register(t.Context(), url)
	if err != nil {
		t.Fatalf("register after the ceremony: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if followed, err = audit.FollowCeremony(t.Context(), client, policy, time.Now()); err == nil && followed.Closed {
			break
		}
	}
	if err != nil || !followed.Closed || followed.Fingerprint != crs.Fingerprint() {
		t.Fatalf("FollowCeremony after the first registration = %+v, %v; want it closed with the same CRS", followed, err)
	}
	if reg, err := curator.VerifyBundle(kr.Bundle, policy, kr.ID, time.Now()); err != nil || reg.Checkpoint.Signed != 3 {
		t.Fatalf("VerifyBundle = %+v, %v; want 3 cosignatures from witnesses without a CRS file", reg, err)
	}
	auditArgs := []string{"audit", "-url", url, "-log-key", vkeyFile}
	for _, k := range witnessKeys {
		auditArgs = append(auditArgs, "-witness-key", k)
	}
	out, err := exec.Command(bin, auditArgs...).CombinedOutput()
	if err != nil || !regexp.MustCompile(`ceremony\s+2\n`).Match(out) || !strings.Contains(string(out), "\nOK\n") {
		t.Fatalf("mazu-curator audit = %v\n%s", err, out)
	}
}
