package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Default addresses of the agent's HTTP endpoints, as ztunnel has them.
const (
	DefaultAdminAddr     = "127.0.0.1:15000"
	DefaultMetricsAddr   = ":15020"
	DefaultReadinessAddr = ":15021"
)

// Endpoints serves readiness, metrics and the admin interface.
type Endpoints struct {
	log     *slog.Logger
	servers []*http.Server
	addrs   []net.Addr
}

// EndpointsConfig configures ServeEndpoints.
type EndpointsConfig struct {
	AdminAddr, MetricsAddr, ReadinessAddr string
	// Ready reports whether the agent is ready, with a reason when not.
	Ready func() (bool, string)
	// ConfigDump returns the admin /config_dump document.
	ConfigDump func() any
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
}

// ServeEndpoints starts the three servers. An empty address skips that
// server.
func ServeEndpoints(cfg EndpointsConfig) (*Endpoints, error) {
	e := &Endpoints{log: cfg.Logger}

	ready := http.NewServeMux()
	ready.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := cfg.Ready(); !ok {
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})

	metrics := http.NewServeMux()
	metrics.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))

	admin := http.NewServeMux()
	admin.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(cfg.ConfigDump()); err != nil {
			e.log.Warn("config_dump not written", "error", err)
		}
	})

	for _, s := range []struct {
		addr    string
		name    string
		handler http.Handler
	}{
		{cfg.ReadinessAddr, "readiness", ready},
		{cfg.MetricsAddr, "metrics", metrics},
		{cfg.AdminAddr, "admin", admin},
	} {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			e.Shutdown(context.Background())
			return nil, fmt.Errorf("listen for %s on %s: %w", s.name, s.addr, err)
		}
		srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
		e.servers = append(e.servers, srv)
		e.addrs = append(e.addrs, ln.Addr())
		go func(name string) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.log.Error("endpoint server stopped", "server", name, "error", err)
			}
		}(s.name)
	}
	return e, nil
}

// Addrs returns the bound addresses in the order readiness, metrics, admin
// (skipping any not started).
func (e *Endpoints) Addrs() []net.Addr { return e.addrs }

// Shutdown stops the servers.
func (e *Endpoints) Shutdown(ctx context.Context) {
	for _, srv := range e.servers {
		_ = srv.Shutdown(ctx)
	}
}
