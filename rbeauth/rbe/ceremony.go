package rbe

import (
	"crypto/rand"
	"fmt"
	"io"

	"github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe/internal/group"
)

// ContributionProofSize is the length of an encoded ContributionProof.
const ContributionProofSize = G2Size + G1Size + ScalarSize

// ContributionProof shows that a ceremony contribution multiplied the
// previous trapdoor by a secret s that the contributor knew:
//
//   - PotPubKey = [s]_2, checked by e(P_1', g2) = e(P_1, PotPubKey);
//   - a Schnorr proof of knowledge of s with P_1' = s·P_1: a commitment
//     R = t·P_1 and a response u = t + c·s, where the challenge c hashes both
//     CRS fingerprints, PotPubKey and R.
//
// This follows Nikolaenko et al., "Powers-of-Tau to the People", ia.cr/2022/1592.
type ContributionProof struct {
	PotPubKey bls12381.G2
	R         bls12381.G1
	Response  bls12381.Scalar
}

// Contribution is one step of a ceremony transcript: the CRS a contributor
// published and the proof that links it to the previous CRS.
type Contribution struct {
	CRS   *CRS
	Proof *ContributionProof
}

// NewCeremony returns the starting point of a ceremony for block size n: the
// CRS with trapdoor 1, in which every P_k is g1 and every Q_k is g2. It is
// public and insecure until at least one honest contribution follows.
func NewCeremony(n int) (*CRS, error) {
	var one bls12381.Scalar
	one.SetOne()
	c, err := NewCRSFromTrapdoor(n, &one)
	if err != nil {
		return nil, fmt.Errorf("start ceremony: %w", err)
	}
	return c, nil
}

// Contribute re-randomises crs with a fresh secret s drawn from rnd, mapping
// P_k to s^k·P_k and Q_k to s^k·Q_k, so the (n+1)-th power stays missing. It
// returns the new CRS and the proof for the transcript. The secret is cleared
// before Contribute returns; the contributor must also make sure rnd keeps no
// copy (use crypto/rand.Reader).
//
// The caller should check crs first (VerifyTranscript, or Validate for the
// starting point): Contribute trusts its input.
func Contribute(crs *CRS, rnd io.Reader) (*CRS, *ContributionProof, error) {
	s, err := randomNonzeroScalar(rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("contribute to ceremony: %w", err)
	}
	defer func() { *s = bls12381.Scalar{} }()
	var one bls12381.Scalar
	one.SetOne()
	if s.IsEqual(&one) == 1 {
		return nil, nil, fmt.Errorf("contribute to ceremony: random source returned 1: %w", ErrInvalidContribution)
	}

	next := applyUpdate(crs, s)
	proof, err := proveContribution(crs, next, s, rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("contribute to ceremony: %w", err)
	}
	return next, proof, nil
}

// applyUpdate returns the CRS with P_k ↦ s^k·P_k and Q_k ↦ s^k·Q_k.
func applyUpdate(crs *CRS, s *bls12381.Scalar) *CRS {
	n := crs.n
	next := &CRS{n: n, p: make([]bls12381.G1, 2*n), q: make([]bls12381.G2, n)}
	var power bls12381.Scalar
	power.SetOne()
	for k := 1; k <= 2*n; k++ {
		power.Mul(&power, s)
		if k == n+1 {
			continue
		}
		next.p[k-1].ScalarMult(&power, &crs.p[k-1])
		if k <= n {
			next.q[k-1].ScalarMult(&power, &crs.q[k-1])
		}
	}
	power = bls12381.Scalar{}
	next.finish()
	return next
}

func proveContribution(prev, next *CRS, s *bls12381.Scalar, rnd io.Reader) (*ContributionProof, error) {
	t, err := randomNonzeroScalar(rnd)
	if err != nil {
		return nil, err
	}
	defer func() { *t = bls12381.Scalar{} }()
	proof := new(ContributionProof)
	proof.PotPubKey.ScalarMult(s, bls12381.G2Generator())
	proof.R.ScalarMult(t, &prev.p[0])
	c := contributionChallenge(prev, next, &proof.PotPubKey, &proof.R)
	proof.Response.Mul(c, s)
	proof.Response.Add(&proof.Response, t)
	return proof, nil
}

func contributionChallenge(prev, next *CRS, pub *bls12381.G2, r *bls12381.G1) *bls12381.Scalar {
	prevFP, nextFP := prev.Fingerprint(), next.Fingerprint()
	msg := make([]byte, 0, 64+G2Size+G1Size)
	msg = append(msg, prevFP[:]...)
	msg = append(msg, nextFP[:]...)
	msg = append(msg, pub.BytesCompressed()...)
	msg = append(msg, r.BytesCompressed()...)
	return hashToScalar([]byte(dstCeremony), msg)
}

// VerifyContribution checks that next is a well-formed CRS (Validate) that
// arose from prev by a contribution with the given proof, and that the
// update was neither zero nor one.
func VerifyContribution(prev, next *CRS, proof *ContributionProof) error {
	return verifyContribution(prev, next, proof, rand.Reader)
}

