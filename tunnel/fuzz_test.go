package tunnel

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:443", "svc.ns:80", ":", "[::]:0", "a:65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := parseAuthority(s)
		if err != nil {
			return
		}
		if port == 0 || host == "" {
			t.Fatalf("parseAuthority(%q) = %q, %d without an error", s, host, port)
		}
	})
}

func FuzzParseForwarded(f *testing.F) {
	f.Add(`for="10.0.0.1:4000";host=svc`)
	f.Add(`for="[fd00::1]:1", for=x`)
	f.Fuzz(func(t *testing.T, s string) {
		ap, _ := parseForwarded(s)
		if ap.IsValid() && ap.Addr().Is4In6() {
			t.Fatalf("parseForwarded(%q) kept a v4-mapped address %s", s, ap)
		}
	})
}

// FuzzParseRequest feeds arbitrary HPACK header blocks through the frame
// reader and the CONNECT validation, as the server does.
func FuzzParseRequest(f *testing.F) {
	var seed bytes.Buffer
	enc := hpack.NewEncoder(&seed)
	for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"}, {Name: "forwarded", Value: `for="1.2.3.4:5"`}} {
		_ = enc.WriteField(hf)
	}
	f.Add(seed.Bytes())
	f.Add([]byte{0x82, 0x84})
	f.Fuzz(func(t *testing.T, block []byte) {
		if len(block) > 1<<14 {
			return
		}
		var wire bytes.Buffer
		w := http2.NewFramer(&wire, nil)
		if err := w.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
			return
		}
		r := http2.NewFramer(nil, &wire)
		r.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		r.MaxHeaderListSize = serverMaxHeaders
		fr, err := r.ReadFrame()
		if err != nil {
			return
		}
		req, err := parseRequest(fr.(*http2.MetaHeadersFrame))
		if err != nil {
			return
		}
		if req.Port == 0 || req.Authority == "" {
			t.Fatalf("accepted request without a usable authority: %+v", req)
		}
	})
}
