package rbe

import (
	"crypto/rand"
	"fmt"
	"io"

	"github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe/internal/group"
)

// VerifyMembership checks that opening proves pk in slot i under digest:
//
//	e(C_k − pk, Q_(n+1−i)) = e(Λ_i, g2),
//
// computed as one product of two pairings with a shared Miller loop and one
// final exponentiation (group.PreparedProductIsOne). Both G2 points are
// fixed, so their Miller-loop lines are prepared once per slot and process,
// and the first check in a slot costs about one pairing more. A test in
// internal/group checks that the product equals circl's ProdPairFrac.
//
// NOTE: position binding holds only for keys that passed the helper check. A
// malformed pk' = pk + δ·P_m with Λ' = Λ − δ·P_(n+1−i+m) passes this check, so
// an audit must also check (or trust the log record of) the helper values.
func (c *CRS) VerifyMembership(digest Digest, slot int, pk *bls12381.G1, opening Opening) error {
	if err := c.checkSlot("verify membership", slot); err != nil {
		return err
	}
	if pk == nil || !isSetG1(pk) {
		return fmt.Errorf("verify membership: public key: %w", ErrInvalidPoint)
	}
	if pk.IsIdentity() {
		return fmt.Errorf("verify membership in slot %d: public key: %w", slot, ErrIdentity)
	}
	return c.verifyOpening("verify membership", digest, slot, pk, opening)
}

// VerifyNonMembership checks that opening proves slot i empty under digest:
// the membership equation with pk = O.
func (c *CRS) VerifyNonMembership(digest Digest, slot int, opening Opening) error {
	if err := c.checkSlot("verify non-membership", slot); err != nil {
		return err
	}
	var zero bls12381.G1
	zero.SetIdentity()
	return c.verifyOpening("verify non-membership", digest, slot, &zero, opening)
}

func (c *CRS) verifyOpening(op string, digest Digest, slot int, pk *bls12381.G1, opening Opening) error {
	var lhs bls12381.G1
	neg := *pk
	neg.Neg()
	lhs.Add(digest.point(), &neg)
	if !group.PreparedProductIsOne(
		[]*bls12381.G1{&lhs, opening.point()},
		[]*group.PreparedG2{c.preparedQ(c.n - slot), preparedG2Generator()},
		[]int{1, -1},
	) {
		return fmt.Errorf("%s in slot %d: %w", op, slot, ErrMembership)
	}
	return nil
}

// MembershipProof is one claim for VerifyMemberships: PK sits in Slot, as
// shown by Opening.
type MembershipProof struct {
	Slot    int
	PK      bls12381.G1
	Opening Opening
}

// VerifyMemberships checks many membership proofs against one digest at
// once. With random 128-bit coefficients ρ_m from rnd (crypto/rand.Reader if
// nil) it checks
//
//	Π_slots e(Σ_(m in slot) ρ_m·(C_k − pk_m), Q_(n+1−slot)) · e(−Σ_m ρ_m·Λ_m, g2) = 1,
//
// one multi-pairing with one pair per distinct slot plus one, and one final
// exponentiation. If any proof is wrong it fails except with probability at
// most 2^-127; it does not say which proof is wrong (check them one by one
// with VerifyMembership to find out).
func (c *CRS) VerifyMemberships(digest Digest, proofs []MembershipProof, rnd io.Reader) error {
	if len(proofs) == 0 {
		return nil
	}
	for m := range proofs {
		if err := c.checkSlot("verify memberships", proofs[m].Slot); err != nil {
			return fmt.Errorf("proof %d: %w", m, err)
		}
		if !isSetG1(&proofs[m].PK) {
			return fmt.Errorf("verify memberships: proof %d: public key: %w", m, ErrInvalidPoint)
		}
		if proofs[m].PK.IsIdentity() {
			return fmt.Errorf("verify memberships: proof %d: public key: %w", m, ErrIdentity)
		}
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	rho, err := randomShortScalars(rnd, len(proofs))
	if err != nil {
		return fmt.Errorf("verify memberships: %w", err)
	}

	type slotTerms struct {
		points  []bls12381.G1
		scalars [][]byte
	}
	bySlot := make(map[int]*slotTerms)
	var order []int
	openings := make([]bls12381.G1, len(proofs))
	for m := range proofs {
		p := &proofs[m]
		var diff bls12381.G1
		neg := p.PK
		neg.Neg()
		diff.Add(digest.point(), &neg)
		t := bySlot[p.Slot]
		if t == nil {
			t = &slotTerms{}
			bySlot[p.Slot] = t
			order = append(order, p.Slot)
		}
		t.points = append(t.points, diff)
		t.scalars = append(t.scalars, rho[m])
		openings[m] = *p.Opening.point()
	}

	g1s := make([]*bls12381.G1, 0, len(order)+1)
	g2s := make([]*group.PreparedG2, 0, len(order)+1)
	signs := make([]int, 0, len(order)+1)
	for _, slot := range order {
		t := bySlot[slot]
		sum, err := group.MSM(t.points, t.scalars)
		if err != nil {
			return fmt.Errorf("verify memberships: %w", err)
		}
		g1s = append(g1s, &sum)
		g2s = append(g2s, c.preparedQ(c.n-slot))
		signs = append(signs, 1)
	}
	lam, err := group.MSM(openings, rho)
	if err != nil {
		return fmt.Errorf("verify memberships: %w", err)
	}
	g1s = append(g1s, &lam)
	g2s = append(g2s, preparedG2Generator())
	signs = append(signs, -1)
	if !group.PreparedProductIsOne(g1s, g2s, signs) {
		return fmt.Errorf("verify memberships of %d proofs: %w", len(proofs), ErrMembership)
	}
	return nil
}
