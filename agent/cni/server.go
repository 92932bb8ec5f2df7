package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Handler enrolls and unenrolls pods for the server.
type Handler interface {
	// Enroll captures the pod, or returns false when the pod is not ambient.
	Enroll(ctx context.Context, req Request) (bool, error)
	Unenroll(ctx context.Context, req Request) error
	// Enrolled reports whether the pod is captured.
	Enrolled(ctx context.Context, req Request) (bool, error)
}

// Server accepts mazu-cni's requests on a Unix socket.
type Server struct {
	log      *slog.Logger
	handler  Handler
	listener *net.UnixListener
	timeout  time.Duration
	wg       sync.WaitGroup
	// path and socket identify the socket file this server created, so
	// that Close removes it only while it is still this server's.
	path   string
	socket fileID
}

// fileID is a file's device and inode number.
type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// Listen removes a stale socket at path and listens there. In a rolling
// update the new agent's Listen replaces the old agent's socket file, and
// the old agent's Close then leaves the new file in place.
func Listen(path string, handler Handler, log *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("listen for CNI requests: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listen for CNI requests: remove stale socket: %w", err)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listen for CNI requests on %s: %w", path, err)
	}
	// Go's Close would unlink path whoever's socket it names by then.
	l.SetUnlinkOnClose(false)
	id, err := statID(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("listen for CNI requests: stat socket %s: %w", path, err)
	}
	return &Server{log: log, handler: handler, listener: l, timeout: 30 * time.Second, path: path, socket: id}, nil
}

// Serve handles connections until the listener closes.
func (s *Server) Serve() error {
	for {
		conn, err := s.listener.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept CNI connection: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
}

// Close stops accepting, removes the socket file unless another server
// has replaced it, and waits for requests in flight.
func (s *Server) Close() error {
	err := s.listener.Close()
	// NOTE: a server that replaces the file between the stat and the
	// remove loses its socket file; nothing here can close that window.
	if id, statErr := statID(s.path); statErr == nil && id == s.socket {
		if rmErr := os.Remove(s.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("remove CNI socket %s: %w", s.path, rmErr))
		}
	}
	s.wg.Wait()
	return err
}

func (s *Server) handle(conn *net.UnixConn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.timeout))
	buf := make([]byte, maxMessage)
	n, _, flags, _, err := conn.ReadMsgUnix(buf, nil)
	if err != nil {
		s.log.Warn("CNI request unreadable", "error", err)
		return
	}
	var resp Response
	req, err := decodeRequest(buf[:n])
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		err = fmt.Errorf("CNI request longer than %d bytes or carrying control data", maxMessage)
	}
	if err != nil {
		resp.Error = err.Error()
	} else {
		resp = s.dispatch(req)
	}
	out, _ := json.Marshal(resp)
	if _, err := conn.Write(out); err != nil {
		s.log.Warn("CNI response not sent", "pod", req.Namespace+"/"+req.Name, "error", err)
	}
}

func (s *Server) dispatch(req Request) Response {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	pod := req.Namespace + "/" + req.Name
	switch req.Op {
	case OpAdd:
		enrolled, err := s.handler.Enroll(ctx, req)
		if err != nil {
			s.log.Error("enrollment failed", "pod", pod, "netns", req.Netns, "error", err)
			return Response{Error: err.Error()}
		}
		s.log.Info("CNI add handled", "pod", pod, "enrolled", enrolled)
		return Response{Enrolled: enrolled}
	case OpDel:
		if err := s.handler.Unenroll(ctx, req); err != nil {
			s.log.Error("unenrollment failed", "pod", pod, "error", err)
			return Response{Error: err.Error()}
		}
		return Response{}
	default:
		enrolled, err := s.handler.Enrolled(ctx, req)
		if err != nil {
			return Response{Error: err.Error()}
		}
		return Response{Enrolled: enrolled}
	}
}
