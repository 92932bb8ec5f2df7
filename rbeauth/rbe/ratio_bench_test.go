package rbe

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe/internal/group"
)

// interleave runs every variant once per iteration, in turn, and reports the
// mean time of each as "<name>-ms" and of each variant relative to the first
// as "<name>/<base>". The machine is shared, so variants measured in separate
// benchmarks see different load; interleaving makes their ratio meaningful.
func interleave(b *testing.B, names []string, fns []func()) {
	b.Helper()
	total := make([]time.Duration, len(fns))
	for b.Loop() {
		for i, fn := range fns {
			start := time.Now()
			fn()
			total[i] += time.Since(start)
		}
	}
	for i, name := range names {
		b.ReportMetric(float64(total[i].Microseconds())/1000/float64(b.N), name+"-ms")
		if i > 0 {
			b.ReportMetric(float64(total[i])/float64(total[0]), name+"/"+names[0])
		}
	}
}

func must(b *testing.B, err error) {
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRatio measures the goals as ratios against a reference run in the
// same iterations: membership and KEM against one circl Pair, the batched
// helper check against the naive one, KeyGen with tables against without.
// The membership run also times the check with circl's ProdPairFrac in place
// of the prepared lines.
func BenchmarkRatio(b *testing.B) {
	c := benchCRS(b, 256)
	blk := NewBlock(c)
	sk := testKey(b)
	pk, _ := c.KeyGen(sk, 100)
	must(b, blk.Register(pk))
	other, _ := c.KeyGen(testKey(b), 3)
	must(b, blk.Register(other))
	open := mustOpening(b, blk, 100)
	ct, _, err := c.Encap(blk.Digest(), 100, rand.Reader)
	must(b, err)
	pair := func() { bls12381.Pair(&pk.PK, &c.q[0]) }

	// The first check in a slot prepares its Miller-loop lines, so one check
	// before timing keeps that one-off cost out of short runs.
	must(b, c.VerifyMembership(blk.Digest(), 100, &pk.PK, open))
	b.Run("membership", func(b *testing.B) {
		interleave(b, []string{"pair", "verify", "prodpairfrac"}, []func(){
			pair,
			func() { must(b, c.VerifyMembership(blk.Digest(), 100, &pk.PK, open)) },
			func() { must(b, verifyMembershipProdPairFrac(c, blk.Digest(), 100, &pk.PK, open)) },
		})
	})
	b.Run("kem", func(b *testing.B) {
		interleave(b, []string{"pair", "encap", "decap"}, []func(){
			pair,
			func() { _, _, err := c.Encap(blk.Digest(), 100, rand.Reader); must(b, err) },
			func() { _, err := c.Decap(sk, 100, open, ct); must(b, err) },
		})
	})
	for _, n := range []int{64, 256} {
		cn := benchCRS(b, n)
		key, _ := cn.KeyGen(testKey(b), n/2)
		b.Run(fmt.Sprintf("helpers/n=%d", n), func(b *testing.B) {
			interleave(b, []string{"naive", "direct", "batched"}, []func(){
				func() { must(b, cn.VerifyHelpersNaive(key)) },
				func() { must(b, cn.verifyHelpersDirect(key, rand.Reader)) },
				func() { must(b, cn.VerifyHelpers(key, rand.Reader)) },
			})
		})
	}
	for _, n := range []int{64, 256, 1024} {
		cn := benchCRS(b, n)
		tc := withTables(cn)
		b.Run(fmt.Sprintf("keygen/n=%d", n), func(b *testing.B) {
			interleave(b, []string{"scalarmult", "tables"}, []func(){
				func() { _, err := cn.KeyGen(sk, n/2); must(b, err) },
				func() { _, err := tc.KeyGen(sk, n/2); must(b, err) },
			})
		})
	}
}

// verifyMembershipProdPairFrac is VerifyMembership's check without prepared
// lines: circl's generic ProdPairFrac over the two pairs, with one Miller
// loop per pair. BenchmarkRatio/membership runs it next to VerifyMembership
// to measure what the prepared lines save.
func verifyMembershipProdPairFrac(c *CRS, digest Digest, slot int, pk *bls12381.G1, opening Opening) error {
	var lhs bls12381.G1
	neg := *pk
	neg.Neg()
	lhs.Add(digest.point(), &neg)
	if !group.PairingProductIsOne(
		[]*bls12381.G1{&lhs, opening.point()},
		[]*bls12381.G2{&c.q[c.n-slot], bls12381.G2Generator()},
		[]int{1, -1},
	) {
		return fmt.Errorf("verify membership with ProdPairFrac in slot %d: %w", slot, ErrMembership)
	}
	return nil
}
