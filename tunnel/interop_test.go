package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// These tests check the wire protocol against an independent HTTP/2
// implementation, golang.org/x/net/http2's Transport and Server.

func TestInterop_XNetClientToServer(t *testing.T) {
	ca := newTestCA(t)
	app := mustListen(t, "127.0.0.1:0")
	startEcho(t, app)
	hb := mustListen(t, "127.0.0.1:0")
	hboneServer(t, ca, hb, InboundConfig{})

	conf, _ := ca.clientTLS(t)(PoolKey{SrcIdentity: idClient, DstIdentity: idServer})
	conf.NextProtos = []string{"h2"}
	tr := &http2.Transport{DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
		return (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", hb.Addr().String())
	}}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	target := apOf(app).String()
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Scheme: "https", Host: target}, Host: target, Header: http.Header{}, Body: pr}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	msg := bytes.Repeat([]byte("interop "), 100000)
	go func() {
		_, _ = pw.Write(msg)
		_ = pw.Close()
	}()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through x/net client: %d bytes, %v; want %d bytes", len(got), err, len(msg))
	}
}

type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	f.w.(http.Flusher).Flush()
	return n, err
}

func TestInterop_PoolToXNetServer(t *testing.T) {
	ca := newTestCA(t)
	srvConf, _ := ca.serverTLS(t, idServer)()
	srvConf = srvConf.Clone()
	srvConf.NextProtos = []string{"h2"}
	ln := mustListen(t, "127.0.0.1:0")
	authority := make(chan string, 1)
	h2s := &http2.Server{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, srvConf)
				if tc.Handshake() != nil {
					return
				}
				h2s.ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					authority <- r.Host
					if r.Method != http.MethodConnect {
						w.WriteHeader(400)
						return
					}
					w.WriteHeader(200)
					w.(http.Flusher).Flush()
					_, _ = io.Copy(flushWriter{w}, r.Body)
				})})
			}()
		}
	}()
	pool := newTestPool(t, ca, ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := pool.Connect(ctx, PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: apOf(ln)},
		&ConnectRequest{Authority: "10.1.2.3:8080"})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer s.Close()
	if got := <-authority; got != "10.1.2.3:8080" {
		t.Fatalf("x/net server saw authority %q", got)
	}
	msg := bytes.Repeat([]byte("pool "), 200000)
	go func() {
		_, _ = s.Write(msg)
		_ = s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through x/net server: %d bytes, %v; want %d bytes", len(got), err, len(msg))
	}
}
