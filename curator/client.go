package curator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// A Client reads a curator's log over HTTP. Everything it returns is
// verified against a tree the caller passes in, so the curator is not
// trusted.
type Client struct {
	URL  string       // base URL, such as http://127.0.0.1:8443
	HTTP *http.Client // default http.DefaultClient
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// maxResponse bounds every response body the client reads.
const maxResponse = 16 << 20

// Get fetches path and returns the body of a 200 response.
func (c *Client) Get(ctx context.Context, path string, header http.Header) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.URL, "/")+"/"+strings.TrimPrefix(path, "/"), nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return c.do(req)
}

func (c *Client) do(req *http.Request) ([]byte, error) {
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", req.URL.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &HTTPError{Path: req.URL.Path, Code: resp.StatusCode, Body: string(bytes.TrimSpace(body))}
	}
	return body, nil
}

// An HTTPError is a non-200 response from the curator.
type HTTPError struct {
	Path string
	Code int
	Body string
}

func (e *HTTPError) Error() string { return fmt.Sprintf("%s: HTTP %d: %s", e.Path, e.Code, e.Body) }

// PostJSON posts in as JSON and decodes the response into out.
func (c *Client) PostJSON(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	body, err := c.do(req)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode %s response: %w", path, err)
	}
	return nil
}

// Checkpoint fetches the latest checkpoint note, unverified.
func (c *Client) Checkpoint(ctx context.Context) ([]byte, error) {
	return c.Get(ctx, "checkpoint", nil)
}

// Updates fetches updates for ids since size since. Verify the answer
// with VerifyUpdates.
func (c *Client) Updates(ctx context.Context, since int64, ids []ID) (*UpdatesResponse, error) {
	var resp UpdatesResponse
	err := c.PostJSON(ctx, "/v1/updates", &UpdatesRequest{Since: since, IDs: ids}, &resp)
	return &resp, err
}

// Bundle fetches the proof bundle of id.
func (c *Client) Bundle(ctx context.Context, id ID) ([]byte, error) {
	return c.Get(ctx, "v1/bundle/"+id.String(), nil)
}

// TileReader returns a tlog.TileReader over the curator's tiles, for use
// with tlog.TileHashReader, which verifies every tile against a tree.
func (c *Client) TileReader(ctx context.Context) tlog.TileReader {
	return &tileReader{ctx: ctx, c: c}
}

type tileReader struct {
	ctx context.Context
	c   *Client
}

func (r *tileReader) Height() int { return TileHeight }

func (r *tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		b, err := r.c.Get(r.ctx, TilePath(t), nil)
		if err != nil {
			return nil, fmt.Errorf("read tile: %w", err)
		}
		out[i] = b
	}
	return out, nil
}

func (r *tileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// Entries fetches entries [start, end) of tree through the entry bundles
// and checks each against the tree's level-0 hashes.
func (c *Client) Entries(ctx context.Context, tree tlog.Tree, start, end int64) ([][]byte, error) {
	if start < 0 || end > tree.N || start > end {
		return nil, fmt.Errorf("entries [%d, %d) outside tree of size %d", start, end, tree.N)
	}
	hr := tlog.TileHashReader(tree, c.TileReader(ctx))
	var out [][]byte
	for n := start >> TileHeight; n<<TileHeight < end; n++ {
		w := min(int64(1)<<TileHeight, tree.N-n<<TileHeight)
		t := tlog.Tile{H: TileHeight, L: -1, N: n, W: int(w)}
		b, err := c.Get(ctx, TilePath(t), nil)
		if err != nil {
			return nil, err
		}
		bundle, err := SplitEntryBundle(b)
		if err != nil || len(bundle) != int(w) {
			return nil, fmt.Errorf("entry bundle %s: malformed", TilePath(t))
		}
		lo, hi := max(start, n<<TileHeight), min(end, n<<TileHeight+w)
		idx := make([]int64, 0, hi-lo)
		for i := lo; i < hi; i++ {
			idx = append(idx, tlog.StoredHashIndex(0, i))
		}
		hashes, err := hr.ReadHashes(idx)
		if err != nil {
			return nil, fmt.Errorf("verify entries [%d, %d): %w", lo, hi, err)
		}
		for i := lo; i < hi; i++ {
			e := bundle[i-n<<TileHeight]
			if tlog.RecordHash(e) != hashes[i-lo] {
				return nil, fmt.Errorf("entry %d does not match the tree", i)
			}
			out = append(out, e)
		}
	}
	return out, nil
}
