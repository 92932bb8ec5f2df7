// Package cni holds mazu-cni, the chained CNI plugin that makes a pod's
// sandbox wait until the node agent has enrolled it, and the agent's side of
// their socket protocol.
//
// The kubelet runs CNI plugins after it creates a pod's network namespace
// and before it starts any container. mazu-cni asks the agent over a Unix
// socket to enroll the pod and fails the ADD unless the agent acknowledges,
// so no container of an ambient pod runs before capture is in place. The
// agent decides whether the pod is ambient from the Kubernetes API.
//
// Two kinds of pods start without the agent. Pods in the configured
// excluded namespaces pass without a request, which lets the agent's own
// pod start on a node where no agent runs. When the agent's socket accepts
// no connection, the plugin reads the pod and its namespace with the
// installer's kubeconfig and passes the pods the agent would not enroll.
// It fails ambient pods, and every pod when it has no kubeconfig or the
// lookup fails, so the kubelet retries them.
//
// The same package holds the installer (`mazu-cni install`), which copies
// the binary and adds the plugin to the node's CNI configuration.
//
// The socket is SOCK_SEQPACKET, one JSON message per datagram, a request
// from the plugin followed by one response from the agent. It mirrors the
// shape of Istio's ZDS protocol between istio-cni and ztunnel, without the
// file-descriptor passing, because the plugin passes the namespace's path.
package cni

import (
	"encoding/json"
	"fmt"
)

// DefaultSocket is where the agent listens.
const DefaultSocket = "/var/run/mazu/cni.sock"

// Operations a Request may ask for.
const (
	OpAdd   = "add"
	OpDel   = "del"
	OpCheck = "check"
)

// maxMessage bounds a datagram. Requests are a few hundred bytes.
const maxMessage = 8 << 10

// Request is sent by the plugin.
type Request struct {
	Op          string `json:"op"`
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	UID         string `json:"uid,omitempty"`
	ContainerID string `json:"containerID"`
	// Netns is the path of the pod's network namespace.
	Netns string `json:"netns,omitempty"`
}

// Response is sent by the agent.
type Response struct {
	// Enrolled is true when the pod is captured; false with an empty Error
	// means the pod is not ambient and was left alone.
	Enrolled bool   `json:"enrolled"`
	Error    string `json:"error,omitempty"`
}

func decodeRequest(data []byte) (Request, error) {
	var req Request
	if err := json.Unmarshal(data, &req); err != nil {
		return Request{}, fmt.Errorf("decode CNI request: %w", err)
	}
	switch req.Op {
	case OpAdd, OpDel, OpCheck:
	default:
		return Request{}, fmt.Errorf("decode CNI request: unknown op %q (want add, del or check)", req.Op)
	}
	if req.Namespace == "" || req.Name == "" {
		return Request{}, fmt.Errorf("decode CNI request: pod namespace %q and name %q must both be set", req.Namespace, req.Name)
	}
	if req.Op == OpAdd && req.Netns == "" {
		return Request{}, fmt.Errorf("decode CNI request: add for %s/%s has no network namespace path", req.Namespace, req.Name)
	}
	return req, nil
}
