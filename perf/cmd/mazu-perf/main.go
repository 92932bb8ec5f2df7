// Command mazu-perf runs the mazu-ztunnel performance suite: direct, null
// proxy, mTLS and HBONE data paths side by side in network namespaces, with
// Fortio workloads. It needs root. It also serves as its own proxy, server
// and load-generator processes, which the suite starts inside the
// namespaces.
//
//	mazu-perf run -mode quick -out perf/results -md perf/RESULTS.md [-micro bench.txt] [-curator bench.txt]
//	mazu-perf render -in perf/results/quick.json -md perf/RESULTS.md [-plots perf/results]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mazu-mesh/mazu-ztunnel/perf"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if perf.IsChild() {
		os.Exit(perf.RunChild(slog.New(slog.DiscardHandler)))
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mazu-perf run|render [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(log, os.Args[2:])
	case "render":
		err = render(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want run or render", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mazu-perf:", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	mode := fs.String("mode", "quick", "quick, full or smoke")
	rounds := fs.Int("rounds", 0, "override the number of rounds")
	out := fs.String("out", "perf/results", "folder for the JSON and the plots")
	md := fs.String("md", "perf/RESULTS.md", "Markdown report to write; empty skips it")
	micro := fs.String("micro", "", "go test -bench output of the crypto micro-benchmarks")
	curator := fs.String("curator", "", "go test -bench AgentUpdates output of the curator; a missing file means not run")
	_ = fs.Parse(args)
	cfg, err := perf.Preset(*mode)
	if err != nil {
		return err
	}
	if *rounds > 0 {
		cfg.Rounds = *rounds
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := &perf.Runner{Config: cfg, MicroFile: *micro, CuratorFile: *curator, Log: log}
	res, err := r.Run(ctx)
	if err != nil {
		return err
	}
	return res.WriteAll(*out, *md)
}

func render(args []string) error {
	fs := flag.NewFlagSet("render", flag.ExitOnError)
	in := fs.String("in", "perf/results/quick.json", "results JSON")
	md := fs.String("md", "perf/RESULTS.md", "Markdown report to write")
	plots := fs.String("plots", "", "folder to redraw the plots in; empty leaves them")
	_ = fs.Parse(args)
	res, err := perf.ReadJSON(*in)
	if err != nil {
		return err
	}
	res.Derive()
	if *plots != "" {
		if err := res.WritePlots(*plots); err != nil {
			return err
		}
	}
	if err := os.WriteFile(*md, []byte(res.RenderMarkdown()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", *md, err)
	}
	return nil
}
