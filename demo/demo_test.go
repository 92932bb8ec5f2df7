package demo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestMain lets the test binary play the demo's roles inside pods.
func TestMain(m *testing.M) {
	if code, ok := RunRole(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestDemo runs the whole demo with the real binaries and checks that it
// reports success with every attack blocked, and that it leaves no
// namespace, cgroup, bpffs mount or process behind.
func TestDemo(t *testing.T) {
	privtest.Require(t)
	if _, err := testbed.FindBinaries(); err != nil {
		if errors.Is(err, testbed.ErrNoBinaries) && !privtest.Required() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/",
		"github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-ztunnel", "github.com/mazu-mesh/mazu-ztunnel/cmd/mazu-cni")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent binaries: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	out.Grow(1 << 16)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sum := Run(ctx, Config{BinDir: bin, Self: self, OutDir: t.TempDir(), Out: &out})
	t.Log("\n" + out.String())

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "demo: ok ") || !strings.HasSuffix(last, " attacks_blocked=4/4") {
		t.Errorf("summary line = %q, want demo: ok ... attacks_blocked=4/4", last)
	}
	if !sum.OK() || sum.Requests != 400 || sum.Errors != 0 {
		t.Errorf("summary = %+v", sum)
	}
	if len(sum.Leftovers) > 0 {
		t.Errorf("left behind: %v", sum.Leftovers)
	}
	// Check the leftovers independently of the demo's own report.
	if sum.Testbed == "" {
		t.Fatal("the demo did not report its testbed's name")
	}
	if left, _ := filepath.Glob("/var/run/netns/mzt-" + sum.Testbed + "-*"); len(left) > 0 {
		t.Errorf("network namespaces left: %v", left)
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(root, "mazu-testbed-"+sum.Testbed)); err == nil {
			t.Errorf("cgroup %s left", filepath.Join(root, "mazu-testbed-"+sum.Testbed))
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), sum.OutDir) {
		t.Errorf("a bpffs mount under %s is left", sum.OutDir)
	}
}
