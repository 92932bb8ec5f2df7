package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"

	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
)

type raftOptions struct {
	id        *string
	bind      *string
	peers     *string
	dir       *string
	bootstrap *bool
}

func registerRaftFlags(fs *flag.FlagSet) *raftOptions {
	return &raftOptions{
		id:        fs.String("raft-id", "", "this replica's raft ID; empty runs a single node without raft"),
		bind:      fs.String("raft-bind", "127.0.0.1:0", "raft transport address"),
		peers:     fs.String("raft-peers", "", "all replicas as ID=RAFTADDR=APIURL, comma-separated"),
		dir:       fs.String("raft-dir", "", "raft log and snapshot folder"),
		bootstrap: fs.Bool("raft-bootstrap", false, "bootstrap the cluster from -raft-peers (run on one replica, once)"),
	}
}

// startLog starts the log, single-node or as a raft replica, and returns
// its HTTP handler.
func startLog(ctx context.Context, log *slog.Logger, cfg server.Config, ro *raftOptions) (http.Handler, func(), error) {
	if *ro.id == "" {
		l, err := server.New(cfg)
		if err != nil {
			return nil, nil, err
		}
		return l.Handler(), l.Close, nil
	}
	return startRaft(ctx, log, cfg, ro)
}
