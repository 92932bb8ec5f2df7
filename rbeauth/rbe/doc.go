// Package rbe implements registration-based encryption (RBE): the
// pairing-based scheme of Glaeser, Kolonelos, Malavolta and Rahimi,
// "Efficient Registration-Based Encryption" (ACM CCS 2023, ia.cr/2022/1505),
// in its base form with one digest per block of n slots and per-slot
// openings, on BLS12-381 through github.com/cloudflare/circl v1.6.5.
//
// A registrant generates a key for slot i and uploads it with n−1 helper
// values. A curator, which holds no secret, checks the helper values and adds
// the key to the block digest C_k and the helper values to the other slots'
// openings. Anyone who knows C_k can then encapsulate a key to slot i, and
// only the holder of slot i's secret key, with its opening for that digest,
// can decapsulate it.
//
// # Notation
//
// G1 and G2 are written additively and GT multiplicatively; [a]_1 = a·g1,
// [a]_2 = a·g2 and e is the pairing. Slots are 1-based. The CRS for block
// size n is
//
//	P_k = [z^k]_1 for k ∈ [1, 2n] \ {n+1},   Q_k = [z^k]_2 for k ∈ [1, n],
//	Z = e(P_1, Q_n) = e(g1, g2)^(z^(n+1)),
//
// and a key for slot i is pk = sk·P_i with helper values
// ξ_(i→j) = sk·P_(n+1−j+i) for j ≠ i. The digest of a block is the sum of its
// keys and the opening of slot i is Λ_i = Σ_(j≠i) ξ_(j→i).
//
// # API
//
// CRS and ceremony:
//   - NewCeremony(n) returns the public starting point (trapdoor 1).
//   - Contribute(crs, rand) re-randomises a CRS with a fresh secret and
//     returns the new CRS and a ContributionProof.
//   - VerifyContribution and VerifyTranscript(initial, []Contribution) check
//     a step or a whole ceremony and return the final CRS.
//   - ParseCRS / (*CRS).UnmarshalBinary decode and validate a CRS;
//     MarshalBinary gives the canonical encoding.
//   - (*CRS).N, Fingerprint (SHA-256 of the canonical encoding), P, Q, Z
//     (computed once), Validate and Precompute (fixed-base tables for KeyGen).
//   - NewCRSFromTrapdoor is for tests and known-answer vectors only.
//
// Keys:
//   - SecretKey with NewSecretKey(rand), DeriveSecretKey(token, podIP,
//     tlsPublicKey) and NewSecretKeyFromScalar; HashToScalar is the
//     underlying RFC 9380 hash.
//   - (*CRS).KeyGen(sk, slot) returns a PublicKey {CRS, Slot, PK, Helpers};
//     (*CRS).KeyGenDelta(old, new, slot) returns the delta for a rotation.
//   - (*CRS).VerifyHelpers(pk, rand) is the batched helper check;
//     VerifyHelpersNaive is its unbatched reference.
//
// Curator state:
//   - NewBlock(crs) and (*Block).Register(pk), Rotate(delta), Remove(slot),
//     Digest, Version, Opening(slot) and Key(slot). Register and Rotate run
//     the helper check themselves; RegisterUnchecked and RotateUnchecked skip
//     its pairings, for replaying entries this process verified before.
//   - Digest and Opening are G1 points with binary, text and JSON forms.
//
// Membership:
//   - (*CRS).VerifyMembership(digest, slot, pk, opening) checks
//     e(C_k − pk_i, Q_(n+1−i)) = e(Λ_i, g2) as one product of two pairings.
//   - VerifyNonMembership checks that a slot is empty; VerifyMemberships
//     checks many proofs against one digest with one multi-pairing.
//
// Key encapsulation:
//   - (*CRS).Encap(digest, slot, rand) returns a ciphertext and a 32-byte key;
//     (*CRS).Decap(sk, slot, opening, ct) returns the same key or
//     ErrDecapsulation. ParseCiphertext exposes the digest a ciphertext names,
//     so that the decapsulator can pick the opening for that version.
//
// All errors wrap one of the exported sentinels (ErrInvalidEncoding,
// ErrIdentity, ErrInvalidSlot, ErrMembership, ...); test them with errors.Is.
// No input makes a function panic.
//
// # Encodings
//
// Points use circl's (ZCash) compressed form. Decoders accept only that form,
// so each value has one encoding, and they check subgroup membership.
//
//	value                  size            identity allowed
//	G1 point               48 bytes        Digest and Opening only
//	G2 point               96 bytes        never
//	GT element (ct1)       576 bytes       never; subgroup checked
//	scalar, SecretKey      32 bytes        never zero; below q
//	PublicKey              40 + 48·n       never; fingerprint(32) ‖ slot(4) ‖ count(4) ‖ pk ‖ helpers
//	ContributionProof      176 bytes       never; [s]_2 ‖ R ‖ response
//	CRS                    13 + 48·(2n−1) + 96·n
//	                                       never; "MAZURBE\x00" ‖ version 1 ‖ n(4) ‖ P_k ‖ Q_k
//	ciphertext             753 bytes       never; version 1 ‖ digest ‖ ct1 ‖ ct2 ‖ tag
//
// Integers are big-endian. The first byte of a compressed point carries the
// flags: 0x80 compressed, 0x40 point at infinity, 0x20 the larger y.
//
// # Key encapsulation
//
// Encap draws r and sends ct1 = e(r·C_k, Q_(n+1−i)) in GT and ct2 = r·g2;
// the shared value K = Z^r never leaves either side, and neither do r, r·Q or
// r·P_1, any of which would let anyone compute K. Both sides run HKDF-SHA256
// over K with a transcript hash of the CRS fingerprint, slot, digest, ct1 and
// ct2, producing a key-confirmation key and the output key. The ciphertext
// carries an HMAC-SHA256 tag under the confirmation key, so Decap rejects a
// wrong key or opening instead of returning garbage. The scheme is only
// CPA-secure: a caller must never reveal K or the derived key for a
// ciphertext that a peer chose, and the handshake should confirm the key in
// both directions.
//
// Decap checks that ct1 lies in GT before raising it to 1/sk. An element
// outside GT would otherwise let a peer learn sk modulo a small order from
// whether the tag matches.
//
// # Trusted setup
//
// Whoever knows z, or only [z^(n+1)]_1, can decrypt every ciphertext (K =
// e([z^(n+1)]_1, ct2)) and open any slot to any key. The CRS therefore comes
// from a sequential ceremony: each contributor maps P_k to s^k·P_k and Q_k to
// s^k·Q_k for a fresh secret s, publishes [s]_2 and a Schnorr proof of
// knowledge of s (after Nikolaenko et al., "Powers-of-Tau to the People",
// ia.cr/2022/1592), and erases s. Nobody ever computes the (n+1)-th power,
// and the result is secure if one contributor was honest. VerifyTranscript
// checks every step: the chain of powers including the bridge
// e(P_(n+2), g2) = e(P_n, Q_2) across the gap, the cross-group consistency,
// the update key against the first power, the proof, and that no update was
// zero or one.
//
// A public powers-of-tau transcript, such as those of the Ethereum KZG or
// Zcash ceremonies, cannot be reused, even re-randomised. Those transcripts
// are contiguous: they contain [τ^(n+1)]_1, which is exactly the trapdoor
// value above. Re-randomising with a fresh s (z = τ·s) does not help either,
// because whoever knows s computes [z^(n+1)]_1 = s^(n+1)·[τ^(n+1)]_1 from the
// public data, so security would rest on that one contribution alone.
//
// A CRS is bound to its epoch: keys and ciphertexts carry or hash its
// fingerprint, and a new CRS means everyone registers again. Contributions
// must end before the first registration.
//
// # Security notes
//
//   - Position binding holds only for keys that passed the helper check. A
//     malformed pk' = pk + δ·P_m (m ≠ i) with a matching opening passes
//     VerifyMembership, so an audit must check the helper values too (or
//     trust the log record of their check).
//   - KeyGen, Encap and Decap run in constant time for secret scalars:
//     circl's ScalarMult, and comb tables and exponentiations whose table
//     lookups read every entry. The multi-scalar multiplications are variable
//     time and only ever see public points with verifier-chosen coefficients.
//   - DeriveSecretKey gives a key only as secret as its most secret input
//     (the token). Any party that can present the same token can derive sk.
//   - Go cannot guarantee that secrets are erased from memory; the package
//     clears the buffers it owns.
//
// # Relation to Glaeser et al.
//
// The package keeps the base scheme of Glaeser et al. (reference 1): the
// punctured CRS without [z^(n+1)]_1, one digest per block of n slots, helper
// values that the curator checks and adds to the other slots' openings,
// per-slot openings, and ct1, ct2 and K = Z^r as above. It departs from that
// scheme in these places:
//   - It is a KEM. K feeds HKDF-SHA256 with a transcript hash and an
//     HMAC-SHA256 key-confirmation tag and never masks a message in GT, and
//     Decap detects a wrong key or opening by the tag, with no pairing check
//     of the opening.
//   - Decap checks that ct1 lies in GT before raising it to 1/sk.
//   - VerifyHelpers checks all helper values at once with random
//     coefficients. VerifyHelpersNaive is the one-equation-per-helper form.
//   - It adds the setup ceremony, key rotation and removal (KeyGenDelta,
//     Rotate, Remove) and membership checks (VerifyMembership and its
//     variants).
//   - It leaves out the variant that keeps up to log n digests per block.
//
// NOTE: this comparison was made against the authors' proof of concept,
// https://github.com/ahmadrezarahimi/efficientRBE (rbe/rbe/algos.py), which
// encrypts a message m in GT as Z^r·m and checks an opening with a pairing
// equation before decrypting. It was not rechecked against the paper's text.
//
// # References
//
//  1. N. Glaeser, D. Kolonelos, G. Malavolta, A. Rahimi, "Efficient
//     Registration-Based Encryption", ACM CCS 2023, https://ia.cr/2022/1505.
//  2. B. Libert, M. Yung, "Concise Mercurial Vector Commitments and
//     Independent Zero-Knowledge Sets with Short Proofs", TCC 2010.
//  3. V. Nikolaenko, S. Ragsdale, J. Bonneau, D. Boneh, "Powers-of-Tau to the
//     People: Decentralizing Setup Ceremonies", https://ia.cr/2022/1592.
//  4. RFC 9380, "Hashing to Elliptic Curves", section 5.3.1
//     (expand_message_xmd).
//  5. RFC 5869, "HMAC-based Extract-and-Expand Key Derivation Function".
//  6. M. Scott, "A note on group membership tests for G1, G2 and GT on BLS
//     pairing-friendly curves", https://ia.cr/2021/1130.
package rbe
