package group

import (
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
	"github.com/cloudflare/circl/ecc/bls12381/ff"
)

func randScalar(tb testing.TB) *bls12381.Scalar {
	tb.Helper()
	var s bls12381.Scalar
	if err := s.Random(rand.Reader); err != nil {
		tb.Fatal(err)
	}
	return &s
}

func scalarBytes(s *bls12381.Scalar) []byte { b, _ := s.MarshalBinary(); return b }

func randG1(tb testing.TB) bls12381.G1 {
	var p bls12381.G1
	p.ScalarMult(randScalar(tb), bls12381.G1Generator())
	return p
}

func randG2(tb testing.TB) bls12381.G2 {
	var p bls12381.G2
	p.ScalarMult(randScalar(tb), bls12381.G2Generator())
	return p
}

func TestMSMMatchesScalarMult(t *testing.T) {
	for _, size := range []int{0, 1, 2, 7, 33, 130} {
		points := make([]bls12381.G1, size)
		points2 := make([]bls12381.G2, size)
		scalars := make([][]byte, size)
		var want1 bls12381.G1
		var want2 bls12381.G2
		want1.SetIdentity()
		want2.SetIdentity()
		for i := range points {
			points[i], points2[i] = randG1(t), randG2(t)
			s := randScalar(t)
			if i%5 == 3 {
				s.SetUint64(0) // zero scalars must be skipped
			}
			scalars[i] = scalarBytes(s)
			var t1 bls12381.G1
			var t2 bls12381.G2
			t1.ScalarMult(s, &points[i])
			t2.ScalarMult(s, &points2[i])
			want1.Add(&want1, &t1)
			want2.Add(&want2, &t2)
		}
		got1, err := MSM(points, scalars)
		if err != nil || !got1.IsEqual(&want1) {
			t.Fatalf("MSM over G1 with %d points: err %v, mismatch %v", size, err, !got1.IsEqual(&want1))
		}
		got2, err := MSM(points2, scalars)
		if err != nil || !got2.IsEqual(&want2) {
			t.Fatalf("MSM over G2 with %d points: err %v, mismatch %v", size, err, !got2.IsEqual(&want2))
		}
		naive, err := NaiveMSM(points, scalars)
		if err != nil || !naive.IsEqual(&want1) {
			t.Fatalf("NaiveMSM over G1 with %d points differs", size)
		}
	}
}

func TestMSMShortScalarsAndIdentityPoints(t *testing.T) {
	points := []bls12381.G1{randG1(t), {}, randG1(t)}
	points[1].SetIdentity()
	scalars := [][]byte{{0x80, 1}, {0xff}, {0x01, 0x00, 0x00}}
	got, err := MSM(points, scalars)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := NaiveMSM(points, scalars)
	if !got.IsEqual(&want) {
		t.Fatal("MSM with short scalars and an identity point differs from NaiveMSM")
	}
}

func TestMSMLengthMismatch(t *testing.T) {
	if _, err := MSM([]bls12381.G1{randG1(t)}, nil); err == nil {
		t.Fatal("MSM with 1 point and 0 scalars: error = nil")
	}
}

func TestCombMatchesScalarMult(t *testing.T) {
	base := randG1(t)
	base2 := randG2(t)
	for _, teeth := range []int{1, 4, 6, 8} {
		c1 := NewComb[bls12381.G1](&base, teeth)
		c2 := NewComb[bls12381.G2](&base2, teeth)
		for range 5 {
			s := randScalar(t)
			var want1 bls12381.G1
			var want2 bls12381.G2
			want1.ScalarMult(s, &base)
			want2.ScalarMult(s, &base2)
			got1 := c1.Mul(scalarBytes(s))
			got2 := c2.Mul(scalarBytes(s))
			if !got1.IsEqual(&want1) || !got2.IsEqual(&want2) {
				t.Fatalf("Comb with %d teeth differs from ScalarMult", teeth)
			}
		}
		// q−1 has the top bit pattern of the largest scalars.
		var s bls12381.Scalar
		s.SetOne()
		s.Neg()
		var want bls12381.G1
		want.ScalarMult(&s, &base)
		if got := c1.Mul(scalarBytes(&s)); !got.IsEqual(&want) {
			t.Fatalf("Comb with %d teeth: (q−1)·P differs", teeth)
		}
	}
}

