package rbe

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"testing"

	"github.com/cloudflare/circl/ecc/bls12381"
)

func TestG1DecodingRejections(t *testing.T) {
	offCurve, offSubgroup := badG1(t)
	good := bls12381.G1Generator().BytesCompressed()
	badFlag := append([]byte(nil), good...)
	badFlag[0] |= 0x20 | 0x40 // infinity flag with a nonzero x
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty", nil, ErrInvalidEncoding},
		{"short", good[:47], ErrInvalidEncoding},
		{"long", append(append([]byte(nil), good...), 0), ErrInvalidEncoding},
		{"uncompressed form", bls12381.G1Generator().Bytes(), ErrInvalidEncoding},
		{"off curve", offCurve, ErrInvalidEncoding},
		{"outside subgroup", offSubgroup, ErrInvalidEncoding},
		{"bad flags", badFlag, ErrInvalidEncoding},
		{"x not below p", append([]byte{0x9a}, bytes.Repeat([]byte{0xff}, 47)...), ErrInvalidEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Digest
			wantErr(t, "Digest.UnmarshalBinary", d.UnmarshalBinary(tt.input), tt.want)
			var o Opening
			wantErr(t, "Opening.UnmarshalBinary", o.UnmarshalBinary(tt.input), tt.want)
		})
	}
	_, err := decodeG1(identityG1(), false)
	wantErr(t, "decodeG1(identity) where not allowed", err, ErrIdentity)
	var d Digest
	if err := d.UnmarshalBinary(identityG1()); err != nil || !d.Point().IsIdentity() {
		t.Fatalf("Digest.UnmarshalBinary(identity) = %v, want the empty digest", err)
	}
}

func TestDigestTextAndJSONRoundTrip(t *testing.T) {
	c := testCRS(t, 4)
	b := NewBlock(c)
	register(t, b, 2)
	register(t, b, 3)
	type wire struct {
		Digest  Digest  `json:"digest"`
		Opening Opening `json:"opening"`
	}
	in := wire{Digest: b.Digest(), Opening: mustOpening(t, b, 2)}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out wire
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("json.Unmarshal(%s) = %v", raw, err)
	}
	if !out.Digest.Equal(in.Digest) || !out.Opening.Equal(in.Opening) {
		t.Fatal("digest or opening changed in a JSON round trip")
	}
	var d Digest
	wantErr(t, "UnmarshalText(bad base64)", d.UnmarshalText(bytes.Repeat([]byte("*"), 64)), ErrInvalidEncoding)
	wantErr(t, "UnmarshalText(short)", d.UnmarshalText([]byte("AAAA")), ErrInvalidEncoding)

	// The zero Digest is the digest of an empty block: the identity, in
	// every form.
	var zero Digest
	if !zero.Point().IsIdentity() {
		t.Error("zero Digest: Point() is not the identity")
	}
	if !zero.Equal(NewBlock(c).Digest()) {
		t.Error("zero Digest differs from the digest of an empty block")
	}
	if enc, _ := zero.MarshalBinary(); !bytes.Equal(enc, identityG1()) {
		t.Errorf("zero Digest: MarshalBinary() = %x, want the identity %x", enc, identityG1())
	}
	if want := base64.StdEncoding.EncodeToString(identityG1()); zero.String() != want {
		t.Errorf("zero Digest: String() = %q, want %q", zero.String(), want)
	}
	var zeroOpening Opening
	if !zeroOpening.Point().IsIdentity() {
		t.Error("zero Opening: Point() is not the identity")
	}
}

func TestPublicKeyDecodingRejections(t *testing.T) {
	c := testCRS(t, 4)
	pk, err := c.KeyGen(testKey(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := pk.MarshalBinary()
	var back PublicKey
	if err := back.UnmarshalBinary(enc); err != nil {
		t.Fatalf("PublicKey round trip = %v", err)
	}
	if err := c.VerifyHelpers(&back, rand.Reader); err != nil {
		t.Fatalf("VerifyHelpers(decoded) = %v", err)
	}
	_, offSubgroup := badG1(t)

	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), enc...)) }
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"truncated", enc[:len(enc)-1], ErrInvalidEncoding},
		{"header only", enc[:40], ErrInvalidEncoding},
		{"slot zero", mutate(func(b []byte) []byte { b[35] = 0; return b }), ErrInvalidSlot},
		{"slot above n", mutate(func(b []byte) []byte { b[35] = 5; return b }), ErrInvalidSlot},
		{"huge count", mutate(func(b []byte) []byte { b[36] = 0xff; return b }), ErrInvalidEncoding},
		{"identity key", mutate(func(b []byte) []byte { copy(b[40:], identityG1()); return b }), ErrIdentity},
		{"identity helper", mutate(func(b []byte) []byte { copy(b[88:], identityG1()); return b }), ErrIdentity},
		{"helper outside subgroup", mutate(func(b []byte) []byte { copy(b[136:], offSubgroup); return b }), ErrInvalidEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p PublicKey
			wantErr(t, "PublicKey.UnmarshalBinary", p.UnmarshalBinary(tt.input), tt.want)
		})
	}
}

