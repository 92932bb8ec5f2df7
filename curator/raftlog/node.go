package raftlog

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

// A Peer is one replica: its raft ID, raft address and API URL.
type Peer struct {
	ID, RaftAddr, APIURL string
}

// NodeConfig configures a replica.
type NodeConfig struct {
	ID        string
	Bind      string // raft transport address; must be one of Peers' when bootstrapping
	Dir       string // raft log and snapshots
	Store     *store.Store
	Peers     []Peer
	Bootstrap bool
	Logger    *slog.Logger
}

// A Node is a started raft replica.
type Node struct {
	Raft      *raft.Raft
	Transport *raft.NetworkTransport
	logStore  *raftboltdb.BoltStore
}

// StartNode starts a replica. The timeouts suit a local network: a new
// leader is elected within about two seconds of a crash.
func StartNode(cfg NodeConfig) (*Node, error) {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.CommitTimeout = 5 * time.Millisecond
	rc.BatchApplyCh = true
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: io.Discard})
	if cfg.Logger != nil {
		rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{cfg.Logger}})
	}
	addr, err := net.ResolveTCPAddr("tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("resolve raft address %s: %w", cfg.Bind, err)
	}
	tr, err := raft.NewTCPTransport(cfg.Bind, addr, 3, 5*time.Second, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("start raft transport on %s: %w", cfg.Bind, err)
	}
	ls, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		tr.Close()
		return nil, fmt.Errorf("open raft log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStore(cfg.Dir, 2, io.Discard)
	if err != nil {
		tr.Close()
		ls.Close()
		return nil, fmt.Errorf("open raft snapshots: %w", err)
	}
	r, err := raft.NewRaft(rc, &FSM{Store: cfg.Store}, ls, ls, snaps, tr)
	if err != nil {
		tr.Close()
		ls.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if cfg.Bootstrap {
		var servers []raft.Server
		for _, p := range cfg.Peers {
			servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
		}
		f := r.BootstrapCluster(raft.Configuration{Servers: servers})
		if err := f.Error(); err != nil && err != raft.ErrCantBootstrap {
			return nil, fmt.Errorf("bootstrap raft: %w", err)
		}
	}
	return &Node{Raft: r, Transport: tr, logStore: ls}, nil
}

// Close shuts the replica down.
func (n *Node) Close() error {
	err := n.Raft.Shutdown().Error()
	n.logStore.Close()
	return err
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Warn("raft", "msg", string(p))
	return len(p), nil
}
