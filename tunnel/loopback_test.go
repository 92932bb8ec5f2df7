package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
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
