package rbeauth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
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
	digests digestCache
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

// TrustedSize implements TrustedSizer: the size of the node's trusted
// checkpoint, or -1 before the first one.
func (r *CuratorRegistry) TrustedSize() int64 {
	if cp := r.trusted(); cp != nil {
		return cp.Tree.N
	}
	return -1
}

// VerifyRegistration implements Registry.
func (r *CuratorRegistry) VerifyRegistration(ctx context.Context, claim RegistrationClaim) (Checkpoint, error) {
	staple, err := ParseStaple(claim.Bundle)
	if err != nil {
		return Checkpoint{}, err
	}
	id := curator.ID(claim.ID)
	reg, err := r.verifyBundle(staple.Bundle, id)
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

// verifyBundle checks the bundle under the witness policy. A bundle whose
// checkpoint is byte for byte the node's trusted one, the usual case once
// peers restaple, is checked against the trusted tree without repeating
// the log signature and cosignature checks that the node already ran.
func (r *CuratorRegistry) verifyBundle(raw []byte, id curator.ID) (*curator.Registration, error) {
	now := r.now()
	trusted := r.trusted()
	fresh := trusted != nil && (r.policy.MaxAge == 0 || now.Sub(trusted.Oldest) <= r.policy.MaxAge)
	if fresh {
		if b, err := curator.ParseBundle(raw); err == nil && bytes.Equal(b.Checkpoint, trusted.Note) {
			reg, err := curator.VerifyBundleTree(raw, trusted.Tree, id)
			if err != nil {
				return nil, err
			}
			reg.Checkpoint = trusted
			return reg, nil
		}
	}
	return curator.VerifyBundle(raw, r.policy, id, now)
}

// checkAgainstTrusted compares the bundle's checkpoint with the node's.
// Equal sizes must have equal roots. A newer bundle must extend the node's
// tree. An older one must still name the ID's current entry at the node's
// checkpoint, which an online query answers; that is what rejects a proof
// replayed after its ID was re-registered. A fork error wraps a
// *curator.ForkError with the two signed notes as evidence.
func (r *CuratorRegistry) checkAgainstTrusted(ctx context.Context, reg *curator.Registration) error {
	trusted := r.trusted()
	if trusted == nil {
		return nil
	}
	bundleTree := reg.Checkpoint.Tree
	switch {
	case bundleTree.N == trusted.Tree.N:
		if bundleTree.Hash != trusted.Tree.Hash {
			// Two signed checkpoints of one size with different roots are
			// the whole evidence, because no consistency proof can link them.
			fork := &curator.ForkError{Old: trusted.Note, New: reg.Checkpoint.Note}
			return fmt.Errorf("%w: peer's checkpoint of size %d has root %v, this node's %v: %w", ErrLogFork, bundleTree.N, bundleTree.Hash, trusted.Tree.Hash, fork)
		}
		return nil
	case bundleTree.N > trusted.Tree.N:
		return r.checkFork(ctx, reg.Checkpoint.Note, bundleTree, trusted.Note)
	default:
		if err := r.checkFork(ctx, trusted.Note, trusted.Tree, reg.Checkpoint.Note); err != nil {
			return err
		}
		// The request starts at the trusted size because VerifyUpdates
		// checks the consistency proof and the ID's entry chain from there.
		resp, err := r.client.Updates(ctx, trusted.Tree.N, []curator.ID{reg.ID})
		if err != nil {
			return fmt.Errorf("%w: check a stale bundle: %v", ErrCuratorUnavailable, err)
		}
		updates, err := curator.VerifyUpdates(resp, r.policy, trusted, []curator.ID{reg.ID}, r.now())
		if err != nil {
			return fmt.Errorf("%w: check a stale bundle: %w", ErrLogFork, err)
		}
		current := updates.IDs[reg.ID]
		if current == nil || current.Current == nil || current.Index != reg.Index || current.Current.Kind == curator.KindRevocation {
			return fmt.Errorf("%w: the stapled entry %d is no longer the ID's current entry", ErrRegistrationSuperseded, reg.Index)
		}
		return nil
	}
}

// checkFork checks that the checkpoint in olderNote is a prefix of newer,
// reading newer's hashes from the curator. A tile the curator fails to
// serve is not evidence of a fork, so it yields ErrCuratorUnavailable
// instead: audit.CheckFork alone would report a fork with an empty proof.
//
// NOTE: a curator that shows this node a smaller fork than the peer's also
// fails to serve the peer's tiles, so that fork is rejected as an outage
// rather than reported as a fork. An auditor that compares the two
// checkpoints proves it.
func (r *CuratorRegistry) checkFork(ctx context.Context, newerNote []byte, newer tlog.Tree, olderNote []byte) error {
	tiles := &recordingTileReader{TileReader: r.client.TileReader(ctx)}
	hr := tlog.TileHashReader(newer, tiles)
	fork := audit.CheckFork(ctx, r.logKey, newerNote, newer, hr, olderNote)
	if fork == nil {
		return nil
	}
	if tiles.err != nil {
		return fmt.Errorf("%w: read tiles to check the peer's checkpoint against this node's: %v", ErrCuratorUnavailable, tiles.err)
	}
	return fmt.Errorf("%w: %w", ErrLogFork, fork)
}

// recordingTileReader keeps the first error of the tile reader it wraps,
// so that a failed fetch is distinguished from tiles that do not hash to
// the tree.
type recordingTileReader struct {
	tlog.TileReader
	err error
}

func (r *recordingTileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	data, err := r.TileReader.ReadTiles(tiles)
	if err != nil && r.err == nil {
		r.err = err
	}
	return data, err
}

// checkMembership derives the peer's RBE key from its token, IP and TLS
// key, checks that it is the logged key, and checks RBE membership in the
// block digest that the bundle's state entry commits to.
func (r *CuratorRegistry) checkMembership(reg *curator.Registration, staple *Staple, claim RegistrationClaim) error {
	// Only the key point matters here, so the logged key's helper values
	// are not decoded: the witnesses checked them when they replayed the
	// entry, and decoding them costs a subgroup check each.
	crs, loggedSlot, loggedPK, err := rbe.PublicKeyFields(reg.RBEKey)
	if err != nil {
		return fmt.Errorf("%w: logged RBE key: %v", ErrRegistrationKey, err)
	}
	if crs != r.crs.Fingerprint() {
		return fmt.Errorf("%w: registered under CRS %x, this node uses %x", ErrRegistrationKey, crs[:8], r.crs.Fingerprint())
	}
	slot := int(reg.Slot)
	if loggedSlot != slot {
		return fmt.Errorf("%w: the logged RBE key is for slot %d, the entry names slot %d", ErrRegistrationKey, loggedSlot, slot)
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

	// Decoding the opening costs a subgroup check, and deriving the key a
	// scalar multiplication. They are independent, so the opening decodes
	// on another goroutine: a handshake waits for the slower of the two
	// instead of their sum. The digest's decoding is cached.
	var opening rbe.Opening
	openingErr := make(chan error, 1)
	go func() { openingErr <- opening.UnmarshalBinary(staple.Opening) }()
	pk, err := DerivePublicPoint(r.crs, claim.Token, claim.PeerIP.Unmap().AsSlice(), claim.TLSPublicKey, slot)
	if err == nil && !bytes.Equal(pk.BytesCompressed(), loggedPK) {
		err = errors.New("the key derived from the token, IP and TLS key is not the registered one")
	}
	digest, digestErr := r.digests.decode(staple.Digest)
	openErr := <-openingErr
	switch {
	case err != nil:
		return fmt.Errorf("%w: %v", ErrRegistrationKey, err)
	case digestErr != nil:
		return fmt.Errorf("%w: block digest: %v", ErrRegistrationMissing, digestErr)
	case openErr != nil:
		return fmt.Errorf("%w: opening: %v", ErrRegistrationMissing, openErr)
	}
	if err := r.crs.VerifyMembership(digest, slot, pk, opening); err != nil {
		return fmt.Errorf("%w: RBE membership check failed: %v", ErrRegistrationMissing, err)
	}
	return nil
}

// DerivePublicPoint returns pk = sk·P_slot for the secret key derived from
// a workload's token, pod IP and TLS key (rbe.DeriveSecretKey). It costs one
// scalar multiplication, a fixed-base one after crs.Precompute, unlike
// KeyGen, which also computes the helpers.
func DerivePublicPoint(crs *rbe.CRS, token string, podIP, tlsPublicKey []byte, slot int) (*bls12381.G1, error) {
	sk, err := rbe.DeriveSecretKey([]byte(token), podIP, tlsPublicKey)
	if err != nil {
		return nil, fmt.Errorf("derive registration key: %w", err)
	}
	pk, err := crs.PublicPoint(sk, slot)
	if err != nil {
		return nil, fmt.Errorf("derive registration key: %w", err)
	}
	return pk, nil
}

// digestCache holds decoded block digests, keyed by their encoding. Every
// peer in a block staples the same digest until the block changes, and
// decoding one costs a subgroup check.
type digestCache struct {
	mu sync.Mutex
	m  map[string]rbe.Digest
}

// maxCachedDigests bounds the cache. A node verifies one digest per block and
// version at its checkpoint, so a full cache is emptied rather than
// managed entry by entry.
const maxCachedDigests = 1024

func (c *digestCache) decode(b []byte) (rbe.Digest, error) {
	c.mu.Lock()
	d, ok := c.m[string(b)]
	c.mu.Unlock()
	if ok {
		return d, nil
	}
	if err := d.UnmarshalBinary(b); err != nil {
		return rbe.Digest{}, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedDigests {
		c.m = make(map[string]rbe.Digest)
	}
	c.m[string(b)] = d
	c.mu.Unlock()
	return d, nil
}
