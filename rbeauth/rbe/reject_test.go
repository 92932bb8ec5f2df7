package rbe

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

func TestDecapWrongKeyRejected(t *testing.T) {
	c := testCRS(t, 8)
	b := NewBlock(c)
	register(t, b, 2)
	ct, _, err := c.Encap(b.Digest(), 2, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decap(testKey(t), 2, mustOpening(t, b, 2), ct)
	wantErr(t, "Decap with a random key", err, ErrDecapsulation)
}

func TestDecapOtherSlotKeyRejected(t *testing.T) {
	c := testCRS(t, 8)
	b := NewBlock(c)
	register(t, b, 2)
	sk5 := register(t, b, 5)
	ct, _, err := c.Encap(b.Digest(), 2, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decap(sk5, 5, mustOpening(t, b, 5), ct)
	wantErr(t, "Decap with slot 5's key and opening", err, ErrDecapsulation)
	_, err = c.Decap(sk5, 2, mustOpening(t, b, 2), ct)
	wantErr(t, "Decap with slot 5's key and slot 2's opening", err, ErrDecapsulation)
}

func TestOutdatedOpeningRejected(t *testing.T) {
	c := testCRS(t, 8)
	b := NewBlock(c)
	sk := register(t, b, 3)
	register(t, b, 4)
	oldDigest, oldOpening := b.Digest(), mustOpening(t, b, 3)
	oldCT, oldKey, err := c.Encap(oldDigest, 3, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	register(t, b, 7)
	newDigest, newOpening := b.Digest(), mustOpening(t, b, 3)
	pk, _ := b.Key(3)
	err = c.VerifyMembership(newDigest, 3, &pk.PK, oldOpening)
	wantErr(t, "VerifyMembership(new digest, old opening)", err, ErrMembership)
	if err := c.VerifyMembership(newDigest, 3, &pk.PK, newOpening); err != nil {
		t.Fatalf("VerifyMembership(new digest, new opening) = %v", err)
	}

	newCT, newKey, err := c.Encap(newDigest, 3, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Decap(sk, 3, oldOpening, newCT)
	wantErr(t, "Decap(new ciphertext, old opening)", err, ErrDecapsulation)
	if got, err := c.Decap(sk, 3, newOpening, newCT); err != nil || !bytes.Equal(got, newKey) {
		t.Fatalf("Decap(new ciphertext, new opening) = %v", err)
	}
	if got, err := c.Decap(sk, 3, oldOpening, oldCT); err != nil || !bytes.Equal(got, oldKey) {
		t.Fatalf("Decap(old ciphertext, old opening) = %v", err)
	}
	parsed, err := ParseCiphertext(oldCT)
	if err != nil || !parsed.Digest.Equal(oldDigest) {
		t.Fatalf("ParseCiphertext(old).Digest does not name the old digest (err %v)", err)
	}
}

func TestWrongKeyFailsMembership(t *testing.T) {
	c := testCRS(t, 8)
	b := NewBlock(c)
	register(t, b, 1)
	register(t, b, 6)
	other, err := c.KeyGen(testKey(t), 6)
	if err != nil {
		t.Fatal(err)
	}
	err = c.VerifyMembership(b.Digest(), 6, &other.PK, mustOpening(t, b, 6))
	wantErr(t, "VerifyMembership(fake key for occupied slot)", err, ErrMembership)
	pk1, _ := b.Key(1)
	err = c.VerifyMembership(b.Digest(), 6, &pk1.PK, mustOpening(t, b, 6))
	wantErr(t, "VerifyMembership(slot 1's key in slot 6)", err, ErrMembership)
	err = c.VerifyNonMembership(b.Digest(), 6, mustOpening(t, b, 6))
	wantErr(t, "VerifyNonMembership(occupied slot)", err, ErrMembership)
}

// A malformed key pk' = pk + δ·P_m with Λ' = Λ − δ·P_(n+1−i+m) passes the
// opening check; only the helper check catches it.
func TestMalformedKeyPassesOpeningFailsHelperCheck(t *testing.T) {
	const n, slot, m = 8, 3, 6
	c := testCRS(t, n)
	b := NewBlock(c)
	sk := testKey(t)
	honest, err := c.KeyGen(sk, slot)
	if err != nil {
		t.Fatal(err)
	}
	register(t, b, 1)
	register(t, b, m)

	malformed := clonePublicKey(honest)
	pm, _ := c.P(m)
	delta := g1Mul(12345, pm)
	malformed.PK.Add(&malformed.PK, delta)
	if err := b.Register(malformed); err == nil {
		t.Fatal("Register(malformed key) = nil")
	} else {
		wantErr(t, "Register(malformed key)", err, ErrInvalidHelpers)
	}
	wantErr(t, "VerifyHelpersNaive(malformed key)", c.VerifyHelpersNaive(malformed), ErrInvalidHelpers)

	// After the honest key is registered, anyone can open slot 3 of the same
	// digest to the malformed key.
	if err := b.Register(honest); err != nil {
		t.Fatal(err)
	}
	pShift, _ := c.P(n + 1 - slot + m)
	forgedLambda := *mustOpening(t, b, slot).Point()
	neg := *g1Mul(12345, pShift)
	neg.Neg()
	forgedLambda.Add(&forgedLambda, &neg)
	o, _ := NewOpening(&forgedLambda)
	if err := c.VerifyMembership(b.Digest(), slot, &malformed.PK, o); err != nil {
		t.Fatalf("VerifyMembership(malformed key, adjusted opening) = %v, want nil", err)
	}
	wantErr(t, "VerifyHelpers(malformed key)", c.VerifyHelpers(malformed, rand.Reader), ErrInvalidHelpers)
}

func TestTamperedHelperRejected(t *testing.T) {
	c := testCRS(t, 8)
	pk, err := c.KeyGen(testKey(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyHelpers(pk, rand.Reader); err != nil {
		t.Fatalf("VerifyHelpers(honest) = %v", err)
	}
	if err := c.VerifyHelpersNaive(pk); err != nil {
		t.Fatalf("VerifyHelpersNaive(honest) = %v", err)
	}
	bad := clonePublicKey(pk)
	bad.Helpers[1].Add(&bad.Helpers[1], bls12381.G1Generator())
	wantErr(t, "VerifyHelpers(tampered)", c.VerifyHelpers(bad, rand.Reader), ErrInvalidHelpers)
	wantErr(t, "VerifyHelpersNaive(tampered)", c.VerifyHelpersNaive(bad), ErrInvalidHelpers)

	short := clonePublicKey(pk)
	short.Helpers = short.Helpers[1:]
	wantErr(t, "VerifyHelpers(n−2 helpers)", c.VerifyHelpers(short, rand.Reader), ErrInvalidHelpers)

	zero := clonePublicKey(pk)
	zero.PK.SetIdentity()
	wantErr(t, "VerifyHelpers(pk = O)", c.VerifyHelpers(zero, rand.Reader), ErrIdentity)

	unset := clonePublicKey(pk)
	unset.Helpers[0] = bls12381.G1{}
	wantErr(t, "VerifyHelpers(unset helper)", c.VerifyHelpers(unset, rand.Reader), ErrInvalidPoint)

	other := testCRS(t, 8)
	wantErr(t, "VerifyHelpers(key for another CRS)", other.VerifyHelpers(pk, rand.Reader), ErrCRSMismatch)
}

func TestSlotBoundsRejected(t *testing.T) {
	c := testCRS(t, 4)
	b := NewBlock(c)
	register(t, b, 1)
	sk := testKey(t)
	for _, slot := range []int{0, -1, 5, 1 << 40} {
		_, err := c.KeyGen(sk, slot)
		wantErr(t, "KeyGen out of range", err, ErrInvalidSlot)
		_, _, err = c.Encap(b.Digest(), slot, rand.Reader)
		wantErr(t, "Encap out of range", err, ErrInvalidSlot)
		_, err = c.Decap(sk, slot, Opening{}, nil)
		wantErr(t, "Decap out of range", err, ErrInvalidSlot)
		_, err = b.Opening(slot)
		wantErr(t, "Opening out of range", err, ErrInvalidSlot)
		wantErr(t, "Remove out of range", b.Remove(slot), ErrInvalidSlot)
		wantErr(t, "VerifyMembership out of range", c.VerifyMembership(b.Digest(), slot, bls12381.G1Generator(), Opening{}), ErrInvalidSlot)
	}
}

func TestBlockSlotStateRejected(t *testing.T) {
	c := testCRS(t, 4)
	b := NewBlock(c)
	sk := register(t, b, 2)
	pk, _ := c.KeyGen(testKey(t), 2)
	wantErr(t, "Register(occupied slot)", b.Register(pk), ErrSlotOccupied)
	wantErr(t, "Remove(empty slot)", b.Remove(3), ErrSlotEmpty)
	delta, err := c.KeyGenDelta(sk, testKey(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, "Rotate(empty slot)", b.Rotate(delta), ErrSlotEmpty)
	_, err = c.KeyGenDelta(sk, sk, 2)
	wantErr(t, "KeyGenDelta(same key)", err, ErrZeroScalar)
	_, _, err = c.Encap(NewBlock(c).Digest(), 1, rand.Reader)
	wantErr(t, "Encap(empty block)", err, ErrIdentity)
}

func TestZeroValuesRejected(t *testing.T) {
	var c CRS
	wantErr(t, "Validate(zero CRS)", c.Validate(), ErrInvalidCRS)
	_, err := c.KeyGen(testKey(t), 1)
	wantErr(t, "KeyGen(zero CRS)", err, ErrInvalidSlot)
	var pk PublicKey
	_, err = pk.Helper(1)
	wantErr(t, "Helper(zero key)", err, ErrInvalidSlot)
	real := testCRS(t, 3)
	wantErr(t, "VerifyContribution(zero proof)", VerifyContribution(real, real, &ContributionProof{}), ErrInvalidPoint)
	wantErr(t, "VerifyHelpers(nil)", real.VerifyHelpers(nil, nil), ErrInvalidPoint)
	_, err = real.Decap(nil, 1, Opening{}, nil)
	wantErr(t, "Decap(nil key)", err, ErrZeroScalar)
}

func TestUninitialisedCRSInCeremony(t *testing.T) {
	start, contribs := ceremony(t, 3, 1)
	err := VerifyContribution(start, &CRS{n: 3}, contribs[0].Proof)
	wantErr(t, "VerifyContribution(uninitialised next)", err, ErrInvalidCRS)
	err = VerifyContribution(&CRS{n: 3}, contribs[0].CRS, contribs[0].Proof)
	wantErr(t, "VerifyContribution(uninitialised prev)", err, ErrInvalidCRS)
}

// Every helper value of every slot is checked, including the step across
// the missing power and the edge slots 1 and n.
func TestHelperCheckEverySlotAndHelper(t *testing.T) {
	for _, n := range []int{2, 3, 5} {
		c := testCRS(t, n)
		for slot := 1; slot <= n; slot++ {
			pk, err := c.KeyGen(testKey(t), slot)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.VerifyHelpers(pk, rand.Reader); err != nil {
				t.Fatalf("n=%d slot %d: VerifyHelpers(honest) = %v", n, slot, err)
			}
			if err := c.verifyHelpersDirect(pk, rand.Reader); err != nil {
				t.Fatalf("n=%d slot %d: verifyHelpersDirect(honest) = %v", n, slot, err)
			}
			for idx := range pk.Helpers {
				bad := clonePublicKey(pk)
				bad.Helpers[idx].Double()
				what := fmt.Sprintf("n=%d slot %d helper for slot %d", n, slot, helperSlot(slot, idx))
				wantErr(t, what+": VerifyHelpers", c.VerifyHelpers(bad, rand.Reader), ErrInvalidHelpers)
				wantErr(t, what+": verifyHelpersDirect", c.verifyHelpersDirect(bad, rand.Reader), ErrInvalidHelpers)
				wantErr(t, what+": VerifyHelpersNaive", c.VerifyHelpersNaive(bad), ErrInvalidHelpers)
			}
			// Scaling pk and every helper together by 2 is consistent with
			// sk' = 2·sk, so it passes; scaling pk alone must fail.
			bad := clonePublicKey(pk)
			bad.PK.Double()
			wantErr(t, fmt.Sprintf("n=%d slot %d: VerifyHelpers(pk doubled)", n, slot), c.VerifyHelpers(bad, rand.Reader), ErrInvalidHelpers)
		}
	}
}
