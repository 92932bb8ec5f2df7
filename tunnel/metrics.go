package tunnel

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Workload describes one end of a connection for metric labels and access
// logs. Empty fields render as "unknown", as in ztunnel.
type Workload struct {
	Name              string // workload name, such as the Deployment name
	Namespace         string
	CanonicalService  string
	CanonicalRevision string
	App               string
	Version           string
	Cluster           string
	Identity          Identity
	// Service fields describe the destination Service; only used for the destination.
	Service          string // fully qualified host name
	ServiceName      string
	ServiceNamespace string
}

// Baggage renders w as the W3C baggage value ztunnel sends in CONNECT
// requests, leaving out empty items.
func (w Workload) Baggage() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("k8s.cluster.name", w.Cluster)
	add("k8s.namespace.name", w.Namespace)
	add("k8s.deployment.name", w.Name)
	add("service.name", w.CanonicalService)
	add("service.version", w.CanonicalRevision)
	return strings.Join(parts, ",")
}

// Metrics holds the istio_tcp_* counters with ztunnel's names and labels.
// Create it with NewMetrics; a nil *Metrics records nothing.
type Metrics struct {
	opened, closed, sent, received *prometheus.CounterVec
}

var metricLabels = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision",
	"source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// NewMetrics creates the counters and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	mk := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, metricLabels)
	}
	m := &Metrics{
		opened:   mk("istio_tcp_connections_opened_total", "The total number of TCP connections opened"),
		closed:   mk("istio_tcp_connections_closed_total", "The total number of TCP connections closed"),
		sent:     mk("istio_tcp_sent_bytes_total", "The size of total bytes sent in response to TCP connections"),
		received: mk("istio_tcp_received_bytes_total", "The size of total bytes received from the source of TCP connections"),
	}
	for _, c := range []prometheus.Collector{m.opened, m.closed, m.sent, m.received} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Response flags, as ztunnel reports them.
const (
	flagNone    = "-"
	flagDeny    = "DENY"
	flagConnect = "CONNECT"
)

// Direction of a connection in access logs.
const (
	dirInbound  = "inbound"
	dirOutbound = "outbound"
)

// connTelemetry records one proxied connection: opened once, bytes as they
// flow, closed and logged once.
type connTelemetry struct {
	m        *Metrics
	log      *slog.Logger
	start    time.Time
	dir      string
	src, dst Workload
	srcAddr  netip.AddrPort
	dstAddr  netip.AddrPort
	hbone    netip.AddrPort
	mtls     bool

	labels   []string
	sent     prometheus.Counter // destination to source
	received prometheus.Counter // source to destination
	nSent    atomic.Int64
	nRecv    atomic.Int64
}

func unknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func newTelemetry(m *Metrics, log *slog.Logger, dir string, src, dst Workload, srcAddr, dstAddr, hbone netip.AddrPort, mtls bool) *connTelemetry {
	t := &connTelemetry{m: m, log: log, start: time.Now(), dir: dir, src: src, dst: dst,
		srcAddr: srcAddr, dstAddr: dstAddr, hbone: hbone, mtls: mtls}
	reporter := "destination"
	if dir == dirOutbound {
		reporter = "source"
	}
	policy := "unknown"
	if mtls {
		policy = "mutual_tls"
	}
	t.labels = []string{
		reporter,
		unknown(src.Name), unknown(src.CanonicalService), unknown(src.CanonicalRevision),
		unknown(src.Namespace), unknown(string(src.Identity)), unknown(src.App), unknown(src.Version), unknown(src.Cluster),
		unknown(dst.Service), unknown(dst.ServiceNamespace), unknown(dst.ServiceName),
		unknown(dst.Name), unknown(dst.CanonicalService), unknown(dst.CanonicalRevision),
		unknown(dst.Namespace), unknown(string(dst.Identity)), unknown(dst.App), unknown(dst.Version),
		unknown(dst.Cluster),
		"tcp", flagNone, policy,
	}
	if m != nil {
		m.opened.WithLabelValues(t.labels...).Inc()
		t.sent = m.sent.WithLabelValues(t.labels...)
		t.received = m.received.WithLabelValues(t.labels...)
	}
	return t
}

// addReceived counts bytes from the source toward the destination.
func (t *connTelemetry) addReceived(n int64) {
	t.nRecv.Add(n)
	if t.received != nil {
		t.received.Add(float64(n))
	}
}

// addSent counts bytes from the destination back to the source.
func (t *connTelemetry) addSent(n int64) {
	t.nSent.Add(n)
	if t.sent != nil {
		t.sent.Add(float64(n))
	}
}

// finish records the close with a response flag and writes the access log.
func (t *connTelemetry) finish(ctx context.Context, flag string, err error) {
	if t.m != nil {
		labels := t.labels
		if flag != flagNone {
			labels = append([]string(nil), t.labels...)
			labels[len(labels)-2] = flag
		}
		t.m.closed.WithLabelValues(labels...).Inc()
	}
	if t.log == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String("src.addr", t.srcAddr.String()),
		slog.String("src.workload", t.src.Name),
		slog.String("src.namespace", t.src.Namespace),
		slog.String("src.identity", string(t.src.Identity)),
		slog.String("dst.addr", t.dstAddr.String()),
		slog.String("dst.service", t.dst.Service),
		slog.String("dst.workload", t.dst.Name),
		slog.String("dst.namespace", t.dst.Namespace),
		slog.String("dst.identity", string(t.dst.Identity)),
		slog.String("direction", t.dir),
		slog.Int64("bytes_sent", t.nSent.Load()),
		slog.Int64("bytes_recv", t.nRecv.Load()),
		slog.Duration("duration", time.Since(t.start)),
	}
	if t.hbone.IsValid() {
		attrs = append(attrs, slog.String("dst.hbone_addr", t.hbone.String()))
	}
	level := slog.LevelInfo
	msg := "connection complete"
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
		msg = "connection failed"
		level = slog.LevelWarn
	}
	t.log.LogAttrs(ctx, level, msg, attrs...)
}
