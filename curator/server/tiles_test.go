package server_test

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
)

// TestTilesAcrossFullTiles reads a log of more than two full tiles through
// the tile endpoints and checks every entry and hash against the tree.
func TestTilesAcrossFullTiles(t *testing.T) {
	is := curatortest.NewIssuer(t)
	c := curatortest.Start(t, curatortest.Options{Scheme: scheme, Reviewer: benchReviewer{}, JWKS: is.JWKS()})
	e := &benchEnv{log: c.Log, mk: fakeKey}
	w := curatortest.NewWorkload(t, "x.y.z", netip.MustParseAddr("10.0.0.1"))
	e.tls, e.der = w.TLS, w.TLSDER
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := e.register(context.Background(), i); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for i := range 600 {
		next <- i
	}
	close(next)
	wg.Wait()

	cp, err := c.Client.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	opened, err := c.Policy.Open(cp, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tree := opened.Tree
	if tree.N < 600 {
		t.Fatalf("tree size %d, want at least 600", tree.N)
	}
	got, err := c.Client.Entries(t.Context(), tree, 0, tree.N)
	if err != nil {
		t.Fatalf("Entries(0, %d) = %v", tree.N, err)
	}
	want, err := c.Store.Entries(0, tree.N)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("entry %d differs between tiles and store", i)
		}
	}
	// Tree hash from verified tiles matches the checkpoint.
	h, err := tlog.TreeHash(tree.N, tlog.TileHashReader(tree, c.Client.TileReader(t.Context())))
	if err != nil || h != tree.Hash {
		t.Fatalf("TreeHash from tiles = %v, %v; want %v", h, err, tree.Hash)
	}
	// A full tile is immutable; a partial one is not cached.
	for path, want := range map[string]string{
		curator.TilePath(tlog.Tile{H: 8, L: 0, N: 0, W: 256}):                          "immutable",
		curator.TilePath(tlog.Tile{H: 8, L: -1, N: 0, W: 256}):                         "immutable",
		curator.TilePath(tlog.Tile{H: 8, L: 0, N: tree.N / 256, W: int(tree.N % 256)}): "no-store",
	} {
		resp, err := http.Get(c.URL + "/" + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Control"), want) {
			t.Errorf("GET %s = %d, Cache-Control %q; want 200 and %s", path, resp.StatusCode, resp.Header.Get("Cache-Control"), want)
		}
	}
	// A tile beyond the tree is not found.
	resp, err := http.Get(c.URL + "/" + curator.TilePath(tlog.Tile{H: 8, L: 0, N: 50, W: 256}))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET tile beyond the tree = %d, want 404", resp.StatusCode)
	}
}
