package rbeauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	bls12381 "github.com/cloudflare/circl/ecc/bls12381"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// TrustedCheckpoint returns the newest checkpoint this node has verified
// under the witness policy, or nil before the first one. The node agent's
// log monitor provides it.
type TrustedCheckpoint func() *curator.Checkpoint

// CuratorRegistry checks registrations against the curator's log. It
// trusts the log only through the witness policy and the node's own
// checkpoint: a stapled bundle must be consistent with it, so each
// handshake also works as gossip that exposes a split view.
type CuratorRegistry struct {
	policy  *curator.Policy
	crs     *rbe.CRS
	client  *curator.Client
	trusted TrustedCheckpoint
	logKey  note.Verifier
	now     func() time.Time
}

// NewCuratorRegistry returns a registry. client is used only when a peer
// staples a bundle older than the node's checkpoint, to check that the
// peer's entry is still its ID's current one.
func NewCuratorRegistry(policy *curator.Policy, crs *rbe.CRS, client *curator.Client, trusted TrustedCheckpoint) (*CuratorRegistry, error) {
	if policy == nil || crs == nil || client == nil || trusted == nil {
		return nil, errors.New("new curator registry: policy, CRS, client and trusted checkpoint are all required")
	}
	return &CuratorRegistry{policy: policy, crs: crs, client: client, trusted: trusted, logKey: policy.Log, now: time.Now}, nil
}

// VerifyRegistration implements Registry.
func (r *CuratorRegistry) VerifyRegistration(ctx context.Context, claim RegistrationClaim) (Checkpoint, error) {
	staple, err := ParseStaple(claim.Bundle)
	if err != nil {
		return Checkpoint{}, err
	}
	id := curator.ID(claim.ID)
	reg, err := curator.VerifyBundle(staple.Bundle, r.policy, id, r.now())
	switch {
	case errors.Is(err, curator.ErrQuorum) || errors.Is(err, curator.ErrStale):
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpointQuorum, err)
	case err != nil:
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrRegistrationMissing, err)
	}
	if err := r.checkAgainstTrusted(ctx, reg); err != nil {
		return Checkpoint{}, err
	}
	if reg.PodIP.Unmap() != claim.PeerIP.Unmap() {
		return Checkpoint{}, fmt.Errorf("%w: registered for IP %s, the peer is %s", ErrRegistrationKey, reg.PodIP, claim.PeerIP)
	}
	if reg.TLSKeyHash != sha256.Sum256(claim.TLSPublicKey) {
		return Checkpoint{}, fmt.Errorf("%w: registered for another TLS key", ErrRegistrationKey)
	}
	if err := r.checkMembership(reg, staple, claim); err != nil {
		return Checkpoint{}, err
	}
	return Checkpoint{Size: uint64(reg.Tree.N), RootHash: reg.Tree.Hash}, nil
}

// checkAgainstTrusted compares the bundle's checkpoint with the node's.
// Equal sizes must have equal roots. A newer bundle must extend the node's
// tree. An older one must still name the ID's current entry at the node's
// checkpoint, which an online query answers; that is what rejects a proof
// replayed after its ID was re-registered.
func (r *CuratorRegistry) checkAgainstTrusted(ctx context.Context, reg *curator.Registration) error {
	trusted := r.trusted()
	if trusted == nil {
		return nil
	}
	bundleTree := reg.Checkpoint.Tree
	switch {
	case bundleTree.N == trusted.Tree.N:
		if bundleTree.Hash != trusted.Tree.Hash {
			return fmt.Errorf("%w: peer's checkpoint of size %d has root %v, this node's %v", ErrLogFork, bundleTree.N, bundleTree.Hash, trusted.Tree.Hash)
		}
		return nil
	case bundleTree.N > trusted.Tree.N:
		hr := tlog.TileHashReader(bundleTree, r.client.TileReader(ctx))
		if fork := audit.CheckFork(ctx, r.logKey, reg.Checkpoint.Note, bundleTree, hr, trusted.Note); fork != nil {
			return fmt.Errorf("%w: %v", ErrLogFork, fork)
		}
		return nil
	default:
		hr := tlog.TileHashReader(trusted.Tree, r.client.TileReader(ctx))
		if fork := audit.CheckFork(ctx, r.logKey, trusted.Note, trusted.Tree, hr, reg.Checkpoint.Note); fork != nil {
			return fmt.Errorf("%w: %v", ErrLogFork, fork)
		}
		resp, err := r.client.Updates(ctx, 0, []curator.ID{reg.ID})
		if err != nil {
			return fmt.Errorf("%w: check a stale bundle: %v", ErrKubernetesUnavailable, err)
		}
		updates, err := curator.VerifyUpdates(resp, r.policy, trusted, []curator.ID{reg.ID}, r.now())
		if err != nil {
			return fmt.Errorf("%w: check a stale bundle: %v", ErrLogFork, err)
		}
		current := updates.IDs[reg.ID]
		if current == nil || current.Current == nil || current.Index != reg.Index || current.Current.Kind == curator.KindRevocation {
			return fmt.Errorf("%w: the stapled entry %d is no longer the ID's current entry", ErrRegistrationSuperseded, reg.Index)
		}
		return nil
	}
}

