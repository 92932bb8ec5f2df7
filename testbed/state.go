package testbed

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// EnvTestbed names the run folder of a testbed started with `mazu-testbed up`.
// When it is set, Main attaches to that testbed instead of starting one.
const EnvTestbed = "MAZU_TESTBED"

// State is what a run folder records about its testbed, so that another
// process can attach to it or tear it down.
type State struct {
	Name       string         `json:"name"`
	Dir        string         `json:"dir"`
	BinDir     string         `json:"binDir"`
	EtcdData   string         `json:"etcdData"`
	Ports      Ports          `json:"ports"`
	AdminToken string         `json:"adminToken"`
	Processes  []ProcessState `json:"processes"`
}

// ProcessState identifies a component process by PID and executable, so
// that a later `down` signals only that process.
type ProcessState struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Exe  string `json:"exe"`
}

func stateFile(dir string) string { return filepath.Join(dir, "state.json") }

func (tb *Testbed) saveState() error {
	data, err := json.MarshalIndent(tb.state, "", "  ")
	if err != nil {
		return fmt.Errorf("encode testbed state: %w", err)
	}
	tmp := stateFile(tb.dir) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write testbed state: %w", err)
	}
	if err := os.Rename(tmp, stateFile(tb.dir)); err != nil {
		return fmt.Errorf("write testbed state: %w", err)
	}
	return nil
}

// ReadState loads the state recorded in a run folder.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(stateFile(dir))
	if err != nil {
		return nil, fmt.Errorf("read testbed state in %s: %w (is a testbed running there? start one with `mazu-testbed up`)", dir, err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode testbed state %s: %w", stateFile(dir), err)
	}
	return &st, nil
}

// Attach connects to a running testbed through its run folder. Stop on an
// attached testbed removes only the nodes and pods this process created.
func Attach(dir string, log *slog.Logger) (*Testbed, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := ReadState(dir)
	if err != nil {
		return nil, err
	}
	if err := sweepDeadTestbeds(log); err != nil {
		log.Warn("testbed could not remove all leftovers of dead testbeds", "err", err)
	}
	// The nodes and pods of this process form a testbed of their own name,
	// with its own owner record, so that they are swept if this process dies.
	name := st.Name + "-" + randomName()[:4]
	owner, err := currentOwner(false)
	if err != nil {
		return nil, fmt.Errorf("attach to testbed %s: %w", st.Name, err)
	}
	if err := claimName(name, owner); err != nil {
		return nil, err
	}
	tb := &Testbed{
		log:      log,
		name:     name,
		claimed:  true,
		dir:      st.Dir,
		state:    *st,
		pods:     map[string]*Pod{},
		attached: true,
		pki: &pki{
			caCert:     filepath.Join(st.Dir, "ca.crt"),
			adminToken: st.AdminToken,
		},
	}
	if err := tb.loadClient(); err != nil {
		return nil, errors.Join(err, releaseName(name))
	}
	return tb, nil
}

// Down ends the components recorded in a run folder and removes their data
// and the folder. Nodes and pods belong to the processes that created them,
// which remove them when they stop.
func Down(dir string) error {
	st, err := ReadState(dir)
	if err != nil {
		return err
	}
	var errs []error
	for i := len(st.Processes) - 1; i >= 0; i-- {
		p := st.Processes[i]
		errs = append(errs, killPID(p.PID, p.Exe, 10*time.Second))
	}
	if st.EtcdData != "" {
		errs = append(errs, os.RemoveAll(st.EtcdData))
	}
	errs = append(errs, os.RemoveAll(dir))
	errs = append(errs, releaseName(st.Name))
	return errors.Join(errs...)
}

func randomName() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Names become parts of network namespace names and interface names, which
// the kernel limits to 15 bytes, so they stay short.
var namePattern = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

func validateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("invalid testbed name %q: use 1 to 8 lowercase letters or digits", name)
	}
	return nil
}

// ComponentStatus reports whether one recorded component still runs, and
// the loopback ports it listens on.
type ComponentStatus struct {
	Name    string
	PID     int
	Running bool
	Ports   []ComponentPort
}

// ComponentPort is one port a component listens on at 127.0.0.1.
type ComponentPort struct {
	// Name is the port's role, such as "client" or "grpc".
	Name string
	Port int
}

// componentPorts returns the ports of the component named name.
func componentPorts(name string, p Ports) []ComponentPort {
	switch name {
	case "etcd":
		return []ComponentPort{{"client", p.EtcdClient}, {"peer", p.EtcdPeer}}
	case "kube-apiserver":
		return []ComponentPort{{"https", p.APIServer}}
	case "kube-controller-manager":
		return []ComponentPort{{"https", p.ControllerManager}}
	case "pilot-discovery":
		return []ComponentPort{
			{"http", p.IstiodHTTP}, {"https", p.IstiodHTTPS},
			{"grpc", p.IstiodGRPC}, {"secure-grpc", p.IstiodSecureGRPC},
			{"monitoring", p.IstiodMonitoring}, {"ctrlz", p.IstiodCtrlz},
		}
	}
	return nil
}

// Status reports the components recorded in a run folder and whether the
// API server answers /readyz.
func Status(ctx context.Context, dir string) ([]ComponentStatus, error) {
	st, err := ReadState(dir)
	if err != nil {
		return nil, err
	}
	var out []ComponentStatus
	for _, p := range st.Processes {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID))
		running := err == nil && strings.TrimSuffix(link, " (deleted)") == p.Exe
		out = append(out, ComponentStatus{Name: p.Name, PID: p.PID, Running: running, Ports: componentPorts(p.Name, st.Ports)})
	}
	pool, err := certPool(filepath.Join(st.Dir, "ca.crt"))
	if err != nil {
		return out, err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	url := fmt.Sprintf("https://127.0.0.1:%d/readyz", st.Ports.APIServer)
	if err := httpGet(ctx, client, url, st.AdminToken); err != nil {
		return out, fmt.Errorf("kube-apiserver not ready: %w", err)
	}
	return out, nil
}