func TestExpMatchesCircl(t *testing.T) {
	x := bls12381.Pair(bls12381.G1Generator(), bls12381.G2Generator())
	for range 4 {
		s := randScalar(t)
		var want bls12381.Gt
		want.Exp(x, s)
		got := Exp((*GtElem)(x), scalarBytes(s))
		if !(*bls12381.Gt)(&got).IsEqual(&want) {
			t.Fatal("Exp over GT differs from bls12381.Gt.Exp")
		}
		comb := NewComb[GtElem]((*GtElem)(x), 6).Mul(scalarBytes(s))
		if !(*bls12381.Gt)(&comb).IsEqual(&want) {
			t.Fatal("Comb over GT differs from bls12381.Gt.Exp")
		}
		g := randG1(t)
		var wantG bls12381.G1
		wantG.ScalarMult(s, &g)
		if gotG := Exp(&g, scalarBytes(s)); !gotG.IsEqual(&wantG) {
			t.Fatal("Exp over G1 differs from ScalarMult")
		}
	}
}

func TestGtMembership(t *testing.T) {
	x := bls12381.Pair(bls12381.G1Generator(), bls12381.G2Generator())
	enc, _ := x.MarshalBinary()
	if _, err := DecodeGt(enc); err != nil {
		t.Fatalf("DecodeGt(e(g1, g2)) = %v", err)
	}
	var f ff.Fp12
	if err := f.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if !IsInGt(&f) || !IsInGtByOrder(&f) {
		t.Fatal("e(g1, g2) is not in GT")
	}

	// Random Fp12 elements and their images in the cyclotomic subgroup
	// (easy part of the final exponentiation) are almost never in GT; both
	// tests must agree on them.
	for i := range 6 {
		raw := make([]byte, ff.Fp12Size)
		for j := 0; j < len(raw); j += ff.FpSize {
			var fp ff.Fp
			var s [ff.FpSize]byte
			_, _ = rand.Read(s[1:])
			_ = fp.UnmarshalBinary(s[:])
			b, _ := fp.MarshalBinary()
			copy(raw[j:], b)
		}
		var r ff.Fp12
		if err := r.UnmarshalBinary(raw); err != nil {
			t.Fatal(err)
		}
		candidate := r
		if i%2 == 1 {
			var c ff.Cyclo6
			ff.EasyExponentiation(&c, &r)
			candidate = ff.Fp12(c)
		}
		if IsInGt(&candidate) != IsInGtByOrder(&candidate) {
			t.Fatalf("candidate %d: IsInGt = %v, IsInGtByOrder = %v", i, IsInGt(&candidate), IsInGtByOrder(&candidate))
		}
		if IsInGt(&candidate) {
			t.Fatalf("candidate %d: random element reported in GT", i)
		}
		b, _ := candidate.MarshalBinary()
		if _, err := DecodeGt(b); err == nil {
			t.Fatalf("candidate %d: DecodeGt accepted an element outside GT", i)
		}
	}

	var zero ff.Fp12
	if IsInGt(&zero) {
		t.Fatal("IsInGt(0) = true")
	}
	var one bls12381.Gt
	one.SetIdentity()
	b, _ := one.MarshalBinary()
	if _, err := DecodeGt(b); err != ErrGtIdentity {
		t.Fatalf("DecodeGt(1) = %v, want %v", err, ErrGtIdentity)
	}
	if _, err := DecodeGt(b[1:]); err != ErrGtLength {
		t.Fatalf("DecodeGt(short) = %v, want %v", err, ErrGtLength)
	}
}

func TestPairingProductSkipsIdentity(t *testing.T) {
	var o1 bls12381.G1
	o1.SetIdentity()
	var o2 bls12381.G2
	o2.SetIdentity()
	g1, g2 := bls12381.G1Generator(), bls12381.G2Generator()
	if !PairingProductIsOne([]*bls12381.G1{&o1}, []*bls12381.G2{g2}, []int{1}) {
		t.Fatal("e(O, g2) != 1")
	}
	if !PairingProductIsOne([]*bls12381.G1{g1}, []*bls12381.G2{&o2}, []int{1}) {
		t.Fatal("e(g1, O) != 1")
	}
	if PairingProductIsOne([]*bls12381.G1{g1, &o1}, []*bls12381.G2{g2, g2}, []int{1, -1}) {
		t.Fatal("e(g1, g2)·e(O, g2)^-1 = 1")
	}
	if !PairingProductIsOne([]*bls12381.G1{g1, g1}, []*bls12381.G2{g2, g2}, []int{1, -1}) {
		t.Fatal("e(g1, g2)·e(g1, g2)^-1 != 1")
	}
	if PairingProductIsOne([]*bls12381.G1{g1}, []*bls12381.G2{g2}, []int{2}) {
		t.Fatal("sign 2 accepted")
	}
}
