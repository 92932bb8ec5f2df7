package server_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
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
