package rbe

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// ceremony runs count honest contributions from the starting CRS.
func ceremony(t *testing.T, n, count int) (*CRS, []Contribution) {
	t.Helper()
	start, err := NewCeremony(n)
	if err != nil {
		t.Fatal(err)
	}
	var out []Contribution
	cur := start
	for range count {
		next, proof, err := Contribute(cur, rand.Reader)
		if err != nil {
			t.Fatalf("Contribute = %v", err)
		}
		out = append(out, Contribution{CRS: next, Proof: proof})
		cur = next
	}
	return start, out
}

func TestCeremonyTranscriptVerifies(t *testing.T) {
	start, contribs := ceremony(t, 6, 3)
	final, err := VerifyTranscript(start, contribs)
	if err != nil {
		t.Fatalf("VerifyTranscript = %v", err)
	}
	if final.Fingerprint() != contribs[2].CRS.Fingerprint() {
		t.Fatal("VerifyTranscript did not return the last CRS")
	}
	// The result works: register and decapsulate.
	b := NewBlock(final)
	sk := register(t, b, 6)
	register(t, b, 2)
	ct, key, err := final.Encap(b.Digest(), 6, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := final.Decap(sk, 6, mustOpening(t, b, 6), ct); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Decap under ceremony CRS = %v", err)
	}
	// Proofs and CRSs survive their encodings.
	for i, ct := range contribs {
		enc, _ := ct.Proof.MarshalBinary()
		var p ContributionProof
		if err := p.UnmarshalBinary(enc); err != nil {
			t.Fatalf("contribution %d: proof round trip = %v", i, err)
		}
		crsEnc, _ := ct.CRS.MarshalBinary()
		parsed, err := ParseCRS(crsEnc)
		if err != nil {
			t.Fatalf("contribution %d: CRS round trip = %v", i, err)
		}
		contribs[i] = Contribution{CRS: parsed, Proof: &p}
	}
	if _, err := VerifyTranscript(start, contribs); err != nil {
		t.Fatalf("VerifyTranscript after round trip = %v", err)
	}
}

func TestCeremonyWithoutContributionsRejected(t *testing.T) {
	start, _ := ceremony(t, 4, 0)
	_, err := VerifyTranscript(start, nil)
	wantErr(t, "VerifyTranscript(no contributions)", err, ErrInvalidContribution)
}

func TestCeremonyZeroContributionRejected(t *testing.T) {
	start, contribs := ceremony(t, 4, 2)
	proof := *contribs[1].Proof
	proof.PotPubKey.SetIdentity()
	contribs[1].Proof = &proof
	_, err := VerifyTranscript(start, contribs)
	wantErr(t, "VerifyTranscript(zero update key)", err, ErrInvalidContribution)

	enc, _ := proof.MarshalBinary()
	var p ContributionProof
	wantErr(t, "UnmarshalBinary(zero update key)", p.UnmarshalBinary(enc), ErrIdentity)
}

