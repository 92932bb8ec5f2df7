package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"os"

	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
)

type raftOptions struct {
	id        *string
	bind      *string
	peers     *string
	dir       *string
	bootstrap *bool
	listen    string // the API address, set after parsing
}

func registerRaftFlags(fs *flag.FlagSet, dataDir string) *raftOptions {
	addr := os.Getenv("MAZU_RAFT_ADDRESS")
	return &raftOptions{
		id:    fs.String("raft-id", addr, "this replica's raft ID; empty runs a single node without raft (default $MAZU_RAFT_ADDRESS)"),
		bind:  fs.String("raft-bind", envOr("MAZU_RAFT_ADDRESS", "127.0.0.1:0"), "raft transport address (env MAZU_RAFT_ADDRESS)"),
		peers: fs.String("raft-peers", envOr("MAZU_RAFT_PEERS", ""), "all replicas, comma-separated, as ID=RAFTADDR=APIURL or as RAFTADDR, which is then also the ID, with the API on the same host and the -listen port (env MAZU_RAFT_PEERS)"),
		dir:   fs.String("raft-dir", dataPath(dataDir, "raft"), "raft log and snapshot folder (default $MAZU_DATA_DIR/raft)"),
		// Bootstrapping every replica with the same peer list is safe:
		// raft ignores it once a configuration exists.
		bootstrap: fs.Bool("raft-bootstrap", os.Getenv("MAZU_RAFT_PEERS") != "", "bootstrap the cluster from -raft-peers (default true when MAZU_RAFT_PEERS is set)"),
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