func verifyContribution(prev, next *CRS, proof *ContributionProof, rnd io.Reader) error {
	if prev == nil || next == nil || proof == nil {
		return fmt.Errorf("verify contribution: missing CRS or proof: %w", ErrInvalidContribution)
	}
	if next.n != prev.n {
		return fmt.Errorf("verify contribution: block size %d after %d: %w", next.n, prev.n, ErrCRSMismatch)
	}
	if !prev.isInitialised() || !next.isInitialised() {
		return fmt.Errorf("verify contribution: CRS not initialised, build it with ParseCRS or a ceremony: %w", ErrInvalidCRS)
	}
	if !isSetG2(&proof.PotPubKey) || !isSetG1(&proof.R) {
		return fmt.Errorf("verify contribution: %w", ErrInvalidPoint)
	}
	if proof.PotPubKey.IsIdentity() {
		return fmt.Errorf("verify contribution: update is zero: %w", ErrInvalidContribution)
	}
	if proof.PotPubKey.IsEqual(bls12381.G2Generator()) || next.p[0].IsEqual(&prev.p[0]) {
		return fmt.Errorf("verify contribution: update is one (no change): %w", ErrInvalidContribution)
	}
	if err := next.validate(rnd); err != nil {
		return fmt.Errorf("verify contribution: %w", err)
	}

	// e(P_1', g2) = e(P_1, [s]_2): the new first power is s times the old one.
	if !group.PairingProductIsOne(
		[]*bls12381.G1{&next.p[0], &prev.p[0]},
		[]*bls12381.G2{bls12381.G2Generator(), &proof.PotPubKey},
		[]int{1, -1},
	) {
		return fmt.Errorf("verify contribution: update key does not match the first power: %w", ErrInvalidContribution)
	}

	// Schnorr: u·P_1 = R + c·P_1'.
	c := contributionChallenge(prev, next, &proof.PotPubKey, &proof.R)
	var lhs, rhs bls12381.G1
	lhs.ScalarMult(&proof.Response, &prev.p[0])
	rhs.ScalarMult(c, &next.p[0])
	rhs.Add(&rhs, &proof.R)
	if !lhs.IsEqual(&rhs) {
		return fmt.Errorf("verify contribution: proof of knowledge does not verify: %w", ErrInvalidContribution)
	}
	return nil
}

// VerifyTranscript checks a whole ceremony: the starting CRS must be well
// formed (Validate), there must be at least one contribution, and each must
// verify against the CRS before it (VerifyContribution). It returns the final
// CRS, which is secure if any one contributor drew its secret honestly and
// erased it.
func VerifyTranscript(initial *CRS, contributions []Contribution) (*CRS, error) {
	if initial == nil {
		return nil, fmt.Errorf("verify transcript: missing starting CRS: %w", ErrInvalidCRS)
	}
	if err := initial.validate(rand.Reader); err != nil {
		return nil, fmt.Errorf("verify transcript: starting CRS: %w", err)
	}
	if len(contributions) == 0 {
		return nil, fmt.Errorf("verify transcript: no contributions, so the trapdoor of the starting CRS is known: %w", ErrInvalidContribution)
	}
	prev := initial
	for i, ct := range contributions {
		if err := verifyContribution(prev, ct.CRS, ct.Proof, rand.Reader); err != nil {
			return nil, fmt.Errorf("verify transcript: contribution %d: %w", i+1, err)
		}
		prev = ct.CRS
	}
	return prev, nil
}

// MarshalBinary returns PotPubKey (96 bytes, compressed G2), R (48 bytes,
// compressed G1) and Response (32 bytes, big-endian).
func (p *ContributionProof) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, ContributionProofSize)
	out = append(out, p.PotPubKey.BytesCompressed()...)
	out = append(out, p.R.BytesCompressed()...)
	resp, err := p.Response.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode contribution proof: %w", err)
	}
	return append(out, resp...), nil
}

// UnmarshalBinary parses the encoding of MarshalBinary. PotPubKey and R must
// be non-identity points in their subgroups; Response must be below q.
func (p *ContributionProof) UnmarshalBinary(b []byte) error {
	if len(b) != ContributionProofSize {
		return fmt.Errorf("decode contribution proof of %d bytes, want %d: %w", len(b), ContributionProofSize, ErrInvalidEncoding)
	}
	pub, err := decodeG2(b[:G2Size], false)
	if err != nil {
		return fmt.Errorf("decode contribution proof: update key: %w", err)
	}
	r, err := decodeG1(b[G2Size:G2Size+G1Size], false)
	if err != nil {
		return fmt.Errorf("decode contribution proof: commitment: %w", err)
	}
	var resp bls12381.Scalar
	if err := resp.UnmarshalBinary(b[G2Size+G1Size:]); err != nil {
		return fmt.Errorf("decode contribution proof: response not below the group order: %w", ErrInvalidEncoding)
	}
	p.PotPubKey, p.R, p.Response = pub, r, resp
	return nil
}