func TestCRSDecodingRejections(t *testing.T) {
	c := testCRS(t, 3)
	enc, _ := c.MarshalBinary()
	if len(enc) != EncodedCRSSize(3) {
		t.Fatalf("len(CRS encoding) = %d, want %d", len(enc), EncodedCRSSize(3))
	}
	_, offSubgroup := badG1(t)
	g2OffCurve, g2OffSubgroup := badG2(t)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), enc...)) }
	g2Off := crsHeader + 5*G1Size
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty", nil, ErrInvalidEncoding},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), ErrInvalidEncoding},
		{"bad version", mutate(func(b []byte) []byte { b[8] = 2; return b }), ErrInvalidEncoding},
		{"n too small", mutate(func(b []byte) []byte { b[12] = 1; return b }), ErrInvalidBlockSize},
		{"n too large", mutate(func(b []byte) []byte { b[9] = 1; return b }), ErrInvalidBlockSize},
		{"truncated", enc[:len(enc)-1], ErrInvalidEncoding},
		{"identity P", mutate(func(b []byte) []byte { copy(b[crsHeader+G1Size:], identityG1()); return b }), ErrIdentity},
		{"P outside subgroup", mutate(func(b []byte) []byte { copy(b[crsHeader:], offSubgroup); return b }), ErrInvalidEncoding},
		{"identity Q", mutate(func(b []byte) []byte { copy(b[g2Off:], identityG2()); return b }), ErrIdentity},
		{"Q off curve", mutate(func(b []byte) []byte { copy(b[g2Off:], g2OffCurve); return b }), ErrInvalidEncoding},
		{"Q outside subgroup", mutate(func(b []byte) []byte { copy(b[g2Off:], g2OffSubgroup); return b }), ErrInvalidEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCRS(tt.input)
			wantErr(t, "ParseCRS", err, tt.want)
		})
	}
}

func TestContributionProofDecodingRejections(t *testing.T) {
	start, err := NewCeremony(2)
	if err != nil {
		t.Fatal(err)
	}
	_, proof, err := Contribute(start, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := proof.MarshalBinary()
	if len(enc) != ContributionProofSize {
		t.Fatalf("len(proof encoding) = %d, want %d", len(enc), ContributionProofSize)
	}
	var back ContributionProof
	if err := back.UnmarshalBinary(enc); err != nil {
		t.Fatalf("ContributionProof round trip = %v", err)
	}
	g1OffCurve, g1OffSubgroup := badG1(t)
	g2OffCurve, g2OffSubgroup := badG2(t)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), enc...)) }
	rOff, respOff := G2Size, G2Size+G1Size

	// The largest response, q − 1, is accepted.
	qMinusOne := new(big.Int).SetBytes(bls12381.Order())
	qMinusOne.Sub(qMinusOne, big.NewInt(1))
	largest := mutate(func(b []byte) []byte { qMinusOne.FillBytes(b[respOff:]); return b })
	if err := back.UnmarshalBinary(largest); err != nil {
		t.Fatalf("UnmarshalBinary(response q − 1) = %v", err)
	}

	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty", nil, ErrInvalidEncoding},
		{"truncated", enc[:len(enc)-1], ErrInvalidEncoding},
		{"one byte too long", append(append([]byte(nil), enc...), 0), ErrInvalidEncoding},
		{"update key identity", mutate(func(b []byte) []byte { copy(b, identityG2()); return b }), ErrIdentity},
		{"update key off curve", mutate(func(b []byte) []byte { copy(b, g2OffCurve); return b }), ErrInvalidEncoding},
		{"update key outside subgroup", mutate(func(b []byte) []byte { copy(b, g2OffSubgroup); return b }), ErrInvalidEncoding},
		{"commitment identity", mutate(func(b []byte) []byte { copy(b[rOff:], identityG1()); return b }), ErrIdentity},
		{"commitment off curve", mutate(func(b []byte) []byte { copy(b[rOff:], g1OffCurve); return b }), ErrInvalidEncoding},
		{"commitment outside subgroup", mutate(func(b []byte) []byte { copy(b[rOff:], g1OffSubgroup); return b }), ErrInvalidEncoding},
		{"response equal to q", mutate(func(b []byte) []byte { copy(b[respOff:], bls12381.Order()); return b }), ErrInvalidEncoding},
		{"response all ones", mutate(func(b []byte) []byte { copy(b[respOff:], bytes.Repeat([]byte{0xff}, ScalarSize)); return b }), ErrInvalidEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p ContributionProof
			wantErr(t, "ContributionProof.UnmarshalBinary", p.UnmarshalBinary(tt.input), tt.want)
		})
	}
}

