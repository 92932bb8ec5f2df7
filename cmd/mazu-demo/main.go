// Command mazu-demo plays the mazu-ztunnel showcase: a testbed with istiod,
// a curator with two witnesses, a mazu-ztunnel process per node, HTTP
// between pods through eBPF capture and HBONE, and four attacks. It prints
// what happens at each step and ends with one summary line:
//
//	demo: ok requests=<n> errors=<n> p50_ms=<x> p90_ms=<y> attacks_blocked=<a>/<b>
//
// It needs root and the binaries from `make build` and `make testbed-bins`;
// `make demo` builds them first.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mazu-mesh/mazu-ztunnel/demo"
)

func main() {
	// Inside a pod the binary plays a role instead.
	if code, ok := demo.RunRole(); ok {
		os.Exit(code)
	}
	var cfg demo.Config
	flag.StringVar(&cfg.BinDir, "bin", "bin", "folder with the mazu-ztunnel and mazu-cni binaries")
	flag.IntVar(&cfg.Requests, "requests", 200, "HTTP requests per client")
	flag.StringVar(&cfg.OutDir, "out", "", "folder for the evidence and agent logs kept after the run; empty makes one under the temporary folder")
	verbose := flag.Bool("v", false, "log the testbed's progress to stderr")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "mazu-demo: must run as root (network namespaces, eBPF, cgroups)")
		os.Exit(2)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if sum := demo.Run(ctx, cfg); !sum.OK() {
		os.Exit(1)
	}
}
