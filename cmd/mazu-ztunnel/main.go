// Command mazu-ztunnel is the mazu node agent: a drop-in for Istio ambient's
// ztunnel that captures pod traffic with eBPF and accepts HBONE peers only
// when Kubernetes and a witness-cosigned registration log vouch for them.
//
// Flags default to ztunnel's environment variables where the meaning
// matches (NODE_NAME, TRUST_DOMAIN) and to MAZU_* variables otherwise.
// agent.NodeConfigFromFlags defines them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "mazu-ztunnel: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	fs := flag.NewFlagSet("mazu-ztunnel", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", getenv("KUBECONFIG"), "kubeconfig path; empty means in-cluster configuration")
	build := agent.NodeConfigFromFlags(fs, getenv)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := build()
	if err != nil {
		return err
	}
	if cfg.REST, err = restConfig(*kubeconfig); err != nil {
		return err
	}
	return agent.RunNode(ctx, cfg)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes configuration: %w (pass -kubeconfig outside a cluster)", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
