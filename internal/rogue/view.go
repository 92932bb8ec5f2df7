package rogue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

// A View is a rogue copy of the log that contains entries the curator rules
// reject. It serves the read calls of the curator's API (checkpoint, tiles,
// updates, bundles) as the honest log would, so that a node agent verifies
// it like any other log. server.Log cannot serve it, because server.Log
// replays its store under the rules.
type View struct {
	c     *Curator
	store *store.Store
	tree  tlog.Tree

	mu         sync.Mutex
	checkpoint []byte
	// state is the honest state before the rogue entries, which provides
	// the blocks. ids and current are the ID map the rogue state entry
	// commits to.
	state   *curator.State
	ids     *curator.MapTree
	current map[curator.ID]uint64
}

// idMap returns the ID map over the key entries in entries, as the rules
// build it (each ID points at its newest key entry), and each ID's newest
// index. It does not check the rules, so a second registration of an ID
// replaces the first.
func idMap(entries [][]byte) (*curator.MapTree, map[curator.ID]uint64, error) {
	mt := &curator.MapTree{}
	current := map[curator.ID]uint64{}
	for i, data := range entries {
		e, err := curator.ParseEntry(data)
		if err != nil {
			return nil, nil, fmt.Errorf("read entry %d: %w", i, err)
		}
		if e.IsKey() {
			mt.Set(e.ID, tlog.RecordHash(data))
			current[e.ID] = uint64(i)
		}
	}
	return mt, current, nil
}

// Size returns the number of entries in the view.
func (v *View) Size() int64 { return v.tree.N }

// Checkpoint returns the view's checkpoint note as served.
func (v *View) Checkpoint() []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.checkpoint
}

// Collude replaces the view's checkpoint with one that every witness
// cosigned (see Curator.Collude), so it meets the witness quorum.
func (v *View) Collude() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	cp, err := v.c.Collude(v.checkpoint)
	if err != nil {
		return err
	}
	v.checkpoint = cp
	return nil
}

// Show makes the front door named frontName serve the view.
func (v *View) Show(frontName string) error {
	f, ok := v.c.fronts[frontName]
	if !ok {
		return fmt.Errorf("show the rogue view: no front door named %q", frontName)
	}
	f.set(v.Handler())
	return nil
}

// ShowHonest makes the front door named frontName serve the honest log
// again.
func (c *Curator) ShowHonest(frontName string) error {
	f, ok := c.fronts[frontName]
	if !ok {
		return fmt.Errorf("show the honest log: no front door named %q", frontName)
	}
	f.set(c.log.Handler())
	return nil
}

// Handler serves the view's read API. It rejects writes (reserve,
// register, rotate, revoke) as unavailable.
func (v *View) Handler() http.Handler {
	mux := http.NewServeMux()
	raw := rawLog(v.store, v.tree.N)
	mux.Handle("GET /tile/", raw)
	mux.Handle("GET /v1/token-signatures", raw)
	mux.HandleFunc("GET /checkpoint", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(v.Checkpoint())
	})
	mux.HandleFunc("POST /v1/updates", func(w http.ResponseWriter, r *http.Request) {
		var req curator.UpdatesRequest
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			http.Error(w, "invalid updates request: "+err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := v.Updates(&req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	})
	mux.HandleFunc("GET /v1/bundle/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := curator.ParseID(r.PathValue("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b, err := v.Bundle(id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "curator busy", http.StatusServiceUnavailable)
	})
	return mux
}

var errNotInView = errors.New("not registered in this log")

// Bundle returns the proof bundle of id at the view's checkpoint.
func (v *View) Bundle(id curator.ID) ([]byte, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	index, ok := v.current[id]
	if !ok {
		return nil, fmt.Errorf("ID %v: %w", id, errNotInView)
	}
	entry, err := v.store.Entry(int64(index))
	if err != nil {
		return nil, err
	}
	if e, err := curator.ParseEntry(entry); err != nil || e.Kind == curator.KindRevocation {
		return nil, fmt.Errorf("ID %v is revoked: %w", id, errNotInView)
	}
	incl, err := tlog.ProveRecord(v.tree.N, int64(index), v.store)
	if err != nil {
		return nil, err
	}
	stateEntry, err := v.store.Entry(v.tree.N - 1)
	if err != nil {
		return nil, err
	}
	sincl, err := tlog.ProveRecord(v.tree.N, v.tree.N-1, v.store)
	if err != nil {
		return nil, err
	}
	b := &curator.Bundle{Checkpoint: v.checkpoint, Index: index, Entry: entry, Inclusion: incl,
		StateEntry: stateEntry, StateInclusion: sincl, MapProof: v.ids.Prove(id)}
	return b.Marshal()
}

