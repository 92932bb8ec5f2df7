package rbe

import (
	"bytes"
	"crypto/rand"
	mrand "math/rand/v2"
	"testing"
)

func TestCRSIdentityHoldsForEverySlot(t *testing.T) {
	c := testCRS(t, 8)
	for i := 1; i <= 8; i++ {
		p, _ := c.P(i)
		q, _ := c.Q(9 - i)
		if got := pairG(p, q); !got.IsEqual(c.Z()) {
			t.Fatalf("e(P_%d, Q_%d) != Z", i, 9-i)
		}
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
}

func TestKEMRoundTripEverySlot(t *testing.T) {
	const n = 8
	c := testCRS(t, n)
	b := NewBlock(c)
	keys := make(map[int]*SecretKey)
	// Register half the slots, encrypt to them, then fill the rest.
	for _, phase := range [][]int{{1, 3, 5, 8}, {2, 4, 6, 7}} {
		for _, slot := range phase {
			keys[slot] = register(t, b, slot)
		}
		for slot, sk := range keys {
			ct, key, err := c.Encap(b.Digest(), slot, rand.Reader)
			if err != nil {
				t.Fatalf("Encap(slot %d) = %v", slot, err)
			}
			got, err := c.Decap(sk, slot, mustOpening(t, b, slot), ct)
			if err != nil {
				t.Fatalf("Decap(slot %d) = %v", slot, err)
			}
			if !bytes.Equal(got, key) {
				t.Fatalf("Decap(slot %d) key differs from Encap key", slot)
			}
		}
	}
}

func TestRandomBlocksCorrect(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for trial := range 3 {
		n := 2 + r.IntN(14)
		c := testCRS(t, n)
		b := NewBlock(c)
		keys := make(map[int]*SecretKey)
		for _, slot := range r.Perm(n)[:1+r.IntN(n)] {
			keys[slot+1] = register(t, b, slot+1)
		}
		for slot := 1; slot <= n; slot++ {
			sk, ok := keys[slot]
			o := mustOpening(t, b, slot)
			if !ok {
				if err := c.VerifyNonMembership(b.Digest(), slot, o); err != nil {
					t.Fatalf("trial %d n=%d: VerifyNonMembership(empty slot %d) = %v", trial, n, slot, err)
				}
				continue
			}
			pk, _ := b.Key(slot)
			if err := c.VerifyMembership(b.Digest(), slot, &pk.PK, o); err != nil {
				t.Fatalf("trial %d n=%d: VerifyMembership(slot %d) = %v", trial, n, slot, err)
			}
			ct, key, err := c.Encap(b.Digest(), slot, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Decap(sk, slot, o, ct)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("trial %d n=%d: Decap(slot %d) = %x, %v; want %x", trial, n, slot, got, err, key)
			}
		}
	}
}
