package perf

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"
)

// The suite runs every endpoint as its own OS process inside a network
// namespace: it re-executes its own binary through `ip netns exec`, with the
// role and configuration in the MAZU_PERF_CHILD environment variable. Proxies
// are separate processes so that /proc gives their CPU time and RSS alone.
// The load generator is a process too, because a Go process cannot move all
// its threads into a namespace at once, and its sockets must be in the
// client pod's.

const childEnv = "MAZU_PERF_CHILD"

// ChildConfig is the configuration a child process receives.
type ChildConfig struct {
	Role   string        `json:"role"` // "proxy", "server" or "load"
	Proxy  *ProxyConfig  `json:"proxy,omitempty"`
	Server *ServerConfig `json:"server,omitempty"`
	Load   *LoadConfig   `json:"load,omitempty"`
	// MaxLife bounds the child's lifetime; it exits when it elapses or
	// when its standard input closes (the parent went away).
	MaxLife time.Duration `json:"max_life"`
}

// IsChild reports whether this process was started as a suite child.
func IsChild() bool { return os.Getenv(childEnv) != "" }

// RunChild runs the child role named in the environment and returns the
// process exit code. Results go to standard output as one JSON line.
func RunChild(log *slog.Logger) int {
	var cfg ChildConfig
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "mazu-perf child: decode %s: %v\n", childEnv, err)
		return 2
	}
	if cfg.MaxLife <= 0 {
		cfg.MaxLife = time.Hour
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.MaxLife)
	defer cancel()
	go func() {
		// The parent holds our stdin; EOF means it is gone.
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var err error
	switch cfg.Role {
	case "proxy":
		err = runProxy(ctx, log, cfg.Proxy)
	case "server":
		err = runServer(ctx, cfg.Server)
	case "load":
		var res *LoadResult
		res, err = runLoad(ctx, cfg.Load)
		if err == nil {
			err = json.NewEncoder(os.Stdout).Encode(res)
		}
	default:
		err = fmt.Errorf("unknown child role %q: want proxy, server or load", cfg.Role)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "mazu-perf %s: %v\n", cfg.Role, err)
		return 1
	}
	return 0
}

// ready signals the parent that the listeners are open.
func ready() { fmt.Println("READY") }

// child is a running child process.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	errb  *strings.Builder
	done  chan struct{}
}

// Pid is the child's process ID; `ip netns exec` execs the command, so this
// is the suite binary's own PID.
func (c *child) Pid() int { return c.cmd.Process.Pid }

// startChild starts the suite binary in network namespace ns with cfg.
func startChild(ctx context.Context, exe, ns, name string, cfg ChildConfig, env []string) (*child, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode %s configuration: %w", name, err)
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe)
	cmd.Env = append(append(os.Environ(), childEnv+"="+string(b)), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	errb := &strings.Builder{}
	cmd.Stderr = &limitedWriter{b: errb, max: 64 << 10}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, out: bufio.NewReaderSize(stdout, 1<<20), errb: errb, done: make(chan struct{})}
	return c, nil
}

// waitReady waits for the READY line.
func (c *child) waitReady(timeout time.Duration) error {
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := c.out.ReadString('\n')
		ch <- res{l, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil || strings.TrimSpace(r.line) != "READY" {
			return fmt.Errorf("%s did not start: %q %v: %s", c.name, r.line, r.err, c.errb.String())
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s not ready after %s: %s", c.name, timeout, c.errb.String())
	}
}

// stop closes stdin, waits briefly, then kills the child by PID.
func (c *child) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

type limitedWriter struct {
	b   *strings.Builder
	max int
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if room := w.max - w.b.Len(); room > 0 {
		if len(p) > room {
			w.b.Write(p[:room])
		} else {
			w.b.Write(p)
		}
	}
	return len(p), nil
}