// Updates returns the reply to an updates request at the view's
// checkpoint, as server.Log.Updates does for the honest log.
func (v *View) Updates(req *curator.UpdatesRequest) (*curator.UpdatesResponse, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tree
	if req.Since < 0 || req.Since > t.N {
		return nil, fmt.Errorf("invalid updates request: since %d is outside [0, %d]", req.Since, t.N)
	}
	if len(req.IDs) > server.MaxUpdateIDs {
		return nil, fmt.Errorf("invalid updates request: %d IDs, the maximum is %d", len(req.IDs), server.MaxUpdateIDs)
	}
	resp := &curator.UpdatesResponse{Checkpoint: v.checkpoint}
	var err error
	if req.Since > 0 && req.Since < t.N {
		if resp.Consistency, err = tlog.ProveTree(t.N, req.Since, v.store); err != nil {
			return nil, err
		}
	}
	if resp.StateEntry, err = v.store.Entry(t.N - 1); err != nil {
		return nil, err
	}
	if resp.StateInclusion, err = tlog.ProveRecord(t.N, t.N-1, v.store); err != nil {
		return nil, err
	}
	for _, id := range req.IDs {
		iu, err := v.idUpdateLocked(id, req.Since)
		if err != nil {
			return nil, fmt.Errorf("updates of ID %v: %w", id, err)
		}
		resp.IDs = append(resp.IDs, *iu)
	}
	return resp, nil
}

func (v *View) idUpdateLocked(id curator.ID, since int64) (*curator.IDUpdate, error) {
	t := v.tree
	iu := &curator.IDUpdate{ID: id, MapProof: v.ids.Prove(id).Marshal()}
	index, ok := v.current[id]
	if !ok {
		return iu, nil
	}

	var cur *curator.Entry
	for idx := index; ; {
		data, err := v.store.Entry(int64(idx))
		if err != nil {
			return nil, err
		}
		incl, err := tlog.ProveRecord(t.N, int64(idx), v.store)
		if err != nil {
			return nil, err
		}
		iu.Entries = append(iu.Entries, curator.IndexedEntry{Index: idx, Entry: data, Inclusion: incl})
		e, err := curator.ParseEntry(data)
		if err != nil {
			return nil, err
		}
		if cur == nil {
			cur = e
		}
		if int64(idx) < since || e.PrevIndex == curator.NoPrev {
			break
		}
		idx = e.PrevIndex
	}
	if cur.Kind == curator.KindRevocation {
		return iu, nil
	}

	// The blocks are the honest ones: a rogue entry in the ID's own slot
	// names a block that exists, with the digest the honest state entry
	// committed.
	b := v.state.Block(cur.Block)
	if b == nil {
		return nil, fmt.Errorf("block %d not found", cur.Block)
	}
	op, err := b.Opening(int(cur.Slot))
	if err != nil {
		return nil, fmt.Errorf("opening of block %d slot %d: %w", cur.Block, cur.Slot, err)
	}
	bp, err := v.state.ProveBlock(cur.Block)
	if err != nil {
		return nil, err
	}
	iu.Block, iu.BlockVersion, iu.BlockDigest, iu.BlockProof, iu.Opening = cur.Block, b.Version(), b.Digest(), bp, op
	return iu, nil
}

// TamperDigests makes the front door named frontName serve the honest log
// with every block digest in updates replies changed. It plays a curator
// that serves an agent digests other than those its state entries commit
// to. The rest of the API is served unchanged.
func (c *Curator) TamperDigests(frontName string) error {
	f, ok := c.fronts[frontName]
	if !ok {
		return fmt.Errorf("tamper digests: no front door named %q", frontName)
	}
	honest := c.log.Handler()
	f.set(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/updates" {
			honest.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		honest.ServeHTTP(rec, r)
		var resp curator.UpdatesResponse
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &resp) != nil {
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		for i := range resp.IDs {
			if d := resp.IDs[i].BlockDigest; len(d) > 0 {
				d[len(d)-1] ^= 1
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&resp)
	}))
	return nil
}
