package rbe

import (
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// benchCRSs caches one CRS per block size across benchmarks.
var (
	benchMu   sync.Mutex
	benchCRSs = map[int]*CRS{}
)

func benchCRS(b *testing.B, n int) *CRS {
	benchMu.Lock()
	defer benchMu.Unlock()
	if c, ok := benchCRSs[n]; ok {
		return c
	}
	c := testCRS(b, n)
	benchCRSs[n] = c
	return c
}

// withTables returns a copy of c that has fixed-base tables.
func withTables(c *CRS) *CRS {
	t := &CRS{}
	t.adopt(c)
	t.Precompute()
	return t
}

func BenchmarkKeyGen(b *testing.B) {
	for _, n := range []int{64, 256, 1024} {
		c := benchCRS(b, n)
		sk := testKey(b)
		b.Run(fmt.Sprintf("n=%d/scalarmult", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := c.KeyGen(sk, n/2); err != nil {
					b.Fatal(err)
				}
			}
		})
		tc := withTables(c)
		b.Run(fmt.Sprintf("n=%d/tables", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := tc.KeyGen(sk, n/2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPrecompute(b *testing.B) {
	c := benchCRS(b, 256)
	b.Run("n=256", func(b *testing.B) {
		for b.Loop() {
			withTables(c)
		}
	})
}

func BenchmarkVerifyHelpers(b *testing.B) {
	for _, n := range []int{64, 256} {
		c := benchCRS(b, n)
		pk, err := c.KeyGen(testKey(b), n/2)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("n=%d/naive", n), func(b *testing.B) {
			for b.Loop() {
				if err := c.VerifyHelpersNaive(pk); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("n=%d/direct-g2-msm", n), func(b *testing.B) {
			for b.Loop() {
				if err := c.verifyHelpersDirect(pk, rand.Reader); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("n=%d/batched", n), func(b *testing.B) {
			for b.Loop() {
				if err := c.VerifyHelpers(pk, rand.Reader); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRegister(b *testing.B) {
	for _, n := range []int{64, 256} {
		c := benchCRS(b, n)
		blk := NewBlock(c)
		for slot := 1; slot < n; slot += 2 {
			pk, _ := c.KeyGen(testKey(b), slot)
			if err := blk.Register(pk); err != nil {
				b.Fatal(err)
			}
		}
		pk, _ := c.KeyGen(testKey(b), n)
		// Register runs the helper check and the state update.
		b.Run(fmt.Sprintf("n=%d/checked", n), func(b *testing.B) {
			for b.Loop() {
				if err := blk.Register(pk); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := blk.Remove(n); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
		// update is the state change alone: one G1 addition per slot.
		b.Run(fmt.Sprintf("n=%d/update", n), func(b *testing.B) {
			for b.Loop() {
				blk.add(pk, false)
			}
		})
	}
}

// BenchmarkMembership runs the membership check next to one circl Pair, so
// that their ratio is measured under the same load.
func BenchmarkMembership(b *testing.B) {
	c := benchCRS(b, 256)
	blk := NewBlock(c)
	for _, slot := range []int{3, 100, 200} {
		pk, _ := c.KeyGen(testKey(b), slot)
		if err := blk.Register(pk); err != nil {
			b.Fatal(err)
		}
	}
	pk, _ := blk.Key(100)
	open := mustOpening(b, blk, 100)
	// The first check in a slot prepares its Miller-loop lines, so one check
	// before timing keeps that one-off cost out of short runs.
	if err := c.VerifyMembership(blk.Digest(), 100, &pk.PK, open); err != nil {
		b.Fatal(err)
	}
	b.Run("verify", func(b *testing.B) {
		for b.Loop() {
			if err := c.VerifyMembership(blk.Digest(), 100, &pk.PK, open); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pair", func(b *testing.B) {
		for b.Loop() {
			bls12381.Pair(&pk.PK, &c.q[0])
		}
	})
	var proofs []MembershipProof
	for range 16 {
		proofs = append(proofs, MembershipProof{Slot: 100, PK: pk.PK, Opening: open})
	}
	b.Run("batch16", func(b *testing.B) {
		for b.Loop() {
			if err := c.VerifyMemberships(blk.Digest(), proofs, rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkKEM(b *testing.B) {
	c := benchCRS(b, 256)
	blk := NewBlock(c)
	sk := testKey(b)
	pk, _ := c.KeyGen(sk, 7)
	if err := blk.Register(pk); err != nil {
		b.Fatal(err)
	}
	other, _ := c.KeyGen(testKey(b), 9)
	if err := blk.Register(other); err != nil {
		b.Fatal(err)
	}
	open := mustOpening(b, blk, 7)
	ct, _, err := c.Encap(blk.Digest(), 7, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encap", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := c.Encap(blk.Digest(), 7, rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decap", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Decap(sk, 7, open, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pair", func(b *testing.B) {
		for b.Loop() {
			bls12381.Pair(&pk.PK, &c.q[0])
		}
	})
}

func BenchmarkCeremony(b *testing.B) {
	for _, n := range []int{64, 256} {
		start, err := NewCeremony(n)
		if err != nil {
			b.Fatal(err)
		}
		next, proof, err := Contribute(start, rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("n=%d/contribute", n), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := Contribute(next, rand.Reader); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("n=%d/verify", n), func(b *testing.B) {
			for b.Loop() {
				if err := VerifyContribution(start, next, proof); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
