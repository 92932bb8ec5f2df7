package kubetest

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestCrashDuringRegistrations kills the curator with SIGKILL while
// registrations stream in, restarts it on the same file, and checks that
// every acknowledged registration survived and the log still verifies.
func TestCrashDuringRegistrations(t *testing.T) {
	tb := getTestbed(t)
	f := setupFiles(t)
	node := testbed.NewNode(t, tb, "cur-crash")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "curator-test", Name: "crash", ServiceAccount: "workload"})
	db := filepath.Join(t.TempDir(), "curator.db")
	args := []string{"serve", "-listen", "127.0.0.1:0", "-db", db, "-key", f.key, "-crs", f.crs, "-kubeconfig", tb.Kubeconfig()}
	p := startProc(t, args...)
	r := &registrar{tb: tb, pod: pod, agent: agentPod(t, tb, node), files: f, acked: map[curator.ID]uint64{}}

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var acks, failures atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	url := p.url()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := r.register(ctx, url); err != nil {
					failures.Add(1)
					continue
				}
				acks.Add(1)
			}
		}()
	}
	for acks.Load() < 40 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	p.kill()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failures.Load() == 0 {
		t.Log("no request failed at the kill; the crash may have fallen between batches")
	}
	t.Logf("%d acknowledged before the kill, %d failed", acks.Load(), failures.Load())

	p2 := startProc(t, args...)
	r.checkAcked(t, p2.url(), f)
	// The restarted curator keeps registering.
	if _, err := r.register(ctx, p2.url()); err != nil {
		t.Fatalf("register after restart: %v", err)
	}
	policy, err := curator.NewPolicy(curatortest.Origin, mustRead(t, f.vkey), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Audit(ctx, audit.Config{Client: &curator.Client{URL: p2.url()}, Policy: policy, Scheme: rbescheme.New(f.crsObj)})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.IDs < len(r.acked) {
		t.Fatalf("audit after restart: ok=%v, %d IDs, want at least %d: %+v", rep.OK(), rep.IDs, len(r.acked), rep.Violations)
	}
}
