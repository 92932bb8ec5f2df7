package raftlog

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/hashicorp/raft"

	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
)

// A Service is a curator replica: the leader runs the log, and followers
// forward every request to the leader, so clients may call any replica.
type Service struct {
	node   *Node
	log    *server.Log
	logger *slog.Logger
	proxy  map[raft.ServerAddress]*httputil.ReverseProxy
	stop   chan struct{}
}

// NewService starts the log on top of a raft node. cfg.Appender is set to
// append through raft.
func NewService(cfg server.Config, node *Node, peers []Peer) (*Service, error) {
	cfg.Appender = &Appender{Raft: node.Raft}
	l, err := server.New(cfg)
	if err != nil {
		return nil, err
	}
	s := &Service{node: node, log: l, logger: cfg.Logger, proxy: map[raft.ServerAddress]*httputil.ReverseProxy{}, stop: make(chan struct{})}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	for _, p := range peers {
		u, err := url.Parse(p.APIURL)
		if err != nil {
			return nil, err
		}
		s.proxy[raft.ServerAddress(p.RaftAddr)] = httputil.NewSingleHostReverseProxy(u)
	}
	go s.watch()
	return s, nil
}

// watch reloads the log state whenever this replica becomes leader: its
// store advanced through raft while the sequencer was idle.
func (s *Service) watch() {
	for {
		select {
		case leader := <-s.node.Raft.LeaderCh():
			if !leader {
				s.logger.Info("raft leadership lost")
				continue
			}
			if err := s.node.Raft.Barrier(10 * time.Second).Error(); err != nil {
				s.logger.Error("raft barrier after election", "err", err)
				continue
			}
			if err := s.log.Reload(); err != nil {
				s.logger.Error("reload log after election", "err", err)
				continue
			}
			s.logger.Info("raft leader, serving")
		case <-s.stop:
			return
		}
	}
}

// Log returns the replica's log.
func (s *Service) Log() *server.Log { return s.log }

// Handler serves the API on the leader and forwards to it elsewhere.
// GET /raft/status answers locally with this replica's raft state.
func (s *Service) Handler() http.Handler {
	h := s.log.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/raft/status" {
			addr, id := s.node.Raft.LeaderWithID()
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]string{"state": s.node.Raft.State().String(), "leader_id": string(id), "leader_addr": string(addr)})
			return
		}
		if r.URL.Path == "/healthz/ready" {
			// A replica is ready when it can serve or forward.
			if addr, _ := s.node.Raft.LeaderWithID(); addr == "" {
				http.Error(w, "no raft leader", http.StatusServiceUnavailable)
				return
			}
			w.Write([]byte("ready\n"))
			return
		}
		if s.node.Raft.State() == raft.Leader {
			h.ServeHTTP(w, r)
			return
		}
		addr, _ := s.node.Raft.LeaderWithID()
		p, ok := s.proxy[addr]
		if addr == "" || !ok {
			http.Error(w, "no raft leader: retry shortly", http.StatusServiceUnavailable)
			return
		}
		p.ServeHTTP(w, r)
	})
}

// Close stops the log and the raft node.
func (s *Service) Close() {
	close(s.stop)
	s.log.Close()
	s.node.Close()
}
