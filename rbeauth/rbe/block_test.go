package rbe

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func TestRotateKeepsSlotDecryptable(t *testing.T) {
	c := testCRS(t, 6)
	b := NewBlock(c)
	oldSK := register(t, b, 4)
	register(t, b, 1)
	newSK := testKey(t)
	delta, err := c.KeyGenDelta(oldSK, newSK, 4)
	if err != nil {
		t.Fatal(err)
	}
	v := b.Version()
	if err := b.Rotate(delta); err != nil {
		t.Fatalf("Rotate = %v", err)
	}
	if b.Version() != v+1 {
		t.Fatalf("Version after Rotate = %d, want %d", b.Version(), v+1)
	}
	want, _ := c.KeyGen(newSK, 4)
	stored, _ := b.Key(4)
	if !stored.PK.IsEqual(&want.PK) {
		t.Fatal("stored key after Rotate is not newSK·P_4")
	}
	if err := c.VerifyMembership(b.Digest(), 4, &want.PK, mustOpening(t, b, 4)); err != nil {
		t.Fatalf("VerifyMembership(rotated key) = %v", err)
	}
	ct, key, err := c.Encap(b.Digest(), 4, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Decap(newSK, 4, mustOpening(t, b, 4), ct); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Decap(new key) = %v", err)
	}
	_, err = c.Decap(oldSK, 4, mustOpening(t, b, 4), ct)
	wantErr(t, "Decap(old key after rotation)", err, ErrDecapsulation)
}

func TestRemoveRestoresState(t *testing.T) {
	c := testCRS(t, 6)
	b := NewBlock(c)
	register(t, b, 2)
	register(t, b, 5)
	before := b.Digest()
	beforeOpenings := make([]Opening, 6)
	for i := range beforeOpenings {
		beforeOpenings[i] = mustOpening(t, b, i+1)
	}

	oldSK := register(t, b, 3)
	delta, _ := c.KeyGenDelta(oldSK, testKey(t), 3)
	if err := b.Rotate(delta); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(3); err != nil {
		t.Fatalf("Remove(3) = %v", err)
	}
	if !b.Digest().Equal(before) {
		t.Fatal("digest after register, rotate and remove differs from before")
	}
	for i := range beforeOpenings {
		if !mustOpening(t, b, i+1).Equal(beforeOpenings[i]) {
			t.Fatalf("opening of slot %d differs after remove", i+1)
		}
	}
	if _, ok := b.Key(3); ok {
		t.Fatal("Key(3) present after Remove")
	}
	if err := c.VerifyNonMembership(b.Digest(), 3, mustOpening(t, b, 3)); err != nil {
		t.Fatalf("VerifyNonMembership(removed slot) = %v", err)
	}
	// The slot can be registered again.
	sk := register(t, b, 3)
	ct, key, err := c.Encap(b.Digest(), 3, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Decap(sk, 3, mustOpening(t, b, 3), ct); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Decap after re-registration = %v", err)
	}
}

func TestBlockReplayIsDeterministic(t *testing.T) {
	c := testCRS(t, 5)
	var keys []*PublicKey
	for _, slot := range []int{5, 1, 3} {
		pk, err := c.KeyGen(testKey(t), slot)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, pk)
	}
	replay := func() *Block {
		b := NewBlock(c)
		for _, pk := range keys {
			if err := b.Register(pk); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Remove(1); err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := replay(), replay()
	if !a.Digest().Equal(b.Digest()) || a.Version() != b.Version() || a.Version() != 4 {
		t.Fatalf("replays differ: versions %d and %d", a.Version(), b.Version())
	}
	for slot := 1; slot <= 5; slot++ {
		if !mustOpening(t, a, slot).Equal(mustOpening(t, b, slot)) {
			t.Fatalf("replays differ in the opening of slot %d", slot)
		}
	}
}

func TestBatchMembership(t *testing.T) {
	c := testCRS(t, 8)
	b := NewBlock(c)
	var proofs []MembershipProof
	for _, slot := range []int{1, 2, 5, 8} {
		register(t, b, slot)
	}
	for _, slot := range []int{1, 2, 5, 8, 5} {
		pk, _ := b.Key(slot)
		proofs = append(proofs, MembershipProof{Slot: slot, PK: pk.PK, Opening: mustOpening(t, b, slot)})
	}
	if err := c.VerifyMemberships(b.Digest(), proofs, rand.Reader); err != nil {
		t.Fatalf("VerifyMemberships(valid) = %v", err)
	}
	bad := append([]MembershipProof(nil), proofs...)
	bad[2].Opening = mustOpening(t, b, 1)
	wantErr(t, "VerifyMemberships(one wrong opening)", c.VerifyMemberships(b.Digest(), bad, rand.Reader), ErrMembership)
	bad = append([]MembershipProof(nil), proofs...)
	bad[0].Slot = 3
	wantErr(t, "VerifyMemberships(wrong slot)", c.VerifyMemberships(b.Digest(), bad, rand.Reader), ErrMembership)
	bad = append([]MembershipProof(nil), proofs...)
	bad[1].Slot = 9
	wantErr(t, "VerifyMemberships(slot out of range)", c.VerifyMemberships(b.Digest(), bad, rand.Reader), ErrInvalidSlot)
}

func TestReplayUncheckedMatchesChecked(t *testing.T) {
	c := testCRS(t, 5)
	sk := testKey(t)
	pk, _ := c.KeyGen(sk, 2)
	other, _ := c.KeyGen(testKey(t), 4)
	delta, _ := c.KeyGenDelta(sk, testKey(t), 2)

	checked, replayed := NewBlock(c), NewBlock(c)
	for _, step := range []func(*Block) error{
		func(b *Block) error { return b.Register(pk) },
		func(b *Block) error { return b.Register(other) },
		func(b *Block) error { return b.Rotate(delta) },
	} {
		if err := step(checked); err != nil {
			t.Fatal(err)
		}
	}
	for _, err := range []error{replayed.RegisterUnchecked(pk), replayed.RegisterUnchecked(other), replayed.RotateUnchecked(delta)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !checked.Digest().Equal(replayed.Digest()) || checked.Version() != replayed.Version() {
		t.Fatal("unchecked replay differs from checked registration")
	}
	for slot := 1; slot <= 5; slot++ {
		if !mustOpening(t, checked, slot).Equal(mustOpening(t, replayed, slot)) {
			t.Fatalf("unchecked replay differs in the opening of slot %d", slot)
		}
	}
	zero := clonePublicKey(pk)
	zero.PK.SetIdentity()
	wantErr(t, "RegisterUnchecked(pk = O)", NewBlock(c).RegisterUnchecked(zero), ErrIdentity)
	wantErr(t, "RegisterUnchecked(occupied)", replayed.RegisterUnchecked(pk), ErrSlotOccupied)
}

func TestCRSConcurrentUse(t *testing.T) {
	c := testCRS(t, 4)
	blk := NewBlock(c)
	sk := register(t, blk, 1)
	digest, open := blk.Digest(), mustOpening(t, blk, 1)
	done := make(chan error, 4)
	go func() { c.Precompute(); done <- nil }()
	for range 3 {
		go func() {
			if _, err := c.KeyGen(sk, 2); err != nil {
				done <- err
				return
			}
			ct, key, err := c.Encap(digest, 1, rand.Reader)
			if err != nil {
				done <- err
				return
			}
			got, err := c.Decap(sk, 1, open, ct)
			if err == nil && !bytes.Equal(got, key) {
				err = ErrDecapsulation
			}
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatalf("concurrent KeyGen/Encap/Decap = %v", err)
		}
	}
}
