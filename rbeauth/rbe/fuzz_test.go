package rbe

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

// Every fuzz target checks that a decoder never panics and that whatever it
// accepts re-encodes to the same bytes (one encoding per value).

func FuzzDigest(f *testing.F) {
	offCurve, offSubgroup := badG1(f)
	for _, seed := range [][]byte{bls12381.G1Generator().BytesCompressed(), identityG1(), offCurve, offSubgroup, bls12381.G1Generator().Bytes(), {}} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Digest
		if d.UnmarshalBinary(b) == nil {
			if out, _ := d.MarshalBinary(); !bytes.Equal(out, b) {
				t.Fatalf("Digest round trip changed %x to %x", b, out)
			}
		}
		var o Opening
		if o.UnmarshalBinary(b) == nil {
			if out, _ := o.MarshalBinary(); !bytes.Equal(out, b) {
				t.Fatalf("Opening round trip changed %x to %x", b, out)
			}
		}
	})
}

func FuzzDigestText(f *testing.F) {
	g, _ := Digest{p: *bls12381.G1Generator()}.MarshalText()
	f.Add(g)
	f.Add([]byte("wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
	f.Add([]byte("not base64"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Digest
		if d.UnmarshalText(b) == nil {
			if out, _ := d.MarshalText(); !bytes.Equal(out, b) {
				t.Fatalf("Digest text round trip changed %q to %q", b, out)
			}
		}
		var o Opening
		_ = o.UnmarshalText(b)
	})
}

func FuzzPublicKey(f *testing.F) {
	c := testCRS(f, 3)
	pk, err := c.KeyGen(testKey(f), 2)
	if err != nil {
		f.Fatal(err)
	}
	enc, _ := pk.MarshalBinary()
	f.Add(enc)
	f.Add(enc[:40])
	f.Add(append(append([]byte(nil), enc[:40]...), identityG1()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p PublicKey
		if p.UnmarshalBinary(b) != nil {
			return
		}
		if out, _ := p.MarshalBinary(); !bytes.Equal(out, b) {
			t.Fatalf("PublicKey round trip changed the encoding")
		}
		// The helper check must not panic on any decoded key.
		_ = c.VerifyHelpers(&p, rand.Reader)
	})
}

// FuzzPublicKeyFields checks that PublicKeyFields never panics and that the
// fields it returns rebuild the input. It must also accept every encoding
// that PublicKey.UnmarshalBinary accepts, with the same fields.
func FuzzPublicKeyFields(f *testing.F) {
	c := testCRS(f, 3)
	pk, err := c.KeyGen(testKey(f), 2)
	if err != nil {
		f.Fatal(err)
	}
	enc, _ := pk.MarshalBinary()
	f.Add(enc)
	f.Add(enc[:publicKeyHeader+G1Size])
	f.Add(enc[:len(enc)-1])
	tooManyHelpers := append([]byte(nil), enc...)
	tooManyHelpers[36] = 0xff
	f.Add(tooManyHelpers)
	f.Fuzz(func(t *testing.T, b []byte) {
		crs, slot, key, err := PublicKeyFields(b)
		var decoded PublicKey
		decodeErr := decoded.UnmarshalBinary(b)
		if err != nil {
			if decodeErr == nil {
				t.Fatalf("PublicKeyFields rejected an encoding that UnmarshalBinary accepts: %v", err)
			}
			return
		}
		rebuilt := append([]byte(nil), crs[:]...)
		rebuilt = binary.BigEndian.AppendUint32(rebuilt, uint32(slot))
		rebuilt = append(rebuilt, b[36:publicKeyHeader]...)
		rebuilt = append(rebuilt, key...)
		rebuilt = append(rebuilt, b[publicKeyHeader+G1Size:]...)
		if !bytes.Equal(rebuilt, b) {
			t.Fatal("PublicKeyFields returned fields that do not rebuild the input")
		}
		if decodeErr != nil {
			return
		}
		if crs != decoded.CRS || slot != decoded.Slot || !bytes.Equal(key, decoded.PK.BytesCompressed()) {
			t.Fatalf("PublicKeyFields = %x, %d, %x; UnmarshalBinary gave %x, %d, %x",
				crs[:4], slot, key, decoded.CRS[:4], decoded.Slot, decoded.PK.BytesCompressed())
		}
	})
}

func FuzzCRS(f *testing.F) {
	c := testCRS(f, 2)
	enc, _ := c.MarshalBinary()
	f.Add(enc)
	f.Add(enc[:crsHeader])
	start, _ := NewCeremony(2)
	s, _ := start.MarshalBinary()
	f.Add(s)
	f.Fuzz(func(t *testing.T, b []byte) {
		parsed, err := ParseCRS(b)
		if err != nil {
			return
		}
		if out, _ := parsed.MarshalBinary(); !bytes.Equal(out, b) {
			t.Fatalf("CRS round trip changed the encoding")
		}
	})
}

func FuzzContributionProof(f *testing.F) {
	start, _ := NewCeremony(2)
	_, proof, err := Contribute(start, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	enc, _ := proof.MarshalBinary()
	f.Add(enc)
	f.Add(make([]byte, ContributionProofSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p ContributionProof
		if p.UnmarshalBinary(b) != nil {
			return
		}
		if out, _ := p.MarshalBinary(); !bytes.Equal(out, b) {
			t.Fatalf("ContributionProof round trip changed the encoding")
		}
	})
}

func FuzzCiphertext(f *testing.F) {
	c := testCRS(f, 2)
	b := NewBlock(c)
	sk := register(f, b, 1)
	ct, _, err := c.Encap(b.Digest(), 1, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	open := mustOpening(f, b, 1)
	f.Add(ct)
	bad := append([]byte(nil), ct...)
	copy(bad[1+G1Size:], badGt())
	f.Add(bad)
	f.Add(ct[:100])
	f.Fuzz(func(t *testing.T, raw []byte) {
		parsed, err := ParseCiphertext(raw)
		if err != nil {
			return
		}
		if out := parsed.marshal(); !bytes.Equal(out, raw) {
			t.Fatalf("Ciphertext round trip changed the encoding")
		}
		// Decap must not panic; a changed ciphertext must not decapsulate.
		if _, err := c.Decap(sk, 1, open, raw); err == nil && !bytes.Equal(raw, ct) {
			t.Fatalf("Decap accepted a modified ciphertext")
		}
	})
}

func FuzzSecretKey(f *testing.F) {
	f.Add(make([]byte, 32))
	f.Add(bls12381.Order())
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var k SecretKey
		if k.UnmarshalBinary(b) != nil {
			return
		}
		if out, _ := k.MarshalBinary(); !bytes.Equal(out, b) {
			t.Fatalf("SecretKey round trip changed the encoding")
		}
	})
}

func FuzzDeriveSecretKey(f *testing.F) {
	f.Add([]byte("token"), []byte("10.0.0.1"), []byte("key"))
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, token, ip, key []byte) {
		sk, err := DeriveSecretKey(token, ip, key)
		if err == nil && sk.s.IsZero() == 1 {
			t.Fatal("DeriveSecretKey returned a zero key")
		}
	})
}
