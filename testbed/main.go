package testbed

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
)

var (
	shared       *Testbed
	sharedReason string
	// afterTests are the functions registered with AfterTests, run in
	// reverse order.
	afterTests   []func()
	afterTestsMu sync.Mutex
	// afterTestsOnce makes the hooks run once, whether the tests end or a
	// signal interrupts them.
	afterTestsOnce sync.Once
)

// Main runs a test binary's tests with one shared testbed: it attaches to
// the testbed named by MAZU_TESTBED, or starts one with opts, runs the tests
// and stops it. Tests get it with Get. When the process is not root or the
// binaries are missing, Main still runs the tests, and Get skips them, or
// fails them under MAZU_REQUIRE_PRIVILEGED=1. Main does not return.
func Main(m *testing.M, opts Options) {
	os.Exit(runMain(m, opts))
}

func runMain(m *testing.M, opts Options) int {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	flag.Parse()
	switch {
	case isFuzzing():
		// A fuzz run exercises a parser; starting a control plane for it
		// would only slow every iteration's worker start-up.
		sharedReason = "fuzzing runs without the testbed"
	case os.Geteuid() != 0:
		sharedReason = "the testbed needs root for network namespaces and cgroups"
	case os.Getenv(EnvTestbed) != "":
		tb, err := Attach(os.Getenv(EnvTestbed), opts.Logger)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testbed: %v\n", err)
			return 1
		}
		shared = tb
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		tb, err := Start(ctx, opts)
		cancel()
		if errors.Is(err, ErrNoBinaries) {
			sharedReason = err.Error()
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "testbed: start failed: %v\n", err)
			return 1
		}
		shared = tb
	}
	if shared == nil {
		return m.Run()
	}
	stopOnSignal(shared)
	code := m.Run()
	runAfterTests()
	if err := shared.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "testbed: stop: %v\n", err)
		code = 1
	}
	if leftovers := shared.Leftovers(); len(leftovers) > 0 {
		fmt.Fprintf(os.Stderr, "testbed: left behind after stop: %v\n", leftovers)
		code = 1
	}
	return code
}

func isFuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// stopOnSignal runs the AfterTests hooks and tears the testbed down when the
// test binary is interrupted, so an interrupted run leaves no namespace,
// cgroup or process behind. A second signal ends the process at once.
func stopOnSignal(tb *Testbed) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		signal.Stop(signals)
		fmt.Fprintf(os.Stderr, "testbed: %v received, stopping\n", sig)
		// The hooks stop processes, such as node agents, that live in the
		// node cgroups Stop removes.
		runAfterTests()
		if err := tb.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testbed: stop: %v\n", err)
		}
		os.Exit(1)
	}()
}

// runAfterTests runs the AfterTests hooks in reverse order of registration,
// once per process.
func runAfterTests() {
	afterTestsOnce.Do(func() {
		afterTestsMu.Lock()
		fns := afterTests
		afterTestsMu.Unlock()
		for i := len(fns) - 1; i >= 0; i-- {
			fns[i]()
		}
	})
}

// AfterTests registers fn to run after the last test and before Main stops
// the shared testbed, in reverse order of registration. It is for state that
// several tests share, such as node agents, which t.Cleanup would end with
// the first test.
func AfterTests(fn func()) {
	afterTestsMu.Lock()
	defer afterTestsMu.Unlock()
	afterTests = append(afterTests, fn)
}

// Get returns the testbed that Main started for this test binary. It skips
// the test when none could run, or fails it under MAZU_REQUIRE_PRIVILEGED=1.
func Get(t testing.TB) *Testbed {
	t.Helper()
	if shared != nil {
		return shared
	}
	reason := sharedReason
	if reason == "" {
		reason = "testbed.Main was not called from TestMain"
	}
	if privtest.Required() {
		t.Fatalf("testbed unavailable and %s=1 forbids skipping: %s", privtest.EnvRequire, reason)
	}
	t.Skipf("testbed unavailable: %s", reason)
	return nil
}

// NewNode adds a node that is removed when the test ends.
func NewNode(t testing.TB, tb *Testbed, name string) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, err := tb.AddNode(ctx, name)
	if err != nil {
		t.Fatalf("add node %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := tb.RemoveNode(context.Background(), node); err != nil {
			t.Errorf("remove node %s: %v", name, err)
		}
	})
	return node
}

// NewPod adds a pod that is deleted when the test ends.
func NewPod(t testing.TB, tb *Testbed, node *Node, spec PodSpec) *Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod, err := tb.AddPod(ctx, node, spec)
	if err != nil {
		t.Fatalf("add pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	t.Cleanup(func() {
		if err := tb.DeletePod(context.Background(), pod); err != nil {
			t.Errorf("delete pod %s/%s: %v", spec.Namespace, spec.Name, err)
		}
	})
	return pod
}
