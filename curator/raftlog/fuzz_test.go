package raftlog

import (
	"bytes"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
)

func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeBatch(&store.Batch{Start: 3, Entries: [][]byte{[]byte("a"), []byte("bc")}, TokenSigs: [][]byte{[]byte("s"), nil}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		batch, err := decodeBatch(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeBatch(batch), b) {
			t.Fatalf("decodeBatch accepted a non-canonical encoding")
		}
	})
}
