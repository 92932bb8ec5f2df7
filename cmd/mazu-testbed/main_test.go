package main

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

func TestHelpPrintsUsage(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help", "help"} {
		t.Run(arg, func(t *testing.T) {
			var stdout, stderr strings.Builder
			if err := run(context.Background(), []string{arg}, &stdout, &stderr); err != nil {
				t.Fatalf("run %s: %v", arg, err)
			}
			for _, want := range []string{"up ", "status ", "kubeconfig ", "down ", "-dir", "-istiod"} {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("usage does not mention %q:\n%s", want, stdout.String())
				}
			}
			if stderr.Len() != 0 {
				t.Errorf("help wrote to stderr: %s", stderr.String())
			}
		})
	}
}

func TestSubcommandHelpSucceeds(t *testing.T) {
	var stdout, stderr strings.Builder
	if err := run(context.Background(), []string{"up", "-h"}, &stdout, &stderr); err != nil {
		t.Fatalf("run up -h: %v", err)
	}
	if !strings.Contains(stderr.String(), "-istiod") {
		t.Errorf("up -h does not list the flags:\n%s", stderr.String())
	}
}

func TestUnknownCommandFails(t *testing.T) {
	var stdout, stderr strings.Builder
	err := run(context.Background(), []string{"launch"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), `unknown command "launch"`) {
		t.Fatalf("run launch: error = %v, want unknown command", err)
	}
}

// TestStatusPrintsPorts reads a run folder whose API server is absent, so
// status lists the components and then reports the API server not ready.
func TestStatusPrintsPorts(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	st := testbed.State{
		Name: "status",
		Dir:  dir,
		Ports: testbed.Ports{
			EtcdClient: 40001, EtcdPeer: 40002, APIServer: 40003,
		},
		Processes: []testbed.ProcessState{
			// The test process itself plays the running etcd.
			{Name: "etcd", PID: os.Getpid(), Exe: exe},
			{Name: "kube-apiserver", PID: 0, Exe: "/nonexistent/kube-apiserver"},
		},
	}
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}

	var stdout, stderr strings.Builder
	err = run(context.Background(), []string{"status", "-dir", dir}, &stdout, &stderr)
	if err == nil {
		t.Fatal("status succeeded without an API server")
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("status printed %d lines, want 2:\n%s", len(lines), stdout.String())
	}
	for _, want := range []string{"etcd", "running", "client 127.0.0.1:40001", "peer 127.0.0.1:40002"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("etcd line %q does not contain %q", lines[0], want)
		}
	}
	for _, want := range []string{"kube-apiserver", "not running", "https 127.0.0.1:40003"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("kube-apiserver line %q does not contain %q", lines[1], want)
		}
	}
}

// TestUpInterruptedStopsComponents cancels `up` while a stand-in etcd that
// never turns healthy starts, as a signal does through main's context.
func TestUpInterruptedStopsComponents(t *testing.T) {
	bin := t.TempDir()
	script := "#!/bin/sh\nwhile :; do sleep 1; done\n"
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(testbed.EnvBinDir, bin)
	dir := filepath.Join(t.TempDir(), "run")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stdout, stderr strings.Builder
	go func() { done <- run(ctx, []string{"up", "-dir", dir}, &stdout, &stderr) }()
	waitFor(t, func() bool { return len(processesMentioning(bin)) > 0 }, "stand-in etcd to start")
	cancel()

	err := <-done
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("up: error = %v, want an interruption", err)
	}
	t.Logf("up: %v", err)
	if left := processesMentioning(bin); len(left) > 0 {
		t.Errorf("processes left running after the interrupted up: %v", left)
	}
	if _, err := testbed.ReadState(dir); err == nil {
		t.Error("the interrupted up left a state file, so a later up would refuse the folder")
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the interrupted up left its run folder %s with its keys (stat: %v)", dir, err)
	}
}

// TestDirDefaultsToEnv checks that the subcommands use the folder that up
// prints as MAZU_TESTBED when no -dir is given.
func TestDirDefaultsToEnv(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "elsewhere")
	t.Setenv(testbed.EnvTestbed, dir)
	var stdout, stderr strings.Builder
	err := run(context.Background(), []string{"kubeconfig"}, &stdout, &stderr)
	if err == nil {
		t.Fatal("kubeconfig succeeded for a folder without a testbed")
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name the folder from %s", err, testbed.EnvTestbed)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for range 100 {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after 5 s waiting for %s", what)
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
