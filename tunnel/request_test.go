package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawConnect sends one request with exactly the given header fields over a
// fresh HBONE connection and returns the response status, or 0 when the
// stream was reset instead.
func rawConnect(t *testing.T, ca *testCA, addr netip.AddrPort, fields []hpack.HeaderField) int {
	t.Helper()
	conf, _ := ca.clientTLS(t)(PoolKey{SrcIdentity: idClient, DstIdentity: idServer})
	conf.NextProtos = []string{"h2"}
	conf.MinVersion = tls.VersionTLS13
	tc, err := tls.Dial("tcp", addr.String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	_ = fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		_ = enc.WriteField(f)
	}
	// Split the block so that oversized header lists need CONTINUATION frames.
	b := block.Bytes()
	first := b[:min(len(b), 16000)]
	rest := b[len(first):]
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(rest) == 0})
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), 16000)]
		rest = rest[len(chunk):]
		_ = fr.WriteContinuation(1, len(rest) == 0, chunk)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				st := f.PseudoValue("status")
				n := 0
				for _, c := range st {
					n = n*10 + int(c-'0')
				}
				return n
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return 0
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		}
	}
}

func TestServer_BadConnect(t *testing.T) {
	ca := newTestCA(t)
	app := mustListen(t, "127.0.0.1:0")
	startEcho(t, app)
	hb := mustListen(t, "127.0.0.1:0")
	var logs syncBuffer
	hboneServer(t, ca, hb, InboundConfig{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	target := apOf(app).String()
	hf := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		fields []hpack.HeaderField
		want   int
		reason string
	}{
		{"valid CONNECT is answered 200", hf(":method", "CONNECT", ":authority", target), 200, ""},
		{"missing authority is rejected", hf(":method", "CONNECT"), 400, "missing_authority"},
		{"port out of range is rejected", hf(":method", "CONNECT", ":authority", "127.0.0.1:70000"), 400, "bad_authority"},
		{"port zero is rejected", hf(":method", "CONNECT", ":authority", "127.0.0.1:0"), 400, "bad_authority"},
		{"non-numeric port is rejected", hf(":method", "CONNECT", ":authority", "127.0.0.1:http"), 400, "bad_authority"},
		{"authority without port is rejected", hf(":method", "CONNECT", ":authority", "127.0.0.1"), 400, "bad_authority"},
		{"GET is rejected", hf(":method", "GET", ":scheme", "https", ":path", "/", ":authority", target), 400, "not_connect"},
		{"CONNECT with a path is rejected", hf(":method", "CONNECT", ":path", "/", ":authority", target), 400, "path_or_scheme"},
		{"host-name authority is rejected on a workload", hf(":method", "CONNECT", ":authority", "svc.ns.svc.cluster.local:80"), 400, "bad_authority"},
		{"proxy port target is rejected", hf(":method", "CONNECT", ":authority", "127.0.0.1:15008"), 400, "self_call"},
		{"foreign IP is rejected", hf(":method", "CONNECT", ":authority", "127.0.0.2:80"), 400, "ip_mismatch"},
		{"one oversized header value is rejected", hf(":method", "CONNECT", ":authority", target, "x-big", strings.Repeat("a", 70<<10)), 431, "headers_too_large"},
		{"oversized headers are rejected", hf(":method", "CONNECT", ":authority", target,
			"x-a", strings.Repeat("a", 15<<10), "x-b", strings.Repeat("b", 15<<10), "x-c", strings.Repeat("c", 15<<10),
			"x-d", strings.Repeat("d", 15<<10), "x-e", strings.Repeat("e", 15<<10)), 431, "headers_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawConnect(t, ca, apOf(hb), tc.fields); got != tc.want {
				t.Fatalf("status = %d, want %d", got, tc.want)
			}
			if tc.reason != "" {
				waitFor(t, func() bool { return strings.Contains(logs.String(), `"reason":"`+tc.reason+`"`) })
			}
		})
	}
}

func TestParseAuthority(t *testing.T) {
	for _, tc := range []struct {
		in       string
		wantHost string
		wantPort uint16
		wantErr  bool
	}{
		{"10.0.0.1:80", "10.0.0.1", 80, false},
		{"[fd00::1]:8080", "fd00::1", 8080, false},
		{"svc.ns.svc.cluster.local:443", "svc.ns.svc.cluster.local", 443, false},
		{"10.0.0.1", "", 0, true},
		{"10.0.0.1:", "", 0, true},
		{":80", "", 0, true},
		{"fd00::1:80", "", 0, true},
		{"[fd00::1%eth0]:80", "", 0, true},
		{"[10.0.0.1]:80", "", 0, true},
		{"10.0.0.1:65536", "", 0, true},
		{"10.0.0.1:+80", "", 0, true},
		{"a b:80", "", 0, true},
	} {
		host, port, err := parseAuthority(tc.in)
		if (err != nil) != tc.wantErr || host != tc.wantHost || port != tc.wantPort {
			t.Errorf("parseAuthority(%q) = %q, %d, %v; want %q, %d, error %v", tc.in, host, port, err, tc.wantHost, tc.wantPort, tc.wantErr)
		}
	}
}