// checkMembership derives the peer's RBE key from its token, IP and TLS
// key, checks that it is the logged key, and checks RBE membership in the
// block digest that the bundle's state entry commits to.
func (r *CuratorRegistry) checkMembership(reg *curator.Registration, staple *Staple, claim RegistrationClaim) error {
	var logged rbe.PublicKey
	if err := logged.UnmarshalBinary(reg.RBEKey); err != nil {
		return fmt.Errorf("%w: logged RBE key: %v", ErrRegistrationKey, err)
	}
	if logged.CRS != r.crs.Fingerprint() {
		return fmt.Errorf("%w: registered under CRS %x, this node uses %x", ErrRegistrationKey, logged.CRS[:8], r.crs.Fingerprint())
	}
	slot := int(reg.Slot)
	pk, err := DerivePublicPoint(r.crs, claim.Token, claim.PeerIP.Unmap().AsSlice(), claim.TLSPublicKey, slot)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRegistrationKey, err)
	}
	if !pk.IsEqual(&logged.PK) {
		return fmt.Errorf("%w: the key derived from the token, IP and TLS key is not the registered one", ErrRegistrationKey)
	}

	bundle, err := curator.ParseBundle(staple.Bundle)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRegistrationMissing, err)
	}
	state, err := curator.ParseEntry(bundle.StateEntry)
	if err != nil || state.Kind != curator.KindState {
		return fmt.Errorf("%w: bundle's state entry is invalid", ErrRegistrationMissing)
	}
	if staple.Block != reg.Block || staple.Block >= state.NumBlocks {
		return fmt.Errorf("%w: staple proves block %d, the entry is in block %d", ErrRegistrationMissing, staple.Block, reg.Block)
	}
	leaf := tlog.RecordHash(curator.BlockRecord(staple.Block, staple.Version, staple.Digest))
	if err := tlog.CheckRecord(staple.BlockProof, int64(state.NumBlocks), state.PPDigest, int64(staple.Block), leaf); err != nil {
		return fmt.Errorf("%w: block digest not committed by the checkpoint: %v", ErrRegistrationMissing, err)
	}
	var digest rbe.Digest
	if err := digest.UnmarshalBinary(staple.Digest); err != nil {
		return fmt.Errorf("%w: block digest: %v", ErrRegistrationMissing, err)
	}
	var opening rbe.Opening
	if err := opening.UnmarshalBinary(staple.Opening); err != nil {
		return fmt.Errorf("%w: opening: %v", ErrRegistrationMissing, err)
	}
	if err := r.crs.VerifyMembership(digest, slot, pk, opening); err != nil {
		return fmt.Errorf("%w: RBE membership check failed: %v", ErrRegistrationMissing, err)
	}
	return nil
}

// DerivePublicPoint returns pk = sk·P_slot for the secret key derived from
// a workload's token, pod IP and TLS key (rbe.DeriveSecretKey). It costs one
// scalar multiplication, unlike KeyGen, which also computes the helpers.
func DerivePublicPoint(crs *rbe.CRS, token string, podIP, tlsPublicKey []byte, slot int) (*bls12381.G1, error) {
	sk, err := rbe.DeriveSecretKey([]byte(token), podIP, tlsPublicKey)
	if err != nil {
		return nil, fmt.Errorf("derive registration key: %w", err)
	}
	base, err := crs.P(slot)
	if err != nil {
		return nil, fmt.Errorf("derive registration key for slot %d: %w", slot, err)
	}
	var pk bls12381.G1
	pk.ScalarMult(sk.Scalar(), base)
	return &pk, nil
}
