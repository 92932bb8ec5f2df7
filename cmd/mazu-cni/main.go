// Command mazu-cni is a chained CNI plugin. On ADD it asks the node agent to
// enroll the pod and fails unless the agent acknowledges, so an ambient
// pod's containers start only once its traffic is captured. Pods of excluded
// namespaces, and pods the API server shows are not ambient while the agent
// is unreachable, start without it.
//
// Run as `mazu-cni install`, it is the installer the chart runs in each
// agent pod: it copies itself into the node's CNI plugin folder, adds
// itself to the node's CNI configuration and removes both when its pod is
// deleted. Its settings come from the environment (see
// cni.InstallConfigFromEnv and deploy/ambient/README.md).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
)

func main() {
	if len(os.Args) < 2 {
		// The container runtime runs plugins without arguments.
		os.Exit(cni.RunPlugin(os.Getenv, os.Stdin, os.Stdout))
	}
	if os.Args[1] != "install" || len(os.Args) > 2 {
		fmt.Fprintf(os.Stderr, "usage: %s install\n  (run without arguments, it is the CNI plugin and reads CNI_COMMAND)\n", os.Args[0])
		os.Exit(2)
	}
	if err := install(); err != nil {
		fmt.Fprintf(os.Stderr, "mazu-cni install: %v\n", err)
		os.Exit(1)
	}
}

func install() error {
	cfg, err := cni.InstallConfigFromEnv(os.LookupEnv)
	if err != nil {
		return err
	}
	if cfg.BinarySource, err = os.Executable(); err != nil {
		return fmt.Errorf("find own executable to install: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return cni.NewInstaller(cfg, log).Run(ctx)
}
