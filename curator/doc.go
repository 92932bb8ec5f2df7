// Package curator defines the curator's transparency log: its entries, the
// rules every replayer applies, checkpoints and cosignatures, the ID map,
// the proof bundle a peer staples to its handshake, and the verified
// update API a node agent polls. The curator server (package server), the
// witnesses (package witness) and the auditors (package audit) all build on
// it, so they compute the same state from the same log.
//
// The curator holds no secret that protects anyone. Every value it
// publishes is a deterministic function of the log, and the log is
// append-only under RFC 6962 hashing. A client trusts a checkpoint only
// when a quorum of verifying witnesses cosigned it.
//
// # Identities
//
// A workload's ID is the SHA-256 hash of the pod-bound service-account
// token it registered with (IDFromToken). One token registers at most once,
// a token refresh yields a new ID, and the token's holder, who alone knows
// it before registration, can recognise its ID in the log.
//
// # Entries
//
// An Entry is encoded in TLS presentation language (Entry.Marshal) and
// must fit in 65,535 bytes, the C2SP tlog-tiles limit. Kinds:
//
//   - registration: a new ID takes a fresh RBE slot. It carries the RBE
//     public key and helper values, the TLS public key (PKIX DER), the pod
//     IP, the token's JWS signing input, and PoPSig, a signature by the TLS
//     key over PoPMessage, which binds kind, ID, previous entry, both keys
//     and the pod IP;
//   - rotation: new keys for an ID, signed by the new TLS key and, as
//     OldKeySig, by the ID's current TLS key;
//   - revocation: the ID gives up its slot, signed by its current TLS key;
//   - state: ends every batch; commits to the epoch, the first index of
//     the batch, the number of RBE blocks, the ID map root and the root of
//     the tree of block digests (PPDigest);
//   - ceremony: one RBE CRS contribution, before any registration.
//
// A key entry carries the whole TLS public key, although PoPMessage and
// the handshake check use only its SHA-256 hash. Witnesses and auditors
// verify PoPSig, and OldKeySig of the next change, with that key read
// from the log, and a hash cannot verify a signature. The API's key
// requests carry the whole key for the same reason.
//
// Key entries of one ID form a hash chain through PrevIndex and
// PrevLeafHash, and the ID map (a compressed sparse Merkle tree keyed by
// ID) maps each ID to the leaf hash of its latest entry.
//
// # Tokens in the log
//
// The log never holds a bearer-usable token. A registration logs the
// token's JWS signing input (base64url header and claims), which has no
// secret in it, and its ID, which is the hash of the whole token. The
// signature goes only to witnesses, which fetch it with a request signed by
// their cosignature key; a witness checks that the signing input and the
// signature hash to the ID and that the signature verifies under the
// issuer's JWKS. An auditor that is not a witness checks every rule except
// that signature.
//
// # Rules
//
// State.Apply enforces the curator rules (version 1) on each entry:
// timestamps never decrease; a registration names a never-used slot, an ID
// not yet registered, a token whose claims have the curator audience, a
// pod binding and a validity period covering the entry time, an RBE key
// that passes the helper check, and a valid PoPSig; a rotation or
// revocation names the ID's current entry and carries a valid OldKeySig; a
// state entry carries exactly the recomputed map root and block digests.
// Checkpoints are signed at batch boundaries only.
//
// # Checkpoints and cosignatures
//
// Checkpoints follow C2SP tlog-checkpoint and are signed notes
// (golang.org/x/mod/sumdb/note) with an Ed25519 log key. Witnesses add
// C2SP tlog-cosignature cosignature/v1 signatures (CosignatureSigner).
// Policy.Open accepts a checkpoint with the log signature and at least
// Quorum cosignatures no older than MaxAge; the default quorum is
// ⌊2n/3⌋+1 of n witnesses, the smallest that both survives unavailable
// witnesses and blocks split views.
//
// # Bundles and updates
//
// A Bundle proves that an ID's current entry is entry i at checkpoint N:
// the entry and the state entry at N−1 with inclusion proofs, and the map
// proof of the ID under that state entry. VerifyBundle is what the TLS
// verification layer calls; VerifyBundleTree skips signatures when the
// node agent already trusts the checkpoint. VerifyUpdates checks a node
// agent's UpdatesResponse: consistency with the agent's last checkpoint
// (a failure is a *ForkError with its evidence), each requested ID's map
// proof, its chain of entries since that checkpoint, and the block digest
// under PPDigest.
//
// # References
//
//   - RFC 6962, Certificate Transparency, sections 2.1 (Merkle hash trees).
//   - C2SP tlog-checkpoint, tlog-cosignature, tlog-tiles, tlog-witness and
//     signed-note, at https://c2sp.org.
//   - Glaeser, Kolonelos, Malavolta, Rahimi, "Efficient Registration-Based
//     Encryption", ACM CCS 2023, ia.cr/2022/1505, for the helper check.
package curator
