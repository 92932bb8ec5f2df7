package group

import (
	"bytes"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

func FuzzDecodeGt(f *testing.F) {
	x := bls12381.Pair(bls12381.G1Generator(), bls12381.G2Generator())
	enc, _ := x.MarshalBinary()
	f.Add(enc)
	f.Add(make([]byte, bls12381.GtSize))
	f.Add(enc[:10])
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := DecodeGt(b)
		if err != nil {
			return
		}
		if out, _ := g.MarshalBinary(); !bytes.Equal(out, b) {
			t.Fatal("DecodeGt round trip changed the encoding")
		}
	})
}
