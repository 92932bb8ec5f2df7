package perf

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/fnet"
)

// Server ports inside the server pods.
const (
	portHTTP = 8080 // Fortio HTTP echo (POST body echoed back)
	portEcho = 8078 // Fortio TCP echo
	portSink = 8077 // discards a stream, then writes its byte count
)

// ServerConfig configures the server pod process.
type ServerConfig struct {
	Addr string `json:"addr"` // the pod's IP
}

func runServer(ctx context.Context, cfg *ServerConfig) error {
	if cfg == nil || cfg.Addr == "" {
		return fmt.Errorf("server configuration: no address given")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", fhttp.EchoHandler)
	hln, err := net.Listen("tcp", net.JoinHostPort(cfg.Addr, fmt.Sprint(portHTTP)))
	if err != nil {
		return fmt.Errorf("listen http echo: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(hln) }()
	defer hs.Close()
	if fnet.TCPEchoServer("perf-echo", net.JoinHostPort(cfg.Addr, fmt.Sprint(portEcho))) == nil {
		return fmt.Errorf("listen tcp echo on %s:%d failed", cfg.Addr, portEcho)
	}
	sln, err := net.Listen("tcp", net.JoinHostPort(cfg.Addr, fmt.Sprint(portSink)))
	if err != nil {
		return fmt.Errorf("listen sink: %w", err)
	}
	defer sln.Close()
	go acceptLoop(sln, sink)
	ready()
	<-ctx.Done()
	return nil
}

// sink reads until EOF, then writes the byte count as 8 bytes big endian.
func sink(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	_, _ = c.Write(b[:])
}
