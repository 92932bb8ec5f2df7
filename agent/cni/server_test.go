package cni

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// countingHandler enrolls every pod and counts the requests it served.
type countingHandler struct{ served atomic.Int32 }

func (h *countingHandler) Enroll(context.Context, Request) (bool, error) {
	h.served.Add(1)
	return true, nil
}

func (h *countingHandler) Unenroll(context.Context, Request) error { return nil }

func (h *countingHandler) Enrolled(context.Context, Request) (bool, error) { return true, nil }

// sendAdd sends one add request over the socket and returns the response.
func sendAdd(t *testing.T, socket string) (Response, error) {
	t.Helper()
	conn, err := net.Dial("unixpacket", socket)
	if err != nil {
		return Response{}, err
	}
	defer conn.Close()
	req, _ := json.Marshal(Request{Op: OpAdd, Namespace: "default", Name: "web", Netns: "/var/run/netns/web"})
	if _, err := conn.Write(req); err != nil {
		return Response{}, err
	}
	buf := make([]byte, maxMessage)
	n, err := conn.Read(buf)
	if err != nil {
		return Response{}, err
	}
	var resp Response
	return resp, json.Unmarshal(buf[:n], &resp)
}

// TestCloseKeepsReplacementSocket replays a rolling update: a second server
// listens on the first one's path, then the first closes. The socket file
// must stay, and requests must reach the second server.
func TestCloseKeepsReplacementSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	log := slog.New(slog.DiscardHandler)
	var oldHandler, newHandler countingHandler
	oldServer, err := Listen(socket, &oldHandler, log)
	if err != nil {
		t.Fatal(err)
	}
	go oldServer.Serve()
	newServer, err := Listen(socket, &newHandler, log)
	if err != nil {
		t.Fatal(err)
	}
	go newServer.Serve()

	if err := oldServer.Close(); err != nil {
		t.Fatalf("close the replaced server: %v", err)
	}
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("closing the replaced server removed the new server's socket: %v", err)
	}
	resp, err := sendAdd(t, socket)
	if err != nil {
		t.Fatalf("add request after the replaced server closed: %v", err)
	}
	if !resp.Enrolled || resp.Error != "" {
		t.Errorf("response = %+v, want enrolled", resp)
	}
	if n := newHandler.served.Load(); n != 1 {
		t.Errorf("new server served %d requests, want 1", n)
	}
	if n := oldHandler.served.Load(); n != 0 {
		t.Errorf("replaced server served %d requests, want 0", n)
	}

	if err := newServer.Close(); err != nil {
		t.Fatalf("close the new server: %v", err)
	}
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after the last server closed: %v, want it removed", err)
	}
}
