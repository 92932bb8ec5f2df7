package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/mazu-mesh/mazu-ztunnel/curator/raftlog"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
)

func parsePeers(s, listen string) ([]raftlog.Peer, error) {
	var peers []raftlog.Peer
	_, apiPort, _ := net.SplitHostPort(listen)
	for _, p := range strings.Split(s, ",") {
		f := strings.SplitN(p, "=", 3)
		switch len(f) {
		case 3:
			peers = append(peers, raftlog.Peer{ID: f[0], RaftAddr: f[1], APIURL: f[2]})
		case 1:
			host, _, err := net.SplitHostPort(p)
			if err != nil || apiPort == "" || apiPort == "0" {
				return nil, fmt.Errorf("invalid -raft-peers entry %q: want host:port with a fixed -listen port, or ID=RAFTADDR=APIURL", p)
			}
			peers = append(peers, raftlog.Peer{ID: p, RaftAddr: p, APIURL: "http://" + net.JoinHostPort(host, apiPort)})
		default:
			return nil, fmt.Errorf("invalid -raft-peers entry %q: want ID=RAFTADDR=APIURL or RAFTADDR", p)
		}
	}
	return peers, nil
}

func startRaft(_ context.Context, log *slog.Logger, cfg server.Config, ro *raftOptions) (http.Handler, func(), error) {
	if *ro.dir == "" || *ro.peers == "" {
		return nil, nil, errors.New("raft needs -raft-dir and -raft-peers")
	}
	peers, err := parsePeers(*ro.peers, ro.listen)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(*ro.dir, 0o700); err != nil {
		return nil, nil, err
	}
	node, err := raftlog.StartNode(raftlog.NodeConfig{ID: *ro.id, Bind: *ro.bind, Dir: *ro.dir, Store: cfg.Store,
		Peers: peers, Bootstrap: *ro.bootstrap, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	svc, err := raftlog.NewService(cfg, node, peers)
	if err != nil {
		node.Close()
		return nil, nil, err
	}
	return svc.Handler(), svc.Close, nil
}
