// Command mazu-curator runs the curator's transparency log, a verifying
// witness, an audit of a log, or a step of the CRS setup ceremony.
//
//	mazu-curator serve   -db FILE -key FILE (-crs FILE | -ceremony) [-kubeconfig FILE] [-witness-policy FILE | -witness URL=VKEY ...]
//	mazu-curator serve key [-key FILE]
//	mazu-curator witness -db FILE -key FILE -log-key FILE [-crs FILE] -curator URL (-jwks FILE | -kubeconfig FILE)
//	mazu-curator witness key [-key FILE]
//	mazu-curator audit   -url URL -log-key FILE [-crs FILE] [-witness-key VKEY ...] [-checkpoint FILE ...]
//	mazu-curator keygen  -kind log|witness -name NAME -out PREFIX
//	mazu-curator crs     -n N -out FILE
//	mazu-curator ceremony status     -url URL (-policy FILE | -log-key FILE [-witness-key VKEY ...] [-quorum N])
//	mazu-curator ceremony contribute -url URL (-policy FILE | -log-key FILE ...) -token-file FILE [-n N]
//	mazu-curator ceremony verify     -url URL (-policy FILE | -log-key FILE ...) [-crs FILE] [-out FILE]
//
// Every listener should be bound to a local or cluster-internal address.
// The curator holds no secret that protects registrations: its checkpoint
// key only names the log, and clients trust a checkpoint only with a quorum
// of witness cosignatures. The witness key is the secret that matters.
//
// The ceremony subcommands read the log under a witness-cosigned
// checkpoint and check every contribution themselves, so they do not trust
// the curator. The first registration closes the ceremony.
//
// Logs go to stderr (text or JSON, -log-format). Metrics are served in the
// Prometheus text format at /metrics on -metrics-listen.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mazu-curator: %v\n", err)
		os.Exit(1)
	}
}

// usage lists the subcommands; each prints its flags with -h.
const usage = `usage: mazu-curator SUBCOMMAND [flags]

  serve         run the curator's transparency log
  serve key     print the log's verifier key
  witness       run a verifying witness
  witness key   print the witness's verifier key
  audit         replay and check a log
  keygen        make a log or witness key pair
  crs           make a CRS for development
  ceremony      status, contribute or verify the CRS ceremony

Run "mazu-curator SUBCOMMAND -h" for its flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return dispatch(ctx, args, stdout, stderr, usage, "subcommand", []subcommand{
		{"serve", runServe},
		{"witness", runWitness},
		{"audit", runAudit},
		{"keygen", runKeygen},
		{"crs", runCRS},
		{"ceremony", runCeremony},
	})
}

// A subcommand is a name and the function that runs it with the remaining
// arguments.
type subcommand struct {
	name string
	run  func(context.Context, []string, io.Writer, io.Writer) error
}

// dispatch runs the subcommand that args[0] names. With no arguments it
// prints usage to stderr, and with -h it prints usage to stdout.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer, usage, kind string, cmds []subcommand) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	names := make([]string, len(cmds))
	for i, c := range cmds {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
		names[i] = c.name
	}
	return fmt.Errorf("unknown %s %q: want %s or %s", kind, args[0], strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
}

// logFlags are the logging flags every long-running subcommand takes.
type logFlags struct {
	format string
	level  string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", envOr("LOG_FORMAT", "text"), "log format: text or json (env LOG_FORMAT)")
	fs.StringVar(&l.level, "log-level", envOr("LOG_LEVEL", "info"), "log level: debug, info, warn or error (env LOG_LEVEL)")
}

// envOr returns the environment variable name, or def when it is unset
// or empty. Flags take their defaults from the variables the Helm chart
// sets, so the chart needs no arguments.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// cmpOr returns a unless it is empty, else b.
func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// dataPath returns dir/name, or "" when dir is empty.
func dataPath(dir, name string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("invalid -log-level %q: %w", l.level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid -log-format %q: want text or json", l.format)
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
