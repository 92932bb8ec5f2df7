package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestConnect_Loopback_Echo(t *testing.T) {
	ca := newTestCA(t)
	app := mustListen(t, "127.0.0.1:0")
	startEcho(t, app)
	hb := mustListen(t, "127.0.0.1:0")
	hboneServer(t, ca, hb, InboundConfig{})
	pool := newTestPool(t, ca, ClientConfig{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: apOf(hb)}
	s, err := pool.Connect(ctx, key, &ConnectRequest{Authority: apOf(app).String()})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	msg := make([]byte, 3<<20)
	_, _ = rand.Read(msg)
	go func() {
		_, _ = s.Write(msg)
		_ = s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %d bytes, want the %d sent", len(got), len(msg))
	}
	s.Close()
}

func TestPool_EvictsIdleConnections(t *testing.T) {
	ca := newTestCA(t)
	app := mustListen(t, "127.0.0.1:0")
	startEcho(t, app)
	hb := mustListen(t, "127.0.0.1:0")
	hboneServer(t, ca, hb, InboundConfig{})
	pool := newTestPool(t, ca, ClientConfig{IdleTimeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: apOf(hb)}
	s, err := pool.Connect(ctx, key, &ConnectRequest{Authority: apOf(app).String()})
	if err != nil {
		t.Fatal(err)
	}
	pool.evict(time.Now().Add(2 * time.Hour))
	if pool.Len() != 1 {
		t.Fatalf("pool evicted a connection with an open stream: Len = %d", pool.Len())
	}
	_ = s.CloseWrite()
	_, _ = io.ReadAll(s)
	s.Close()
	pool.evict(time.Now().Add(2 * time.Hour))
	if pool.Len() != 0 {
		t.Fatalf("idle connection kept past IdleTimeout: Len = %d", pool.Len())
	}
}

func TestKeepalive_ClosesSilentPeer(t *testing.T) {
	oldInterval, oldTimeout := pingInterval.Load(), pingTimeout.Load()
	pingInterval.Store(int64(100 * time.Millisecond))
	pingTimeout.Store(int64(300 * time.Millisecond))
	t.Cleanup(func() {
		pingInterval.Store(oldInterval)
		pingTimeout.Store(oldTimeout)
	})

	ca := newTestCA(t)
	srvConf, _ := ca.serverTLS(t, idServer)()
	srvConf = srvConf.Clone()
	srvConf.NextProtos = []string{"h2"}
	ln := mustListen(t, "127.0.0.1:0")
	go func() {
		// A peer that completes TLS and then never sends a frame.
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, tls.Server(c, srvConf))
			}()
		}
	}()
	pool := newTestPool(t, ca, ClientConfig{})
	c, err := pool.conn(context.Background(), PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: apOf(ln)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
		if !strings.Contains(c.closeErr.Error(), "keepalive") {
			t.Fatalf("connection closed with %v, want the keepalive error", c.closeErr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("connection to a silent peer still open after 5s")
	}
}

// TestPoolNoRetryAfterCertRejected connects to a server that rejects the
// client's certificate after the TLS 1.3 handshake has completed on the
// client side. The pool must report the failure after one connection: a
// new connection would be rejected the same way.
//
// NOTE: loopback timing rarely lets the rejection close the connection
// before the first stream opens, the case that used to be retried. The
// compat end-to-end test met it under load; this test does not force it.
func TestPoolNoRetryAfterCertRejected(t *testing.T) {
	ca := newTestCA(t)
	hb := mustListen(t, "127.0.0.1:0")
	serverTLS := ca.serverTLS(t, idServer)
	rejecting := func() (*tls.Config, error) {
		conf, err := serverTLS()
		if err != nil {
			return nil, err
		}
		conf = conf.Clone()
		conf.VerifyConnection = func(tls.ConnectionState) error { return errors.New("client certificate rejected by the test") }
		return conf, nil
	}
	hboneServer(t, ca, hb, InboundConfig{TLSConfig: rejecting})
	var dials atomic.Int32
	pool := newTestPool(t, ca, ClientConfig{Dial: func(ctx context.Context, key PoolKey) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, "tcp", key.Addr.String())
	}})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := PoolKey{SrcIdentity: idClient, DstIdentity: idServer, Addr: apOf(hb)}
	_, err := pool.Connect(ctx, key, &ConnectRequest{Authority: "127.0.0.1:9"})
	if err == nil {
		t.Fatal("Connect succeeded although the server rejects the client's certificate")
	}
	if errors.Is(err, ErrRefused) {
		t.Errorf("Connect error %v reads as a refusal to retry", err)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("the pool dialed %d connections, want 1", n)
	}
}
