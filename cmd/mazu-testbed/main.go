// Command mazu-testbed drives the integration testbed by hand: a real
// kube-apiserver, etcd, kube-controller-manager and, optionally, istiod on
// loopback. Tests attach to it when MAZU_TESTBED names its run folder.
//
//	mazu-testbed up [-dir D] [-istiod]   start it and print the exports for tests
//	mazu-testbed status [-dir D]         show its components and readiness
//	mazu-testbed kubeconfig [-dir D]     print the admin kubeconfig path
//	mazu-testbed down [-dir D]           stop it and remove its data
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

const usage = `usage: mazu-testbed <up|status|kubeconfig|down> [flags]

  up          start the control plane and print the environment for tests
  status      show the components and whether the API server is ready
  kubeconfig  print the admin kubeconfig path
  down        stop the components by PID and remove the run folder

Flags:
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "mazu-testbed: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("missing command")
	}
	fs := flag.NewFlagSet("mazu-testbed", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	dir := fs.String("dir", filepath.Join(os.TempDir(), "mazu-testbed"), "run folder holding the state, certificates, logs and kubeconfig")
	istiod := fs.Bool("istiod", false, "also start istiod with ambient mode (up only)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	switch args[0] {
	case "up":
		if _, err := testbed.ReadState(*dir); err == nil {
			return fmt.Errorf("a testbed already uses %s; stop it with `mazu-testbed down -dir %s` or pick another -dir", *dir, *dir)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		tb, err := testbed.Start(ctx, testbed.Options{Dir: *dir, Istiod: *istiod, Detach: true, Logger: log})
		if err != nil {
			return err
		}
		fmt.Printf("export %s=%s\nexport KUBECONFIG=%s\n", testbed.EnvTestbed, tb.Dir(), tb.Kubeconfig())
	case "status":
		components, err := testbed.Status(ctx, *dir)
		for _, c := range components {
			state := "running"
			if !c.Running {
				state = "not running"
			}
			fmt.Printf("%-24s pid %-8d %s\n", c.Name, c.PID, state)
		}
		if err != nil {
			return err
		}
		fmt.Println("kube-apiserver ready")
	case "kubeconfig":
		if _, err := testbed.ReadState(*dir); err != nil {
			return err
		}
		fmt.Println(filepath.Join(*dir, "kubeconfig"))
	case "down":
		return testbed.Down(*dir)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", args[0])
	}
	return nil
}
