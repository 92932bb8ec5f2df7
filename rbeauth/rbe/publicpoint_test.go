package rbe

import (
	"errors"
	"testing"
)

func TestPublicPointMatchesKeyGen(t *testing.T) {
	const n = 8
	for _, precomputed := range []bool{false, true} {
		c := testCRS(t, n)
		if precomputed {
			c.Precompute()
		}
		sk := testKey(t)
		for slot := 1; slot <= n; slot++ {
			pk, err := c.KeyGen(sk, slot)
			if err != nil {
				t.Fatal(err)
			}
			point, err := c.PublicPoint(sk, slot)
			if err != nil {
				t.Fatal(err)
			}
			if !point.IsEqual(&pk.PK) {
				t.Errorf("precomputed %v, slot %d: PublicPoint differs from KeyGen's key", precomputed, slot)
			}
			enc, err := pk.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			crs, gotSlot, key, err := PublicKeyFields(enc)
			if err != nil || crs != c.Fingerprint() || gotSlot != slot || string(key) != string(point.BytesCompressed()) {
				t.Errorf("PublicKeyFields = %x, %d, %x, %v; want the key's CRS, slot %d and point", crs[:4], gotSlot, key, err, slot)
			}
		}
	}
}

func TestPublicPointRejectsBadInput(t *testing.T) {
	c := testCRS(t, 4)
	sk := testKey(t)
	for _, slot := range []int{0, 5, 9} {
		if _, err := c.PublicPoint(sk, slot); !errors.Is(err, ErrInvalidSlot) {
			t.Errorf("PublicPoint(slot %d) = %v, want ErrInvalidSlot", slot, err)
		}
	}
	if _, err := c.PublicPoint(nil, 1); !errors.Is(err, ErrZeroScalar) {
		t.Errorf("PublicPoint(nil key) = %v, want ErrZeroScalar", err)
	}
	pk, err := c.KeyGen(sk, 1)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := pk.MarshalBinary()
	for _, bad := range [][]byte{nil, enc[:len(enc)-1], append(append([]byte{}, enc...), 0)} {
		if _, _, _, err := PublicKeyFields(bad); !errors.Is(err, ErrInvalidEncoding) {
			t.Errorf("PublicKeyFields(%d bytes) = %v, want ErrInvalidEncoding", len(bad), err)
		}
	}
}
