package curator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// TileHeight is the C2SP tlog-tiles height: 256 hashes per full tile.
const TileHeight = 8

// ParseTilePath parses a C2SP tlog-tiles path, "tile/<L>/<N>[.p/<W>]" or
// "tile/entries/<N>[.p/<W>]", into an x/mod tile with height 8. Entry
// bundles have L = -1, which x/mod calls data tiles.
func ParseTilePath(path string) (tlog.Tile, error) {
	rest, ok := strings.CutPrefix(path, "tile/")
	if !ok {
		return tlog.Tile{}, errors.New("invalid tile path")
	}
	if e, ok := strings.CutPrefix(rest, "entries/"); ok {
		rest = "data/" + e
	}
	t, err := tlog.ParseTilePath(fmt.Sprintf("tile/%d/%s", TileHeight, rest))
	if err != nil || t.L > 63 {
		return tlog.Tile{}, errors.New("invalid tile path")
	}
	return t, nil
}

// TilePath formats a tile as a C2SP tlog-tiles path.
func TilePath(t tlog.Tile) string {
	p := t.Path() // "tile/8/<L or data>/<N>[.p/<W>]"
	p = strings.TrimPrefix(p, fmt.Sprintf("tile/%d/", t.H))
	if d, ok := strings.CutPrefix(p, "data/"); ok {
		return "tile/entries/" + d
	}
	return "tile/" + p
}

// An EntryReader reads log entries by index.
type EntryReader interface {
	Entries(start, end int64) ([][]byte, error)
}

// ReadTile returns the contents of tile t of the tree of size treeSize:
// stored hashes for a hash tile, or a C2SP entry bundle (each entry with a
// uint16 big-endian length prefix) for an entries tile.
func ReadTile(hr tlog.HashReader, er EntryReader, treeSize int64, t tlog.Tile) ([]byte, error) {
	if t.H != TileHeight || t.W < 1 || t.W > 1<<TileHeight {
		return nil, errors.New("invalid tile")
	}
	if t.L == -1 {
		start := t.N << TileHeight
		end := start + int64(t.W)
		if end > treeSize {
			return nil, fmt.Errorf("entries tile %v beyond tree size %d", TilePath(t), treeSize)
		}
		entries, err := er.Entries(start, end)
		if err != nil {
			return nil, err
		}
		var out []byte
		for _, e := range entries {
			out = binary.BigEndian.AppendUint16(out, uint16(len(e)))
			out = append(out, e...)
		}
		return out, nil
	}
	// Level L of tiles holds the nodes at tree level L·H.
	width := treeSize >> (uint(t.L) * TileHeight)
	if t.N<<TileHeight+int64(t.W) > width {
		return nil, fmt.Errorf("tile %v beyond tree size %d", TilePath(t), treeSize)
	}
	return tlog.ReadTileData(t, hr)
}

// SplitEntryBundle splits an entry bundle into its entries.
func SplitEntryBundle(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, errMalformed
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return nil, errMalformed
		}
		out = append(out, b[2:2+n])
		b = b[2+n:]
	}
	return out, nil
}
