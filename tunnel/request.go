package tunnel

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Identity is a SPIFFE identity in ztunnel's form,
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
type Identity string

// Header names of the HBONE CONNECT request, as ztunnel sends them.
const (
	headerForwarded   = "forwarded"
	headerBaggage     = "baggage"
	headerTraceparent = "traceparent"
)

// ConnectRequest is what an HBONE client sends in its CONNECT request.
type ConnectRequest struct {
	// Authority is the HBONE target, ip:port or [v6]:port. It becomes :authority.
	Authority string
	// Forwarded is the original client address for the Forwarded header's for= parameter.
	// The header is left out when Forwarded is not valid.
	Forwarded netip.AddrPort
	// Baggage is the W3C baggage value describing the source workload (see Workload.Baggage).
	Baggage string
	// TraceParent is the W3C traceparent value. NewTraceParent makes a random one when empty.
	TraceParent string
}

// Request is a validated inbound CONNECT request.
type Request struct {
	// Authority is the :authority value as received.
	Authority string
	// Target is Authority parsed as an IP address and port. It is invalid when the
	// authority names a host rather than an IP (double HBONE through a gateway).
	Target netip.AddrPort
	// Host and Port are the authority split in two; Host is set for both forms.
	Host string
	Port uint16
	// ForwardedFor is the for= address of the Forwarded header, when present and valid.
	ForwardedFor netip.AddrPort
	// ForwardedHost is the host= parameter of the Forwarded header.
	ForwardedHost string
	// Baggage and TraceParent are the raw header values.
	Baggage     string
	TraceParent string
}

// Reasons a CONNECT request is refused; they map to ztunnel's status codes and
// form the bounded reason label of the rejection log line.
var (
	errNotConnect       = errors.New("method is not CONNECT")
	errMissingAuthority = errors.New("missing :authority")
	errBadAuthority     = errors.New("invalid :authority, want ip:port or host:port")
	errPathOrScheme     = errors.New("CONNECT must not carry :path or :scheme")
	errHeadersTooLarge  = errors.New("request headers too large")
)

// parseRequest validates the header block of an inbound CONNECT request
// (RFC 9113 section 8.5). It never panics on peer input.
func parseRequest(mh *http2.MetaHeadersFrame) (*Request, error) {
	if mh.Truncated || headerListSize(mh) > serverMaxHeaders {
		return nil, errHeadersTooLarge
	}
	if mh.PseudoValue("method") != "CONNECT" {
		return nil, errNotConnect
	}
	if mh.PseudoValue("path") != "" || mh.PseudoValue("scheme") != "" || mh.PseudoValue("protocol") != "" {
		return nil, errPathOrScheme
	}
	authority := mh.PseudoValue("authority")
	if authority == "" {
		return nil, errMissingAuthority
	}
	host, port, err := parseAuthority(authority)
	if err != nil {
		return nil, err
	}
	r := &Request{Authority: authority, Host: host, Port: port}
	if ip, err := netip.ParseAddr(host); err == nil {
		r.Target = netip.AddrPortFrom(ip.Unmap(), port)
	}
	for _, hf := range mh.RegularFields() {
		switch hf.Name {
		case headerForwarded:
			r.ForwardedFor, r.ForwardedHost = parseForwarded(hf.Value)
		case headerBaggage:
			r.Baggage = hf.Value
		case headerTraceparent:
			r.TraceParent = hf.Value
		}
	}
	return r, nil
}

// headerListSize is the size of a header list as RFC 9113 section 6.5.2
// defines it: name and value lengths plus 32 octets per field.
func headerListSize(mh *http2.MetaHeadersFrame) int {
	n := 0
	for _, f := range mh.Fields {
		n += len(f.Name) + len(f.Value) + 32
	}
	return n
}

// parseAuthority splits an authority of the form ip:port, [v6]:port or
// host:port. The port must be a decimal number from 1 to 65535.
func parseAuthority(a string) (host string, port uint16, err error) {
	i := strings.LastIndexByte(a, ':')
	if i <= 0 || i == len(a)-1 {
		return "", 0, errBadAuthority
	}
	host, ps := a[:i], a[i+1:]
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return "", 0, errBadAuthority
		}
		ip, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", 0, errBadAuthority
		}
		host = ip.String()
	} else if strings.ContainsAny(host, ":[]") || !validHostname(host) {
		return "", 0, errBadAuthority
	}
	for _, c := range ps {
		if c < '0' || c > '9' {
			return "", 0, errBadAuthority
		}
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return "", 0, errBadAuthority
	}
	return host, uint16(p), nil
}

// validHostname reports whether h is an IPv4 address or a DNS name made of
// letters, digits, hyphens, dots and underscores.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// parseForwarded reads the first element of a Forwarded header (RFC 7239) and
// returns its for= address, when it is an IP and port, and its host= value.
func parseForwarded(v string) (forAddr netip.AddrPort, host string) {
	elem, _, _ := strings.Cut(v, ",")
	for _, pair := range strings.Split(elem, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			continue
		}
		val = strings.Trim(val, `"`)
		switch strings.ToLower(k) {
		case "for":
			if ap, err := netip.ParseAddrPort(val); err == nil {
				forAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			}
		case "host":
			host = val
		}
	}
	return forAddr, host
}

// formatForwarded renders the Forwarded value ztunnel sends: for="<ip:port>".
func formatForwarded(ap netip.AddrPort) string {
	return `for="` + ap.String() + `"`
}

// NewTraceParent returns a random W3C traceparent, 00-<trace id>-<parent id>-00,
// as ztunnel sends one per connection.
func NewTraceParent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
}

// encodeRequest appends the HPACK header block of r to the encoder's buffer.
func encodeRequest(enc *hpack.Encoder, r *ConnectRequest) error {
	if _, _, err := parseAuthority(r.Authority); err != nil {
		return fmt.Errorf("encode CONNECT to %q: %w", r.Authority, err)
	}
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":authority", Value: r.Authority},
	}
	if r.Forwarded.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: headerForwarded, Value: formatForwarded(r.Forwarded)})
	}
	if r.Baggage != "" {
		fields = append(fields, hpack.HeaderField{Name: headerBaggage, Value: r.Baggage})
	}
	tp := r.TraceParent
	if tp == "" {
		tp = NewTraceParent()
	}
	fields = append(fields, hpack.HeaderField{Name: headerTraceparent, Value: tp})
	for _, f := range fields {
		if err := enc.WriteField(f); err != nil {
			return fmt.Errorf("encode header %s: %w", f.Name, err)
		}
	}
	return nil
}
