package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

func raftStatus(url string) (map[string]string, error) {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url + "/raft/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st map[string]string
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// TestRaftLeaderKilled runs three replicas, kills the leader with SIGKILL
// in the middle of a stream of registrations, and checks that a new leader
// serves within seconds and that no acknowledged registration is lost.
func TestRaftLeaderKilled(t *testing.T) {
	tb := getTestbed(t)
	f := setupFiles(t)
	node := testbed.NewNode(t, tb, "cur-raft")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "curator-test", Name: "raft", ServiceAccount: "workload"})

	type replica struct{ id, raftAddr, api string }
	var reps []replica
	var peers []string
	for i := range 3 {
		r := replica{id: fmt.Sprintf("r%d", i+1), raftAddr: freeAddr(t), api: freeAddr(t)}
		reps = append(reps, r)
		peers = append(peers, r.id+"="+r.raftAddr+"=http://"+r.api)
	}
	procs := map[string]*proc{}
	for i, r := range reps {
		dir := t.TempDir()
		args := []string{"serve", "-listen", r.api, "-db", filepath.Join(dir, "curator.db"), "-key", f.key, "-crs", f.crs,
			"-kubeconfig", tb.Kubeconfig(), "-raft-id", r.id, "-raft-bind", r.raftAddr, "-raft-dir", filepath.Join(dir, "raft"),
			"-raft-peers", strings.Join(peers, ",")}
		if i == 0 {
			args = append(args, "-raft-bootstrap")
		}
		procs[r.id] = startProc(t, args...)
	}
	leader := func() string {
		for _, r := range reps {
			if procs[r.id].cmd.ProcessState != nil {
				continue
			}
			if st, err := raftStatus("http://" + r.api); err == nil && st["state"] == "Leader" {
				return r.id
			}
		}
		return ""
	}
	deadline := time.Now().Add(20 * time.Second)
	for leader() == "" {
		if time.Now().After(deadline) {
			t.Fatal("no raft leader after 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	rg := &registrar{tb: tb, pod: pod, agent: agentPod(t, tb, node), files: f, acked: map[curator.ID]uint64{}}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var acks atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 400; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Spread requests over the replicas; followers forward.
				url := "http://" + reps[(w+i)%3].api
				if _, err := rg.register(ctx, url); err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				acks.Add(1)
			}
		}()
	}
	for acks.Load() < 20 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	old := leader()
	procs[old].kill()
	killed := time.Now()
	before := acks.Load()
	t.Logf("killed leader %s after %d acknowledged registrations", old, before)

	// A new leader must serve: wait for acknowledgements after the kill.
	logged := false
	for acks.Load() < before+10 && ctx.Err() == nil {
		if !logged && acks.Load() > before {
			t.Logf("first acknowledgement %v after the kill", time.Since(killed).Round(10*time.Millisecond))
			logged = true
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("no registration acknowledged within 20s of killing the leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	newLeader := leader()
	t.Logf("new leader %s; %d acknowledged in total", newLeader, acks.Load())
	if newLeader == "" || newLeader == old {
		t.Fatalf("leader after the kill = %q, want another replica than %s", newLeader, old)
	}
	for _, r := range reps {
		if r.id != old {
			rg.checkAcked(t, "http://"+r.api, f)
		}
	}
}
