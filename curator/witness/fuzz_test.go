package witness

import (
	"testing"

	"golang.org/x/mod/sumdb/tlog"
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
