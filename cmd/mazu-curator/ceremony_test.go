package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPostContributionErrors checks the advice each curator reply gets.
// The replies copy the messages of curator/server; the kubetest package
// runs the command against the real curator.
func TestPostContributionErrors(t *testing.T) {
	for _, tc := range []struct {
		code int
		body string
		want string
	}{
		{http.StatusForbidden, "unauthorized: not a pod-bound service-account token", "kubectl create token"},
		{http.StatusBadRequest, "bad request: ceremony contribution after the first registration", "too late"},
		{http.StatusBadRequest, "bad request: invalid ceremony contribution: rbe: contribution does not extend the CRS", "run ceremony contribute again"},
		{http.StatusServiceUnavailable, "curator is stopping", "503 Service Unavailable"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/ceremony" || r.Header.Get("Authorization") != "Bearer tok" {
				http.Error(w, "unexpected request "+r.URL.Path, http.StatusTeapot)
				return
			}
			http.Error(w, tc.body, tc.code)
		}))
		_, err := postContribution(t.Context(), srv.URL, "tok", []byte("contribution"))
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.body) {
			t.Errorf("postContribution with reply %d %q = %v, want an error with %q and the reply", tc.code, tc.body, err, tc.want)
		}
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"id":"","index":7}`))
	}))
	defer srv.Close()
	if index, err := postContribution(t.Context(), srv.URL, "tok", []byte("contribution")); err != nil || index != 7 {
		t.Errorf("postContribution with a 200 reply = %d, %v; want index 7", index, err)
	}
}
