// Package tunnel is the HBONE data plane of mazu-ztunnel: HTTP/2 CONNECT
// over mutual TLS 1.3 on port 15008, wire-compatible with Istio's ztunnel.
//
// # Parts
//
//   - Pool opens HBONE connections and multiplexes CONNECT streams over
//     them, keyed like ztunnel's pool by source identity, destination
//     identity, destination address and source IP (PoolKey). A connection
//     takes at most min(ClientConfig.MaxStreams, the peer's
//     SETTINGS_MAX_CONCURRENT_STREAMS) streams, is never reused after a
//     GOAWAY, and is closed after ClientConfig.IdleTimeout without streams.
//   - Outbound proxies connections captured from local workloads. Its
//     Resolver chooses HBONE to a mesh peer or plain TCP passthrough, or
//     rejects the connection with ErrRouteRejected, which resets it.
//   - Server terminates HBONE (port 15008). It responds with 200 only after the
//     Authorizer allowed the request and the connection to the application
//     succeeded; otherwise 400 (not CONNECT, invalid :authority, target IP
//     other than the local address), 401 (denied), 431 (header list above
//     64 KiB) or 503 (upstream connect failed), as ztunnel does.
//   - Plaintext is the inbound proxy for clients outside the mesh (port
//     15006), subject to the same Authorizer.
//   - Listen, ListenIn and DialIn open sockets with ztunnel's settings,
//     optionally inside a pod's network namespace.
//
// TLS configuration comes from the caller (ClientConfig.TLSConfig,
// InboundConfig.TLSConfig); the package forces TLS 1.3 and an HTTP/2 ALPN
// value (h2, or ALPNMazuRBE between mazu peers) and reads peer identities
// from URI SANs.
//
// # Wire behaviour
//
// The CONNECT request carries :authority ip:port, forwarded for="<client>",
// baggage and a random traceparent. HTTP/2 settings follow ztunnel: 4 MiB
// stream window, 16 MiB connection window, 1 MiB frames, a PING after 10s
// without frames and a close when none is answered within 20s. Sockets get
// TCP_NODELAY and TCP keepalive (180s idle, 180s interval, 9 probes).
//
// Byte copying keeps both directions independent: a TCP FIN becomes
// END_STREAM and END_STREAM becomes a FIN (shutdown of the write side). A TCP
// reset becomes RST_STREAM CONNECT_ERROR, and a RST_STREAM other than
// NO_ERROR becomes a TCP reset (SO_LINGER 0). ztunnel turns resets into
// plain closes; this package follows RFC 9113 section 8.5 instead.
//
// Shutdown on Server, Outbound and Plaintext closes the listeners, sends
// GOAWAY on HBONE connections, lets open streams finish until the context
// ends and then closes them. Listeners set SO_REUSEPORT so that a new process
// can bind the same ports before the old one drains, and turn MPTCP off
// because sockmap-based redirection accepts only plain TCP sockets.
//
// # Telemetry
//
// NewMetrics registers istio_tcp_connections_opened_total,
// istio_tcp_connections_closed_total, istio_tcp_received_bytes_total and
// istio_tcp_sent_bytes_total with ztunnel's label set on a caller's
// registry. received counts bytes from the source toward the destination,
// sent the reverse. Access logs go to the injected slog.Logger, one line per
// connection, with ztunnel's field names (src.addr, src.workload,
// src.namespace, src.identity, dst.addr, dst.hbone_addr, dst.service,
// dst.workload, dst.namespace, dst.identity, direction, bytes_sent,
// bytes_recv, duration, error).
//
// # Implementation note
//
// Frames and HPACK come from golang.org/x/net/http2; the connection and
// stream state machine is this package's own (h2conn.go, stream.go). See the
// comment at the top of h2conn.go for why x/net's Server and Transport are
// not used on the data path.
//
// # References
//
//   - RFC 9113 (HTTP/2), section 8.5 (CONNECT) and section 6.9 (flow control)
//   - RFC 7239 (Forwarded), W3C Trace Context, W3C Baggage
package tunnel
