package server

import "github.com/prometheus/client_golang/prometheus"

// metrics are the curator's Prometheus metrics.
type metrics struct {
	requests     *prometheus.CounterVec
	batchSize    prometheus.Histogram
	appendTime   prometheus.Histogram
	logSize      prometheus.Gauge
	cosignatures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mazu_curator_requests_total",
			Help: "Key-entry requests by kind and result (ok, invalid, unauthorized, conflict, error).",
		}, []string{"kind", "result"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mazu_curator_batch_entries",
			Help:    "Key entries per appended batch, state entry excluded.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		appendTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mazu_curator_append_seconds",
			Help:    "Time to append and fsync one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		logSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mazu_curator_log_entries",
			Help: "Entries in the log.",
		}),
		cosignatures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mazu_curator_cosignature_requests_total",
			Help: "Cosignature requests to witnesses by result (ok, conflict, rejected, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.batchSize, m.appendTime, m.logSize, m.cosignatures)
	}
	return m
}
