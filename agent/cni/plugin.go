package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// SupportedVersions are the CNI spec versions mazu-cni speaks. As a chained
// plugin it passes the previous result through unchanged, so every version
// with prevResult chaining works.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// NetConf is the plugin's network configuration from stdin.
type NetConf struct {
	CNIVersion string          `json:"cniVersion"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
	// Socket is the agent's socket; empty means DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// TimeoutSeconds bounds the wait for the agent; zero means 30.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
	// ExcludeNamespaces are namespaces whose pods pass without the agent
	// being asked; absent means DefaultExcludeNamespaces.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// Kubeconfig is the path of a JSON kubeconfig the plugin reads pods and
	// namespaces with while the agent is unreachable. Empty means the
	// plugin fails every pod outside ExcludeNamespaces while the agent is
	// unreachable.
	Kubeconfig string `json:"kubeconfig,omitempty"`
}

// Error is the CNI error result (spec section "Error").
type Error struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (e *Error) Error() string { return e.Msg + ": " + e.Details }

// CNI error codes (spec section "Error"): 4 is "invalid necessary
// environment variables", 5 "I/O failure", 6 "failed to decode content",
// 7 "invalid network config" and 11 "try again later".
const (
	codeInvalidEnv    = 4
	codeIOFailure     = 5
	codeDecode        = 6
	codeInvalidConfig = 7
	codeTryAgain      = 11
)

// RunPlugin runs one CNI invocation: the command from env (CNI_COMMAND and
// friends), the configuration from stdin, the result to stdout. It returns
// the process exit code, having written the result or a CNI error.
func RunPlugin(env func(string) string, stdin io.Reader, stdout io.Writer) int {
	err := runPlugin(env, stdin, stdout)
	if err == nil {
		return 0
	}
	var cniErr *Error
	if !errors.As(err, &cniErr) {
		cniErr = &Error{Code: codeTryAgain, Msg: "mazu-cni failed", Details: err.Error()}
	}
	if cniErr.CNIVersion == "" {
		cniErr.CNIVersion = "1.0.0"
	}
	_ = json.NewEncoder(stdout).Encode(cniErr)
	return 1
}

func runPlugin(env func(string) string, stdin io.Reader, stdout io.Writer) error {
	command := env("CNI_COMMAND")
	if command == "VERSION" {
		return json.NewEncoder(stdout).Encode(map[string]any{"cniVersion": "1.0.0", "supportedVersions": SupportedVersions})
	}
	switch command {
	case "ADD", "DEL", "CHECK":
	case "":
		return &Error{Code: codeInvalidEnv, Msg: "missing CNI_COMMAND", Details: "the container runtime sets CNI_COMMAND to ADD, DEL, CHECK or VERSION; to install the plugin on a node, run mazu-cni install"}
	default:
		return &Error{Code: codeInvalidEnv, Msg: "unknown CNI_COMMAND", Details: fmt.Sprintf("%q; want ADD, DEL, CHECK or VERSION", command)}
	}
	raw, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil {
		return &Error{Code: codeIOFailure, Msg: "read network configuration", Details: err.Error()}
	}
	var conf NetConf
	if err := json.Unmarshal(raw, &conf); err != nil {
		return &Error{Code: codeDecode, Msg: "decode network configuration", Details: err.Error()}
	}
	args := parseArgs(env("CNI_ARGS"))
	req := Request{
		Namespace:   args["K8S_POD_NAMESPACE"],
		Name:        args["K8S_POD_NAME"],
		UID:         args["K8S_POD_UID"],
		ContainerID: env("CNI_CONTAINERID"),
		Netns:       env("CNI_NETNS"),
	}
	switch command {
	case "ADD":
		req.Op = OpAdd
	case "DEL":
		req.Op = OpDel
	case "CHECK":
		req.Op = OpCheck
	}
	if req.Namespace == "" || req.Name == "" {
		if command == "DEL" {
			// A DEL without pod arguments (a runtime cleaning up a sandbox
			// it never finished) has nothing to unenroll.
			return writePrevResult(stdout, conf)
		}
		return &Error{CNIVersion: conf.CNIVersion, Code: codeInvalidEnv, Msg: "CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME", Details: env("CNI_ARGS")}
	}
	if conf.excluded(req.Namespace) {
		// The agent never enrolls these pods, and its own pod is among
		// them, so the agent can start on a node where it is not running.
		return writeSuccess(stdout, command, conf)
	}
	resp, err := call(conf, req)
	var unreachable *agentUnreachableError
	switch {
	case err != nil && command == "DEL":
		// DEL must succeed when the agent is gone: it cleans up its own
		// state for departed pods when it restarts.
		return writePrevResult(stdout, conf)
	case errors.As(err, &unreachable):
		if err := admitWithoutAgent(conf, req, err); err != nil {
			return err
		}
		return writeSuccess(stdout, command, conf)
	case err != nil:
		return &Error{CNIVersion: conf.CNIVersion, Code: codeTryAgain, Msg: "request to the node agent failed; the pod waits until the agent responds", Details: err.Error()}
	case resp.Error != "":
		return &Error{CNIVersion: conf.CNIVersion, Code: codeTryAgain, Msg: "node agent did not enroll the pod", Details: resp.Error}
	}
	return writeSuccess(stdout, command, conf)
}

// writeSuccess writes the result of a successful command: nothing for
// CHECK, the previous result for ADD and DEL.
func writeSuccess(stdout io.Writer, command string, conf NetConf) error {
	if command == "CHECK" {
		return nil
	}
	return writePrevResult(stdout, conf)
}

func writePrevResult(stdout io.Writer, conf NetConf) error {
	if len(conf.PrevResult) == 0 {
		// A DEL has no result, and an ADD without a previous plugin
		// returns an empty result of its version.
		_, err := fmt.Fprintf(stdout, "{\"cniVersion\":%q}\n", conf.CNIVersion)
		return err
	}
	var result map[string]any
	if err := json.Unmarshal(conf.PrevResult, &result); err != nil {
		return &Error{CNIVersion: conf.CNIVersion, Code: codeDecode, Msg: "decode prevResult", Details: err.Error()}
	}
	result["cniVersion"] = conf.CNIVersion
	return json.NewEncoder(stdout).Encode(result)
}

func call(conf NetConf, req Request) (Response, error) {
	socket := conf.Socket
	if socket == "" {
		socket = DefaultSocket
	}
	timeout := time.Duration(conf.TimeoutSeconds) * time.Second
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	conn, err := net.DialTimeout("unixpacket", socket, timeout)
	if err != nil {
		return Response{}, &agentUnreachableError{socket: socket, err: err}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	out, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	if _, err := conn.Write(out); err != nil {
		return Response{}, fmt.Errorf("send request to agent: %w", err)
	}
	buf := make([]byte, maxMessage)
	n, err := conn.Read(buf)
	if err != nil {
		return Response{}, fmt.Errorf("read agent response: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(buf[:n], &resp); err != nil {
		return Response{}, fmt.Errorf("decode agent response: %w", err)
	}
	return resp, nil
}

// parseArgs splits CNI_ARGS, "K1=V1;K2=V2".
func parseArgs(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}
