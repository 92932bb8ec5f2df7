package testbed

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
)

// fakeTestbed is what a dead testbed leaves behind: a network namespace, a
// cgroup with a process in it, and folders, named as Start names them.
type fakeTestbed struct {
	name    string
	items   []string
	cgroup  string
	sleeper *exec.Cmd
	// sleeperExited is closed once sleeper has exited.
	sleeperExited chan struct{}
}

func newFakeTestbed(t *testing.T, name string, owner ownerRecord) *fakeTestbed {
	t.Helper()
	if err := claimName(name, owner); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Removes whatever the test left, whether or not Start swept it.
		if _, err := removeTestbedItems(name); err != nil {
			t.Errorf("remove fake testbed %s: %v", name, err)
		}
		if err := releaseName(name); err != nil {
			t.Error(err)
		}
	})
	fake := &fakeTestbed{name: name}

	handle, err := newNamedNetns("mzt-" + name + "-n1")
	if err != nil {
		t.Fatal(err)
	}
	handle.Close()
	fake.items = append(fake.items, netnsPath("mzt-"+name+"-n1"))

	root, err := cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	fake.cgroup = filepath.Join(root, "mazu-testbed-"+name)
	podCgroup := filepath.Join(fake.cgroup, "node1", "kubepods", "besteffort", "podfake")
	if err := os.MkdirAll(podCgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	fake.items = append(fake.items, fake.cgroup)

	runDir, err := os.MkdirTemp("", "mazu-testbed-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	etcdData, err := os.MkdirTemp(shmDir(), "mazu-etcd-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	fake.items = append(fake.items, runDir, etcdData)

	// A pod process left running, as one that a dead test binary's pod
	// forked would be.
	dir, err := os.Open(podCgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	fake.sleeper = exec.Command("sleep", "100")
	fake.sleeper.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := fake.sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	fake.sleeperExited = make(chan struct{})
	go func() {
		_ = fake.sleeper.Wait()
		close(fake.sleeperExited)
	}()
	t.Cleanup(func() {
		_ = fake.sleeper.Process.Kill()
		<-fake.sleeperExited
	})
	return fake
}

// deadOwner returns the owner record of a process that has exited.
func deadOwner(t *testing.T) ownerRecord {
	t.Helper()
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start, err := processStartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	boot, err := bootID()
	if err != nil {
		t.Fatal(err)
	}
	return ownerRecord{PID: cmd.Process.Pid, StartTime: start, BootID: boot}
}

// TestStartRemovesDeadTestbeds plants the leftovers of three testbeds and
// checks that Start removes those whose owner has exited or whose PID a
// newer process reuses, and keeps the one whose owner runs.
func TestStartRemovesDeadTestbeds(t *testing.T) {
	privtest.Require(t)
	self, err := currentOwner(false)
	if err != nil {
		t.Fatal(err)
	}
	reused := self
	reused.StartTime-- // an owner that started before this process took its PID

	suffix := randomName()[:4]
	dead := newFakeTestbed(t, "dead"+suffix, deadOwner(t))
	reuse := newFakeTestbed(t, "reus"+suffix, reused)
	live := newFakeTestbed(t, "live"+suffix, self)

	// Start sweeps before it runs anything, so a folder without binaries
	// makes it fail right after the sweep.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb, err := Start(ctx, Options{BinDir: t.TempDir()})
	if err == nil {
		tb.Stop()
		t.Fatal("Start succeeded without binaries")
	}
	if !strings.Contains(err.Error(), "binary missing") {
		t.Fatalf("Start failed for another reason than the missing binaries: %v", err)
	}

	for _, fake := range []*fakeTestbed{dead, reuse} {
		for _, item := range fake.items {
			if _, err := os.Stat(item); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("leftover %s of dead testbed %s not removed (stat: %v)", item, fake.name, err)
			}
		}
		if _, err := os.Stat(ownerRecordPath(fake.name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("owner record of dead testbed %s not removed (stat: %v)", fake.name, err)
		}
		select {
		case <-fake.sleeperExited:
		case <-time.After(5 * time.Second):
			t.Errorf("process in the cgroup of dead testbed %s still runs 5 s after Start", fake.name)
		}
	}
	for _, item := range live.items {
		if _, err := os.Stat(item); err != nil {
			t.Errorf("item %s of live testbed %s removed: %v", item, live.name, err)
		}
	}
	if _, err := os.Stat(ownerRecordPath(live.name)); err != nil {
		t.Errorf("owner record of live testbed %s removed: %v", live.name, err)
	}
	if populated, err := cgroupPopulated(live.cgroup); err != nil || !populated {
		t.Errorf("cgroup of live testbed %s emptied (populated %v, err %v)", live.name, populated, err)
	}
}
