package group

import (
	"bytes"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// TestPreparedMatchesCircl compares the prepared product with
// circl's ProdPairFrac on random points, element for element in GT, for
// one, two and three pairs and both signs.
func TestPreparedMatchesCircl(t *testing.T) {
	for trial := range 4 {
		n := 1 + trial%3
		p := make([]*bls12381.G1, n)
		q := make([]*bls12381.G2, n)
		prep := make([]*PreparedG2, n)
		signs := make([]int, n)
		for i := range n {
			g1, g2 := randG1(t), randG2(t)
			p[i], q[i] = &g1, &g2
			prep[i] = PrepareG2(q[i])
			signs[i] = 1 - 2*((trial+i)%2)
		}
		got, err := preparedProduct(p, prep, signs).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		want, err := bls12381.ProdPairFrac(p, q, signs).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("trial %d (%d pairs, signs %v): prepared product differs from circl's ProdPairFrac", trial, n, signs)
		}
	}
}

// TestPreparedProductDecision checks the decision on a relation that holds,
// e(a·P, Q) · e(P, a·Q)^−1 = 1, on one that does not, and on identities.
func TestPreparedProductDecision(t *testing.T) {
	P, Q := randG1(t), randG2(t)
	var a bls12381.Scalar
	a.SetUint64(123456789)
	var aP bls12381.G1
	aP.ScalarMult(&a, &P)
	var aQ bls12381.G2
	aQ.ScalarMult(&a, &Q)
	pq, paq := PrepareG2(&Q), PrepareG2(&aQ)

	if !PreparedProductIsOne([]*bls12381.G1{&aP, &P}, []*PreparedG2{pq, paq}, []int{1, -1}) {
		t.Fatal("e(aP, Q)·e(P, aQ)^−1 = 1 was rejected")
	}
	if PreparedProductIsOne([]*bls12381.G1{&aP, &P}, []*PreparedG2{pq, paq}, []int{1, 1}) {
		t.Fatal("e(aP, Q)·e(P, aQ) = 1 was accepted")
	}
	if PreparedProductIsOne([]*bls12381.G1{&aP, &aP}, []*PreparedG2{pq, paq}, []int{1, -1}) {
		t.Fatal("e(aP, Q)·e(aP, aQ)^−1 = 1 was accepted")
	}

	var id1 bls12381.G1
	id1.SetIdentity()
	var id2 bls12381.G2
	id2.SetIdentity()
	if !PreparedProductIsOne([]*bls12381.G1{&id1, &P}, []*PreparedG2{pq, PrepareG2(&id2)}, []int{1, -1}) {
		t.Fatal("a product of identity pairs was rejected")
	}

	if PreparedProductIsOne([]*bls12381.G1{&P}, []*PreparedG2{pq}, []int{2}) {
		t.Fatal("a sign of 2 was accepted")
	}
	if PreparedProductIsOne([]*bls12381.G1{&P}, []*PreparedG2{pq, pq}, []int{1}) {
		t.Fatal("mismatched lengths were accepted")
	}
}

// BenchmarkTwoPairProduct compares a two-pair product with prepared G2
// points against circl's ProdPairFrac, the membership check's shape.
func BenchmarkTwoPairProduct(b *testing.B) {
	p1, p2 := randG1(b), randG1(b)
	q1, q2 := randG2(b), randG2(b)
	prep := []*PreparedG2{PrepareG2(&q1), PrepareG2(&q2)}
	b.Run("circl", func(b *testing.B) {
		for b.Loop() {
			bls12381.ProdPairFrac([]*bls12381.G1{&p1, &p2}, []*bls12381.G2{&q1, &q2}, []int{1, -1})
		}
	})
	b.Run("prepared", func(b *testing.B) {
		for b.Loop() {
			preparedProduct([]*bls12381.G1{&p1, &p2}, prep, []int{1, -1})
		}
	})
	b.Run("prepare", func(b *testing.B) {
		for b.Loop() {
			PrepareG2(&q1)
		}
	})
}
