package witness

import (
	"bytes"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

func FuzzParseAddCheckpoint(f *testing.F) {
	f.Add([]byte("old 5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\norigin\n7\nAAAA\n\n— x y\n"))
	f.Add([]byte("old 0\n\ncp"))
	f.Fuzz(func(t *testing.T, b []byte) {
		old, proof, signed, err := ParseAddCheckpoint(b)
		if err != nil {
			return
		}
		if old < 0 || len(proof) > 63 || signed == nil {
			t.Fatalf("ParseAddCheckpoint = %d, %d hashes, %q", old, len(proof), signed)
		}
		_ = tlog.Hash{}
	})
}

// FuzzParseTokenSigs feeds arbitrary /v1/token-signatures bodies to the
// witness's parser: what it accepts has one length-prefixed signature per
// requested entry and nothing else, so it re-encodes to the same bytes.
func FuzzParseTokenSigs(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0, 0, 1, 'x'}, uint8(3))
	f.Add([]byte{0, 0}, uint8(1))
	f.Add([]byte{0xff, 0xff, 1}, uint8(1))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, count uint8) {
		const start = 1000
		end := int64(start) + int64(count)
		sigs := map[uint64][]byte{}
		if err := curator.ParseTokenSigs(body, start, end, sigs); err != nil {
			return
		}
		var list [][]byte
		for i := int64(start); i < end; i++ {
			s, ok := sigs[uint64(i)]
			if ok && len(s) == 0 {
				t.Fatalf("entry %d has an empty signature in the map", i)
			}
			list = append(list, s)
		}
		again := curator.AppendTokenSigs(nil, list)
		if len(sigs) > int(count) {
			t.Fatalf("parseTokenSigs returned %d signatures for %d entries", len(sigs), count)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("parseTokenSigs(%x) accepted bytes that do not re-encode: %x", body, again)
		}
	})
}
