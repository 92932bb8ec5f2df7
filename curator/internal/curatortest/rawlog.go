package curatortest

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

// A RawLog serves a store's read API (checkpoint, tiles and token
// signatures) without replaying it under the rules, as a curator that
// logged entries the rules reject would serve them. It serves token
// signatures to any caller.
type RawLog struct {
	URL   string
	store *store.Store

	mu         sync.Mutex
	checkpoint []byte
}

// ServeRawLog serves st on loopback until the test ends.
func ServeRawLog(tb testing.TB, st *store.Store) *RawLog {
	tb.Helper()
	r := &RawLog{store: st}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /checkpoint", r.handleCheckpoint)
	mux.HandleFunc("GET /tile/", r.handleTile)
	mux.HandleFunc("GET /v1/token-signatures", r.handleTokenSigs)
	ln, u := listen(tb, nil)
	serve(tb, ln, mux)
	r.URL = u
	return r
}

// Publish serves checkpoint at GET /checkpoint.
func (r *RawLog) Publish(checkpoint []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checkpoint = checkpoint
}

func (r *RawLog) handleCheckpoint(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	cp := r.checkpoint
	r.mu.Unlock()
	if cp == nil {
		http.Error(w, "no checkpoint published", http.StatusNotFound)
		return
	}
	w.Write(cp)
}

func (r *RawLog) handleTile(w http.ResponseWriter, req *http.Request) {
	t, err := curator.ParseTilePath(strings.TrimPrefix(req.URL.Path, "/"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	n, err := r.store.Size()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	data, err := curator.ReadTile(r.store, r.store, n, t)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	w.Write(data)
}

func (r *RawLog) handleTokenSigs(w http.ResponseWriter, req *http.Request) {
	start, err1 := strconv.ParseInt(req.URL.Query().Get("start"), 10, 64)
	end, err2 := strconv.ParseInt(req.URL.Query().Get("end"), 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start || end-start > curator.MaxTokenSigRange {
		http.Error(w, "invalid range", http.StatusBadRequest)
		return
	}
	sigs, err := r.store.TokenSigs(start, end)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(curator.AppendTokenSigs(nil, sigs))
}

// CopyStore copies the entries and token signatures of src into a new store
// in a temporary folder.
func CopyStore(tb testing.TB, src *store.Store) *store.Store {
	tb.Helper()
	dst, err := store.Open(tb.TempDir() + "/copy.db")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dst.Close() })
	n, err := src.Size()
	if err != nil {
		tb.Fatal(err)
	}
	entries, err := src.Entries(0, n)
	if err != nil {
		tb.Fatal(err)
	}
	sigs, err := src.TokenSigs(0, n)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := dst.Append(&store.Batch{Start: 0, Entries: entries, TokenSigs: sigs}); err != nil {
		tb.Fatal(err)
	}
	return dst
}

// Tree returns the tree of st's current size.
func Tree(tb testing.TB, st *store.Store) tlog.Tree {
	tb.Helper()
	n, err := st.Size()
	if err != nil {
		tb.Fatal(err)
	}
	h, err := tlog.TreeHash(n, st)
	if err != nil {
		tb.Fatal(err)
	}
	return tlog.Tree{N: n, Hash: h}
}
