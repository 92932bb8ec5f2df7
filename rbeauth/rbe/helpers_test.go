package rbe

import (
	"crypto/rand"
	"errors"
	mrand "math/rand/v2"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// testCRS returns a CRS with a random trapdoor for block size n.
func testCRS(tb testing.TB, n int) *CRS {
	tb.Helper()
	z, err := randomNonzeroScalar(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := NewCRSFromTrapdoor(n, z)
	if err != nil {
		tb.Fatalf("NewCRSFromTrapdoor(%d) = %v", n, err)
	}
	return c
}

func testKey(tb testing.TB) *SecretKey {
	tb.Helper()
	sk, err := NewSecretKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return sk
}

// register generates a key for slot and registers it into b.
func register(tb testing.TB, b *Block, slot int) *SecretKey {
	tb.Helper()
	sk := testKey(tb)
	pk, err := b.CRS().KeyGen(sk, slot)
	if err != nil {
		tb.Fatalf("KeyGen(slot %d) = %v", slot, err)
	}
	if err := b.Register(pk); err != nil {
		tb.Fatalf("Register(slot %d) = %v", slot, err)
	}
	return sk
}

func wantErr(tb testing.TB, what string, err, target error) {
	tb.Helper()
	if !errors.Is(err, target) {
		tb.Fatalf("%s: error = %v, want %v", what, err, target)
	}
}

func mustOpening(tb testing.TB, b *Block, slot int) Opening {
	tb.Helper()
	o, err := b.Opening(slot)
	if err != nil {
		tb.Fatalf("Opening(%d) = %v", slot, err)
	}
	return o
}

// seededRand returns a deterministic reader for known-answer tests; it is not
// a secure source.
type seededRand struct{ r *mrand.ChaCha8 }

func newSeededRand(seed byte) *seededRand {
	var s [32]byte
	s[0] = seed
	return &seededRand{r: mrand.NewChaCha8(s)}
}

func (s *seededRand) Read(p []byte) (int, error) { return s.r.Read(p) }

func g1Mul(k uint64, p *bls12381.G1) *bls12381.G1 {
	var s bls12381.Scalar
	s.SetUint64(k)
	var out bls12381.G1
	out.ScalarMult(&s, p)
	return &out
}

func pairG(p *bls12381.G1, q *bls12381.G2) *bls12381.Gt { return bls12381.Pair(p, q) }