func TestCiphertextDecodingRejections(t *testing.T) {
	c := testCRS(t, 4)
	b := NewBlock(c)
	sk := register(t, b, 1)
	ct, _, err := c.Encap(b.Digest(), 1, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if len(ct) != CiphertextSize {
		t.Fatalf("len(ct) = %d, want %d", len(ct), CiphertextSize)
	}
	var one bls12381.Gt
	one.SetIdentity()
	oneEnc, _ := one.MarshalBinary()
	g2OffCurve, g2OffSubgroup := badG2(t)
	ct1Off, ct2Off := 1+G1Size, 1+G1Size+GtSize
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), ct...)) }
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"truncated", ct[:len(ct)-1], ErrInvalidEncoding},
		{"bad version", mutate(func(b []byte) []byte { b[0] = 9; return b }), ErrInvalidEncoding},
		{"identity digest", mutate(func(b []byte) []byte { copy(b[1:], identityG1()); return b }), ErrIdentity},
		{"ct1 outside GT", mutate(func(b []byte) []byte { copy(b[ct1Off:], badGt()); return b }), ErrInvalidEncoding},
		{"ct1 is one", mutate(func(b []byte) []byte { copy(b[ct1Off:], oneEnc); return b }), ErrIdentity},
		{"ct1 not canonical", mutate(func(b []byte) []byte { copy(b[ct1Off:], bytes.Repeat([]byte{0xff}, 48)); return b }), ErrInvalidEncoding},
		{"ct2 identity", mutate(func(b []byte) []byte { copy(b[ct2Off:], identityG2()); return b }), ErrIdentity},
		{"ct2 off curve", mutate(func(b []byte) []byte { copy(b[ct2Off:], g2OffCurve); return b }), ErrInvalidEncoding},
		{"ct2 outside subgroup", mutate(func(b []byte) []byte { copy(b[ct2Off:], g2OffSubgroup); return b }), ErrInvalidEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Decap(sk, 1, mustOpening(t, b, 1), tt.input)
			wantErr(t, "Decap", err, tt.want)
		})
	}
	tag := mutate(func(b []byte) []byte { b[len(b)-1] ^= 1; return b })
	_, err = c.Decap(sk, 1, mustOpening(t, b, 1), tag)
	wantErr(t, "Decap(flipped tag bit)", err, ErrDecapsulation)
}

func TestSecretKeyEncoding(t *testing.T) {
	sk := testKey(t)
	enc, _ := sk.MarshalBinary()
	var back SecretKey
	if err := back.UnmarshalBinary(enc); err != nil || back.s.IsEqual(&sk.s) != 1 {
		t.Fatalf("SecretKey round trip = %v", err)
	}
	var k SecretKey
	wantErr(t, "UnmarshalBinary(zero)", k.UnmarshalBinary(make([]byte, 32)), ErrZeroScalar)
	wantErr(t, "UnmarshalBinary(q)", k.UnmarshalBinary(bls12381.Order()), ErrInvalidEncoding)
	wantErr(t, "UnmarshalBinary(short)", k.UnmarshalBinary(enc[:31]), ErrInvalidEncoding)
	if s := sk.String(); bytes.Contains([]byte(s), enc) || s != "rbe.SecretKey(redacted)" {
		t.Fatalf("String() = %q, want the redacted placeholder", s)
	}
}

func TestDeriveSecretKey(t *testing.T) {
	a, err := DeriveSecretKey([]byte("token"), []byte("10.0.0.1"), []byte("tls-key"))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := DeriveSecretKey([]byte("token"), []byte("10.0.0.1"), []byte("tls-key"))
	if a.s.IsEqual(&again.s) != 1 {
		t.Fatal("DeriveSecretKey is not deterministic")
	}
	// Moving a byte between fields must change the key.
	shifted, _ := DeriveSecretKey([]byte("token1"), []byte("0.0.0.1"), []byte("tls-key"))
	if a.s.IsEqual(&shifted.s) == 1 {
		t.Fatal("DeriveSecretKey confuses field boundaries")
	}
	_, err = DeriveSecretKey(nil, []byte("10.0.0.1"), nil)
	wantErr(t, "DeriveSecretKey(empty token)", err, ErrMissingInput)
}

// The sentinel messages are part of the API: callers may log or match them.
func TestSentinelMessages(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{ErrInvalidEncoding, "rbe: invalid encoding"},
		{ErrIdentity, "rbe: identity element not allowed"},
		{ErrInvalidSlot, "rbe: slot out of range"},
		{ErrInvalidCRS, "rbe: invalid CRS"},
		{ErrInvalidContribution, "rbe: invalid ceremony contribution"},
		{ErrInvalidHelpers, "rbe: helper values do not match the public key"},
		{ErrMembership, "rbe: membership check failed"},
		{ErrDecapsulation, "rbe: decapsulation failed"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("error message = %q, want %q", got, tt.want)
		}
	}
}
