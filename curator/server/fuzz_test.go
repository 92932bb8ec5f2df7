package server_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// FuzzAPIDecoders sends arbitrary bodies to every JSON endpoint: none may
// panic or return 5xx for a malformed body.
func FuzzAPIDecoders(f *testing.F) {
	is := newFuzzEnv(f)
	h := is.c.Log.Handler()
	f.Add(0, []byte(`{"token":"a.b.c","block":0,"slot":1,"tls_key":"AA==","pod_ip":"10.0.0.1"}`))
	f.Add(1, []byte(`{"since":0,"ids":["00"]}`))
	f.Add(2, []byte(`{"id":"00","prev_index":1}`))
	paths := []string{"/v1/register", "/v1/updates", "/v1/rotate", "/v1/revoke", "/v1/reserve"}
	f.Fuzz(func(t *testing.T, which int, body []byte) {
		p := paths[uint(which)%uint(len(paths))]
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, p, bytes.NewReader(body)))
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("POST %s %q = %d %s", p, body, rec.Code, rec.Body)
		}
	})
}

// FuzzParseWitnessSize feeds arbitrary 409 bodies to the curator's parser:
// what it accepts is a non-negative size written in canonical decimal.
func FuzzParseWitnessSize(f *testing.F) {
	f.Add([]byte("42\n"))
	f.Add([]byte("0"))
	f.Add([]byte("-1\n"))
	f.Add([]byte("+7\n"))
	f.Add([]byte("9223372036854775808\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := server.ParseWitnessSize(body)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseWitnessSize(%q) = %d, want a non-negative size", body, n)
		}
		if got := strconv.FormatInt(n, 10); got != strings.TrimSpace(string(body)) {
			t.Fatalf("ParseWitnessSize(%q) = %d, accepted a non-canonical number", body, n)
		}
	})
}

// FuzzCeremonyBody posts arbitrary bodies, with a valid contributor token,
// to /v1/ceremony of a curator that takes its CRS from the log. None may
// panic or return a 5xx status other than 503.
func FuzzCeremonyBody(f *testing.F) {
	is := curatortest.NewIssuer(f)
	c := curatortest.Start(f, curatortest.Options{Scheme: rbescheme.NewFollower(), Reviewer: is, JWKS: is.JWKS()})
	ip := netip.MustParseAddr("10.0.0.9")
	token := is.Token(is.AddPod("default", "contributor", ip), curator.DefaultAudience, time.Now(), time.Hour)

	start, err := rbe.NewCeremony(2)
	if err != nil {
		f.Fatal(err)
	}
	crs, proof, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	valid, err := rbescheme.EncodeContribution(rbe.Contribution{CRS: crs, Proof: proof})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add([]byte{0xff, 0xff, 0xff, 0xfb, 0})
	f.Add([]byte{})

	h := c.Log.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/ceremony", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("POST /v1/ceremony %x = %d %s", body, rec.Code, rec.Body)
		}
	})
}

// FuzzTokenSignaturesQuery sends arbitrary queries to
// /v1/token-signatures, with either an arbitrary Mazu-Witness-Auth header
// or a valid one for the range the query names. None may panic or return
// a 5xx status, and a 200 reply holds one length-prefixed signature per
// entry of a range of at most 65,536 entries.
func FuzzTokenSignaturesQuery(f *testing.F) {
	is := curatortest.NewIssuer(f)
	c := curatortest.Start(f, curatortest.Options{Witnesses: 1, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	f.Add("start=0&end=1", true, "")
	f.Add("start=0&end=65537", true, "")
	f.Add("start=5&end=3", true, "")
	f.Add("start=-1&end=0", true, "")
	f.Add("start=%2B0&end=2", true, "")
	f.Add("start=0&end=1", false, "1700000000 AAAA")
	f.Add("start=9223372036854775807&end=9223372036854775807", true, "")
	h := c.Log.Handler()
	f.Fuzz(func(t *testing.T, query string, sign bool, header string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		req := httptest.NewRequest(http.MethodGet, "/v1/token-signatures", nil)
		req.URL.RawQuery = query
		start, err1 := strconv.ParseInt(q.Get("start"), 10, 64)
		end, err2 := strconv.ParseInt(q.Get("end"), 10, 64)
		if sign && err1 == nil && err2 == nil {
			header = curator.TokenSignatureAuth(c.WitnessKeys[0], start, end, time.Now())
		}
		req.Header.Set("Mazu-Witness-Auth", header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("GET /v1/token-signatures?%s = %d %s", query, rec.Code, rec.Body)
		}
		if rec.Code != http.StatusOK {
			return
		}
		if err1 != nil || err2 != nil || start < 0 || end < start || end-start > 1<<16 {
			t.Fatalf("GET /v1/token-signatures?%s = 200, want a rejection of the range", query)
		}
		body := rec.Body.Bytes()
		for i := start; i < end; i++ {
			if len(body) < 2 || len(body) < 2+int(binary.BigEndian.Uint16(body)) {
				t.Fatalf("reply for [%d, %d) ends at entry %d", start, end, i)
			}
			body = body[2+int(binary.BigEndian.Uint16(body)):]
		}
		if len(body) != 0 {
			t.Fatalf("reply for [%d, %d) has %d bytes after the last entry", start, end, len(body))
		}
	})
}
