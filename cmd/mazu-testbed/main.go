// Command mazu-testbed drives the integration testbed by hand: a real
// kube-apiserver, etcd, kube-controller-manager and, optionally, istiod on
// loopback. Tests attach to it when MAZU_TESTBED names its run folder.
//
//	mazu-testbed up [-dir D] [-istiod]   start it and print the exports for tests
//	mazu-testbed status [-dir D]         show its components, ports and readiness
//	mazu-testbed kubeconfig [-dir D]     print the admin kubeconfig path
//	mazu-testbed down [-dir D]           stop it and remove its data
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

const usage = `usage: mazu-testbed <up|status|kubeconfig|down> [flags]

  up          start the control plane and print the environment for tests
  status      show the components, their loopback ports and whether the API server is ready
  kubeconfig  print the admin kubeconfig path
  down        stop the components by PID and remove the run folder

Flags:
`

func main() {
	// An interrupted `up` stops the components it has started so far.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mazu-testbed: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mazu-testbed", flag.ContinueOnError)
	defaultDir := os.Getenv(testbed.EnvTestbed)
	if defaultDir == "" {
		defaultDir = filepath.Join(os.TempDir(), "mazu-testbed")
	}
	dir := fs.String("dir", defaultDir, "run folder holding the state, certificates, logs and kubeconfig (default $"+testbed.EnvTestbed+" when set)")
	istiod := fs.Bool("istiod", false, "also start istiod with ambient mode (up only)")
	printUsage := func(w io.Writer) {
		fmt.Fprint(w, usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	fs.Usage = func() { printUsage(stderr) }

	if len(args) == 0 {
		printUsage(stderr)
		return errors.New("missing command: want up, status, kubeconfig or down")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		printUsage(stdout)
		return nil
	}
	fs.SetOutput(stderr)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	timeoutCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	switch args[0] {
	case "up":
		return up(ctx, timeoutCtx, *dir, *istiod, stdout, stderr)
	case "status":
		return status(timeoutCtx, *dir, stdout)
	case "kubeconfig":
		if _, err := testbed.ReadState(*dir); err != nil {
			return err
		}
		fmt.Fprintln(stdout, filepath.Join(*dir, "kubeconfig"))
	case "down":
		return testbed.Down(*dir)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q: want up, status, kubeconfig or down", args[0])
	}
	return nil
}

// up starts a detached testbed. When signalCtx ends first, Start stops the
// components it has started, and up reports the interruption.
func up(signalCtx, ctx context.Context, dir string, istiod bool, stdout, stderr io.Writer) error {
	if _, err := testbed.ReadState(dir); err == nil {
		return fmt.Errorf("a testbed already uses %s; stop it with `mazu-testbed down -dir %s` or pick another -dir", dir, dir)
	}
	_, statErr := os.Stat(dir)
	created := errors.Is(statErr, fs.ErrNotExist)
	log := slog.New(slog.NewTextHandler(stderr, nil))
	tb, err := testbed.Start(ctx, testbed.Options{Dir: dir, Istiod: istiod, Detach: true, Logger: log})
	if err != nil && signalCtx.Err() != nil {
		// The folder holds the API server's and service-account keys, so
		// remove it when this run created it.
		if created {
			if rmErr := os.RemoveAll(dir); rmErr != nil {
				err = errors.Join(err, fmt.Errorf("remove run folder %s: %w", dir, rmErr))
			}
		}
		return fmt.Errorf("up interrupted, so the components started so far were stopped: %w", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "export %s=%s\nexport KUBECONFIG=%s\n", testbed.EnvTestbed, tb.Dir(), tb.Kubeconfig())
	return nil
}

// status prints one line per component with its PID, whether it runs and
// its loopback ports, then whether the API server is ready.
func status(ctx context.Context, dir string, stdout io.Writer) error {
	components, err := testbed.Status(ctx, dir)
	for _, c := range components {
		state := "running"
		if !c.Running {
			state = "not running"
		}
		ports := make([]string, 0, len(c.Ports))
		for _, p := range c.Ports {
			ports = append(ports, fmt.Sprintf("%s 127.0.0.1:%d", p.Name, p.Port))
		}
		fmt.Fprintf(stdout, "%-24s pid %-8d %-12s %s\n", c.Name, c.PID, state, strings.Join(ports, ", "))
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "kube-apiserver ready")
	return nil
}