func TestParseForwarded(t *testing.T) {
	for _, tc := range []struct {
		in       string
		wantFor  string
		wantHost string
	}{
		{`for="10.0.0.1:4000"`, "10.0.0.1:4000", ""},
		{`for="[fd00::1]:4000";host=svc.ns.svc.cluster.local`, "[fd00::1]:4000", "svc.ns.svc.cluster.local"},
		{`for=unknown`, "invalid AddrPort", ""},
		{`host=a, for="10.0.0.2:1"`, "invalid AddrPort", "a"},
	} {
		f, h := parseForwarded(tc.in)
		if f.String() != tc.wantFor || h != tc.wantHost {
			t.Errorf("parseForwarded(%q) = %s, %q; want %s, %q", tc.in, f, h, tc.wantFor, tc.wantHost)
		}
	}
}

func TestEncodeRequest_Headers(t *testing.T) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	src := netip.MustParseAddrPort("10.0.0.1:4000")
	w := Workload{Name: "web", Namespace: "shop", Cluster: "c1", CanonicalService: "web", CanonicalRevision: "v1"}
	if err := encodeRequest(enc, &ConnectRequest{Authority: "10.0.0.2:80", Forwarded: src, Baggage: w.Baggage()}); err != nil {
		t.Fatal(err)
	}
	fields, err := hpack.NewDecoder(4096, nil).DecodeFull(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range fields {
		got[f.Name] = f.Value
	}
	want := map[string]string{
		":method":    "CONNECT",
		":authority": "10.0.0.2:80",
		"forwarded":  `for="10.0.0.1:4000"`,
		"baggage":    "k8s.cluster.name=c1,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v1",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("header %s = %q, want %q", k, got[k], v)
		}
	}
	if tp := got["traceparent"]; len(tp) != 55 || !strings.HasPrefix(tp, "00-") || !strings.HasSuffix(tp, "-00") {
		t.Errorf("traceparent = %q, want 00-<32 hex>-<16 hex>-00", tp)
	}
	if err := encodeRequest(enc, &ConnectRequest{Authority: "nope"}); err == nil {
		t.Error("encodeRequest accepted an authority without a port")
	}
}

func TestPlaintext_Policy(t *testing.T) {
	app := mustListen(t, "127.0.0.1:0")
	startEcho(t, app)
	for _, tc := range []struct {
		name  string
		allow bool
	}{
		{"allowed client reaches the app", true},
		{"denied client is closed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seenc := make(chan InboundRequest, 1)
			p := NewPlaintext(InboundConfig{Authorize: func(_ context.Context, r *InboundRequest) error {
				seenc <- *r
				if !tc.allow {
					return errors.New("policy says no")
				}
				return nil
			}})
			ln := mustListen(t, "127.0.0.1:0")
			go func() {
				_ = p.Serve(ln, func(net.Conn) (netip.AddrPort, error) { return apOf(app), nil })
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write([]byte("ping"))
			_ = c.(*net.TCPConn).CloseWrite()
			got, _ := io.ReadAll(c)
			if tc.allow != (string(got) == "ping") {
				t.Fatalf("read %q; allowed=%v", got, tc.allow)
			}
			seen := <-seenc
			if seen.Destination != apOf(app) || !seen.Source.IsValid() {
				t.Fatalf("authorizer saw %+v, want destination %s and a source", seen, apOf(app))
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := p.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown = %v", err)
			}
		})
	}
}

func TestServer_FlowControlViolation(t *testing.T) {
	ca := newTestCA(t)
	// An application that accepts and never reads.
	app := mustListen(t, "127.0.0.1:0")
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	hb := mustListen(t, "127.0.0.1:0")
	hboneServer(t, ca, hb, InboundConfig{})

	conf, _ := ca.clientTLS(t)(PoolKey{SrcIdentity: idClient, DstIdentity: idServer})
	conf.NextProtos = []string{"h2"}
	tc, err := tls.Dial("tcp", hb.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_, _ = tc.Write([]byte(http2.ClientPreface))
	_ = fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	_ = enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = enc.WriteField(hpack.HeaderField{Name: ":authority", Value: apOf(app).String()})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true})

	// Ignore every window and send until the server resets the stream.
	reset := make(chan http2.ErrCode, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				close(reset)
				return
			}
			if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == 1 {
				reset <- rst.ErrCode
				return
			}
		}
	}()
	chunk := make([]byte, 16<<10)
	for sent := 0; sent < 64<<20; sent += len(chunk) {
		select {
		case code, ok := <-reset:
			if !ok || code != http2.ErrCodeFlowControl {
				t.Fatalf("stream ended with %v (open %v), want RST_STREAM FLOW_CONTROL_ERROR", code, ok)
			}
			return
		default:
		}
		if err := fr.WriteData(1, false, chunk); err != nil {
			break
		}
	}
	select {
	case code, ok := <-reset:
		if !ok || code != http2.ErrCodeFlowControl {
			t.Fatalf("stream ended with %v (open %v), want RST_STREAM FLOW_CONTROL_ERROR", code, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server accepted data beyond the stream window without a reset")
	}
}