func TestCeremonyIdentityContributionRejected(t *testing.T) {
	start, contribs := ceremony(t, 4, 1)
	// Republishing the previous CRS with a proof for s = 1.
	var one bls12381.Scalar
	one.SetOne()
	proof, err := proveContribution(contribs[0].CRS, contribs[0].CRS, &one, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	contribs = append(contribs, Contribution{CRS: contribs[0].CRS, Proof: proof})
	_, err = VerifyTranscript(start, contribs)
	wantErr(t, "VerifyTranscript(update by one)", err, ErrInvalidContribution)
}

func TestCeremonyMismatchedProofRejected(t *testing.T) {
	start, contribs := ceremony(t, 4, 2)
	contribs[1].Proof = contribs[0].Proof
	_, err := VerifyTranscript(start, contribs)
	wantErr(t, "VerifyTranscript(proof of another contribution)", err, ErrInvalidContribution)

	start, contribs = ceremony(t, 4, 1)
	proof := *contribs[0].Proof
	var one bls12381.Scalar
	one.SetOne()
	proof.Response.Add(&proof.Response, &one)
	contribs[0].Proof = &proof
	_, err = VerifyTranscript(start, contribs)
	wantErr(t, "VerifyTranscript(tampered response)", err, ErrInvalidContribution)
}

// A contribution whose CRS is not a chain of powers (here broken across the
// missing power) fails, even though its proof for P_1 is valid.
func TestCeremonyBrokenGapRejected(t *testing.T) {
	const n = 4
	start, _ := ceremony(t, n, 0)
	s, err := randomNonzeroScalar(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	broken := tamperCRS(applyUpdate(start, s), n+2)
	proof, err := proveContribution(start, broken, s, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The proof alone is valid: only the structure check can reject.
	c := contributionChallenge(start, broken, &proof.PotPubKey, &proof.R)
	var lhs, rhs bls12381.G1
	lhs.ScalarMult(&proof.Response, &start.p[0])
	rhs.ScalarMult(c, &broken.p[0])
	rhs.Add(&rhs, &proof.R)
	if !lhs.IsEqual(&rhs) {
		t.Fatal("test setup: proof of knowledge does not verify")
	}
	_, err = VerifyTranscript(start, []Contribution{{CRS: broken, Proof: proof}})
	wantErr(t, "VerifyTranscript(chain broken across the gap)", err, ErrInvalidCRS)
}

func TestCeremonyWrongBlockSizeRejected(t *testing.T) {
	start, _ := ceremony(t, 4, 0)
	_, other := ceremony(t, 5, 1)
	_, err := VerifyTranscript(start, other)
	wantErr(t, "VerifyTranscript(other block size)", err, ErrCRSMismatch)
}

// tamperCRS returns a copy of c with P_k doubled.
func tamperCRS(c *CRS, k int) *CRS {
	out := &CRS{n: c.n, p: append([]bls12381.G1(nil), c.p...), q: append([]bls12381.G2(nil), c.q...)}
	out.p[k-1].Double()
	out.finish()
	return out
}

func TestTamperedCRSRejected(t *testing.T) {
	const n = 5
	c := testCRS(t, n)
	for _, k := range []int{1, 2, n, n + 2, 2 * n} {
		bad := tamperCRS(c, k)
		enc, _ := bad.MarshalBinary()
		_, err := ParseCRS(enc)
		wantErr(t, "ParseCRS(tampered P)", err, ErrInvalidCRS)
	}
	bad := &CRS{n: n, p: append([]bls12381.G1(nil), c.p...), q: append([]bls12381.G2(nil), c.q...)}
	bad.q[n-1].Double()
	bad.finish()
	enc, _ := bad.MarshalBinary()
	_, err := ParseCRS(enc)
	wantErr(t, "ParseCRS(tampered Q_n)", err, ErrInvalidCRS)

	// Swapping the two sides of the gap.
	swapped := &CRS{n: n, p: append([]bls12381.G1(nil), c.p...), q: append([]bls12381.G2(nil), c.q...)}
	swapped.p[n-1], swapped.p[n+1] = swapped.p[n+1], swapped.p[n-1]
	swapped.finish()
	enc, _ = swapped.MarshalBinary()
	_, err = ParseCRS(enc)
	wantErr(t, "ParseCRS(swapped P_n and P_(n+2))", err, ErrInvalidCRS)

	good, _ := c.MarshalBinary()
	parsed, err := ParseCRS(good)
	if err != nil {
		t.Fatalf("ParseCRS(valid) = %v", err)
	}
	if parsed.Fingerprint() != c.Fingerprint() || !parsed.Z().IsEqual(c.Z()) {
		t.Fatal("parsed CRS differs from the original")
	}
}

func TestUnmarshalReplacesTables(t *testing.T) {
	a, b := testCRS(t, 3), testCRS(t, 3)
	a.Precompute()
	blk := NewBlock(a)
	register(t, blk, 1)
	if _, _, err := a.Encap(blk.Digest(), 1, rand.Reader); err != nil {
		t.Fatal(err)
	}
	enc, _ := b.MarshalBinary()
	if err := a.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	// a now is b: keys and ciphertexts must use b's points, not stale tables.
	blk = NewBlock(a)
	sk := register(t, blk, 2)
	ct, key, err := a.Encap(blk.Digest(), 2, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Decap(sk, 2, mustOpening(t, blk, 2), ct)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Decap under the replaced CRS = %v", err)
	}
}
