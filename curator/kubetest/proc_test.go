package kubetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// curatorBinary builds cmd/mazu-curator once per test binary.
func curatorBinary(t *testing.T) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mazu-curator-bin-")
		if err != nil {
			buildErr = err
			return
		}
		testbed.AfterTests(func() { os.RemoveAll(dir) })
		binPath = filepath.Join(dir, "mazu-curator")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-curator").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// setupFiles writes a log key and an n = 16 CRS and returns their paths.
type files struct {
	key, vkey, crs string
	crsObj         *rbe.CRS
}

func setupFiles(t *testing.T) files {
	bin := curatorBinary(t)
	dir := t.TempDir()
	f := files{key: filepath.Join(dir, "log.key"), vkey: filepath.Join(dir, "log.vkey"), crs: filepath.Join(dir, "crs.bin")}
	for _, args := range [][]string{
		{"keygen", "-kind", "log", "-name", curatortest.Origin, "-out", filepath.Join(dir, "log")},
		{"crs", "-n", "16", "-out", f.crs},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("mazu-curator %v: %v\n%s", args, err, out)
		}
	}
	b, err := os.ReadFile(f.crs)
	if err != nil {
		t.Fatal(err)
	}
	if f.crsObj, err = rbe.ParseCRS(b); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f files) rbeKey(slot int) ([]byte, []byte, error) {
	sk, err := rbe.NewSecretKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	pk, err := f.crsObj.KeyGen(sk, slot)
	if err != nil {
		return nil, nil, err
	}
	b, err := pk.MarshalBinary()
	return b, nil, err
}

// A proc is a mazu-curator child process.
type proc struct {
	cmd  *exec.Cmd
	addr string
}

// startProc runs mazu-curator with args and waits for its listen line.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, nil, args...)
}

// startProcEnv is startProc with extra environment variables.
func startProcEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(curatorBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd}
	t.Cleanup(func() { p.kill() })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				lines <- a
			}
		}
	}()
	select {
	case p.addr = <-lines:
	case <-time.After(30 * time.Second):
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("mazu-curator did not start:\n%s", b)
	}
	return p
}

// kill sends SIGKILL to the process it started and reaps it.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

func (p *proc) url() string { return "http://" + p.addr }

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// registrar registers workloads of one pod through a curator client and
// records what was acknowledged.
type registrar struct {
	tb    *testbed.Testbed
	pod   *testbed.Pod
	agent *testbed.Pod // the node agent's pod, on pod's node
	files files

	mu    sync.Mutex
	acked map[curator.ID]uint64
}

func (r *registrar) register(ctx context.Context, url string) (*server.KeyResponse, error) {
	tok, err := r.tb.RequestToken(ctx, r.pod, curator.DefaultAudience, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	w := curatortest.NewWorkload(nil, tok, r.pod.IP)
	if r.agent != nil {
		if w.AgentToken, err = r.tb.RequestToken(ctx, r.agent, curator.DefaultAudience, 10*time.Minute); err != nil {
			return nil, err
		}
	}
	c := &curatortest.Cluster{Client: &curator.Client{URL: url}}
	resp, err := c.Register(ctx, w, r.files.rbeKey)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.acked[resp.ID] = resp.Index
	r.mu.Unlock()
	return resp, nil
}

// checkAcked verifies that every acknowledged registration is in the log
// at url at its index, and that the whole log passes an audit.
func (r *registrar) checkAcked(t *testing.T, url string, f files) {
	t.Helper()
	ctx := t.Context()
	policy, err := curator.NewPolicy(curatortest.Origin, mustRead(t, f.vkey), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cl := &curator.Client{URL: url}
	r.mu.Lock()
	ids := make([]curator.ID, 0, len(r.acked))
	for id := range r.acked {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	var resp *curator.UpdatesResponse
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err = cl.Updates(ctx, 0, ids)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("updates after restart: %v", err)
	}
	u, err := curator.VerifyUpdates(resp, policy, nil, ids, time.Now())
	if err != nil {
		t.Fatalf("VerifyUpdates after restart = %v", err)
	}
	for _, id := range ids {
		v := u.IDs[id]
		if v.Current == nil || v.Index != r.acked[id] {
			t.Errorf("acknowledged ID %v at index %d: after restart %+v", id, r.acked[id], v)
		}
	}
	t.Logf("%d acknowledged registrations present in a log of %d entries", len(ids), u.Checkpoint.Tree.N)
}

// agentPod adds a node agent's pod on node, in its own namespace.
func agentPod(t *testing.T, tb *testbed.Testbed, node *testbed.Node) *testbed.Pod {
	return testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "mazu-system", Name: "agent-" + node.Name, ServiceAccount: "mazu-agent"})
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
