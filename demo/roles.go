package demo

import (
	"crypto/tls"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth"
)

// The demo binary re-executes itself inside pods to play these roles,
// chosen by EnvRole.
const (
	EnvRole   = "MAZU_DEMO_ROLE"
	envTarget = "MAZU_DEMO_TARGET"
	envCount  = "MAZU_DEMO_COUNT"
	envCert   = "MAZU_DEMO_CERT"
	envKey    = "MAZU_DEMO_KEY"
	// envStaple is a stapled proof in standard base64.
	envStaple = "MAZU_DEMO_STAPLE"
)

// clientReport is the http-client role's output.
type clientReport struct {
	OK        int       `json:"ok"`
	Errors    []string  `json:"errors"`
	Body      string    `json:"body"`
	Latencies []float64 `json:"latencies_ms"`
}

// probeReport is the tls-probe role's output.
type probeReport struct {
	Connected bool   `json:"connected"`
	Error     string `json:"error"`
}

// harvestReport is the tls-harvest role's output: what a workload's HBONE
// port shows any client that connects.
type harvestReport struct {
	// Token is the pod-bound token in the server's certificate.
	Token string `json:"token"`
	// Staple is the stapled proof the server sent with it.
	Staple []byte `json:"staple"`
}

// RunRole runs the role named by EnvRole, if any, and returns the process
// exit code; ok is false when the process has no role.
func RunRole() (code int, ok bool) {
	role := os.Getenv(EnvRole)
	if role == "" {
		return 0, false
	}
	var err error
	switch role {
	case "http-server":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s", os.Getenv("POD_NAME"))
		})
		srv := &http.Server{Addr: os.Getenv(envTarget), ReadHeaderTimeout: 5 * time.Second}
		err = srv.ListenAndServe()
	case "http-client":
		err = httpClient(os.Stdout)
	case "tls-probe":
		err = tlsProbe(os.Stdout)
	case "tls-harvest":
		err = tlsHarvest(os.Stdout)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mazu-demo %s: %v\n", role, err)
		return 1, true
	}
	return 0, true
}

// httpClient sends the requests one after the other, each on a new
// connection that eBPF captures, and records each one's latency. The loop is bounded in count
// and in time.
func httpClient(out io.Writer) error {
	n, err := strconv.Atoi(os.Getenv(envCount))
	if err != nil || n < 1 || n > 100000 {
		return fmt.Errorf("%s=%q: want a request count from 1 to 100000", envCount, os.Getenv(envCount))
	}
	target := os.Getenv(envTarget)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(90 * time.Second)
	var r clientReport
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		start := time.Now()
		resp, err := client.Get(target)
		if err != nil {
			r.Errors = append(r.Errors, err.Error())
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		elapsed := time.Since(start)
		if err != nil || resp.StatusCode != http.StatusOK {
			r.Errors = append(r.Errors, fmt.Sprintf("%s %v", resp.Status, err))
			continue
		}
		r.OK++
		r.Body = string(body)
		r.Latencies = append(r.Latencies, float64(elapsed.Microseconds())/1000)
	}
	return json.NewEncoder(out).Encode(r)
}

// tlsProbe connects to an HBONE port with the given certificate and key,
// as an attacker would, and reports whether the server let the connection
// through. In TLS 1.3 the server judges the client certificate after the
// client's handshake returns, so the probe also waits for the server's
// first reply or its alert.
func tlsProbe(out io.Writer) error {
	cert, err := tls.LoadX509KeyPair(os.Getenv(envCert), os.Getenv(envKey))
	if err != nil {
		return fmt.Errorf("load the attacker's certificate: %w", err)
	}
	if s := os.Getenv(envStaple); s != "" {
		staple, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("decode %s: %w", envStaple, err)
		}
		cert.SignedCertificateTimestamps = [][]byte{staple}
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		// The attacker does not care who the server is.
		InsecureSkipVerify: true,
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", os.Getenv(envTarget), cfg)
	var r probeReport
	if err == nil {
		// Send an HTTP/2 client preface. A server that accepted the
		// certificate replies with its SETTINGS frame.
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
		if err == nil {
			buf := make([]byte, 9)
			_, err = io.ReadFull(conn, buf)
		}
		conn.Close()
	}
	if err == nil {
		r.Connected = true
	} else {
		r.Error = err.Error()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.Error = "timeout: " + r.Error
		}
	}
	return json.NewEncoder(out).Encode(r)
}

// tlsHarvest starts a handshake with a workload's HBONE port and records
// the token and stapled proof in the certificate that the workload's agent
// presents. It sends no certificate of its own, so the server rejects the
// connection after it has shown its certificate.
func tlsHarvest(out io.Writer) error {
	var state tls.ConnectionState
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{rbeauth.ALPNRBE},
		// The harvester records any certificate, signed by anyone.
		InsecureSkipVerify: true,
		VerifyConnection: func(s tls.ConnectionState) error {
			state = s
			return nil
		},
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", os.Getenv(envTarget), cfg)
	if err == nil {
		conn.Close()
	}
	if len(state.PeerCertificates) == 0 {
		return fmt.Errorf("harvest a certificate from %s: none received: %v", os.Getenv(envTarget), err)
	}
	if len(state.SignedCertificateTimestamps) != 1 {
		return fmt.Errorf("harvest from %s: %d stapled proofs, want 1", os.Getenv(envTarget), len(state.SignedCertificateTimestamps))
	}
	r := harvestReport{Staple: state.SignedCertificateTimestamps[0]}
	for _, ext := range state.PeerCertificates[0].Extensions {
		if ext.Id.Equal(rbeauth.OIDTokenExtension) {
			if _, err := asn1.UnmarshalWithParams(ext.Value, &r.Token, "utf8"); err != nil {
				return fmt.Errorf("harvest from %s: read the token extension: %w", os.Getenv(envTarget), err)
			}
		}
	}
	if r.Token == "" {
		return fmt.Errorf("harvest from %s: the certificate has no token extension", os.Getenv(envTarget))
	}
	return json.NewEncoder(out).Encode(r)
}
