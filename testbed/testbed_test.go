package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMain(m *testing.M) {
	Main(m, Options{Istiod: os.Getenv("MAZU_TESTBED_NO_ISTIOD") == ""})
}

const smokeAudience = "mazu-smoke"

// TestSmoke walks the testbed's basic promises: pods on two nodes, a
// pod-bound token that TokenReview accepts, TCP between the nodes, and a
// token that stops passing review once its pod is gone.
func TestSmoke(t *testing.T) {
	tb := Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	nodeA := NewNode(t, tb, "smoke-a")
	nodeB := NewNode(t, tb, "smoke-b")
	podA, err := tb.AddPod(ctx, nodeA, PodSpec{Namespace: "smoke", Name: "client", ServiceAccount: "client"})
	if err != nil {
		t.Fatalf("add pod A: %v", err)
	}
	podB := NewPod(t, tb, nodeB, PodSpec{Namespace: "smoke", Name: "server", ServiceAccount: "server"})

	token, err := tb.RequestToken(ctx, podA, smokeAudience, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	status, err := tb.ReviewToken(ctx, token, smokeAudience)
	if err != nil {
		t.Fatal(err)
	}
	if !status.Authenticated {
		t.Fatalf("TokenReview rejected a live pod's token: %s", status.Error)
	}
	if want := "system:serviceaccount:smoke:client"; status.User.Username != want {
		t.Errorf("TokenReview user = %q, want %q", status.User.Username, want)
	}
	if got := status.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != string(podA.UID) {
		t.Errorf("TokenReview pod-uid = %v, want [%s]", got, podA.UID)
	}

	assertTCPAcrossNodes(t, podA, podB)

	if err := tb.DeletePod(ctx, podA); err != nil {
		t.Fatalf("delete pod A: %v", err)
	}
	deleted := time.Now()
	// kube-apiserver caches successful token reviews for 10 s, so the
	// rejection shows up only after that.
	deadline := deleted.Add(20 * time.Second)
	for {
		status, err := tb.ReviewToken(ctx, token, smokeAudience)
		if err != nil {
			t.Fatal(err)
		}
		if !status.Authenticated {
			t.Logf("deleted pod's token rejected %s after deletion: %s", time.Since(deleted).Round(time.Millisecond), status.Error)
			// The service-account authenticator of kube-apiserver v1.37
			// returns this error when the token's bound pod is not found
			// or is being deleted.
			if want := "service account token has been invalidated"; !strings.Contains(status.Error, want) {
				t.Errorf("rejection error = %q, want it to contain %q", status.Error, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("TokenReview still accepts the deleted pod's token 20 s after deletion")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func assertTCPAcrossNodes(t *testing.T, client, server *Pod) {
	t.Helper()
	var listener net.Listener
	err := server.Do(func() error {
		var err error
		listener, err = net.Listen("tcp", server.IP.String()+":8080")
		return err
	})
	if err != nil {
		t.Fatalf("listen in pod %s: %v", server.Name, err)
	}
	defer listener.Close()
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(conn, "hello %s\n", conn.RemoteAddr().(*net.TCPAddr).IP)
	}()

	var conn net.Conn
	err = client.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", server.IP.String()+":8080", 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial from pod %s (%s) to %s: %v", client.Name, client.IP, server.IP, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	reply, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	// The server sees the client pod's own address: nothing translates it.
	if want := fmt.Sprintf("hello %s\n", client.IP); string(reply) != want {
		t.Errorf("reply = %q, want %q", reply, want)
	}
}

func TestPodCommandRunsInNetnsAndCgroup(t *testing.T) {
	tb := Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := NewNode(t, tb, "cmd-node")
	pod := NewPod(t, tb, node, PodSpec{Namespace: "cmd", Name: "runner"})

	cmd := pod.Command(ctx, "sh", "-c", "cat /proc/self/cgroup; ip -4 -o addr show dev eth0")
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("command failed: %v\n%s", err, out.String())
	}
	rel, err := filepath.Rel("/sys/fs/cgroup", pod.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	// On a hybrid host the cgroup2 mount is /sys/fs/cgroup/unified, which
	// /proc/self/cgroup does not show.
	rel = strings.TrimPrefix(rel, "unified/")
	if !strings.Contains(out.String(), "0::/"+rel+"\n") {
		t.Errorf("process cgroup not %s:\n%s", rel, out.String())
	}
	if !strings.Contains(out.String(), pod.IP.String()+"/24") {
		t.Errorf("process does not see the pod address %s:\n%s", pod.IP, out.String())
	}
}

// TestDeletePodKillsForkedProcesses runs a pod process that forks a child
// which Pod.Start never saw, and checks that DeletePod ends both and
// removes the cgroup.
func TestDeletePodKillsForkedProcesses(t *testing.T) {
	tb := Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := NewNode(t, tb, "fork-node")
	pod := NewPod(t, tb, node, PodSpec{Namespace: "fork", Name: "forker"})

	cmd := pod.Command(ctx, "sh", "-c", "sleep 100 & sleep 100")
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	// Whether sh runs the last sleep in a child or in its own process, the
	// cgroup holds two processes once the fork happened.
	var pids []int
	for range 100 {
		if pids = cgroupPIDs(t, pod.Cgroup); len(pids) >= 2 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(pids) < 2 {
		t.Fatalf("cgroup %s has PIDs %v after 5 s, want 2", pod.Cgroup, pids)
	}
	startTimes := map[int]uint64{}
	for _, pid := range pids {
		start, err := processStartTime(pid)
		if err != nil {
			t.Fatal(err)
		}
		startTimes[pid] = start
	}

	if err := tb.DeletePod(ctx, pod); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	if _, err := os.Stat(pod.Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod cgroup %s still exists (stat: %v)", pod.Cgroup, err)
	}
	for pid, start := range startTimes {
		// DeletePod returns once the cgroup is empty, so each process has
		// exited, though its parent may not have reaped it yet.
		if now, err := processStartTime(pid); err == nil && now == start {
			t.Errorf("pod process %d still runs after DeletePod", pid)
		}
	}
}

// cgroupPIDs returns the PIDs in a cgroup's cgroup.procs.
func cgroupPIDs(t *testing.T, cgroup string) []int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cgroup, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, field := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(field)
		if err != nil {
			t.Fatalf("parse %s/cgroup.procs: %v", cgroup, err)
		}
		pids = append(pids, pid)
	}
	return pids
}

func TestSecondTestbedUsesOwnPortsAndNames(t *testing.T) {
	first := Get(t)
	if first.attached {
		t.Skip("attached to an external testbed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	second, err := Start(ctx, Options{NoControllerManager: true})
	if err != nil {
		t.Fatalf("start second testbed: %v", err)
	}
	defer second.Stop()
	if second.Ports().APIServer == first.Ports().APIServer {
		t.Errorf("both testbeds use API server port %d", first.Ports().APIServer)
	}
	if second.Name() == first.Name() || second.Dir() == first.Dir() {
		t.Errorf("testbeds share name %q or folder %q", first.Name(), first.Dir())
	}
	if _, err := second.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("second testbed API: %v", err)
	}
}

func TestStartFailureNamesComponent(t *testing.T) {
	first := Get(t)
	dir := t.TempDir()
	// A kube-apiserver stand-in that exits at once shows how a start-up
	// failure is reported.
	for _, name := range []string{"etcd", "kube-controller-manager"} {
		if err := os.Symlink(filepath.Join(first.state.BinDir, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	script := "#!/bin/sh\necho 'fatal: simulated start-up failure' >&2\nexit 3\n"
	if err := os.WriteFile(filepath.Join(dir, "kube-apiserver"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "fail" + randomName()[:4]
	tb, err := Start(ctx, Options{Name: name, BinDir: dir})
	if err == nil {
		tb.Stop()
		t.Fatal("Start succeeded with a failing kube-apiserver")
	}
	for _, want := range []string{"kube-apiserver", "simulated start-up failure"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	// The etcd that did start must be gone, with its data folder.
	if left := processesMentioning("mazu-etcd-" + name); len(left) > 0 {
		t.Errorf("processes left behind after a failed start: %v", left)
	}
	if matches, _ := filepath.Glob(filepath.Join(shmDir(), "mazu-etcd-"+name+"-*")); len(matches) > 0 {
		t.Errorf("etcd data left behind: %v", matches)
	}
}

// processesMentioning returns the PIDs whose command line contains s.
func processesMentioning(s string) []string {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []string
	for _, path := range cmdlines {
		data, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(data), s) {
			pids = append(pids, filepath.Base(filepath.Dir(path)))
		}
	}
	return pids
}
