package curator

// A Scheme is the registration-based encryption scheme whose public state
// the log sequences. The curator, witnesses and auditors all drive the same
// Scheme from the log, so block digests and openings are deterministic
// functions of the log. Implementations hold no secret.
type Scheme interface {
	// BlockSize returns n, the number of slots per block.
	BlockSize() int
	// CheckKey reports an error unless pk and its n−1 helper values are a
	// well-formed key for slot (1-based), which rejects malformed keys that
	// would otherwise let a registrant decrypt for other slots.
	CheckKey(slot int, pk, helpers []byte) error
	// NewBlock returns an empty block.
	NewBlock() Block
	// Fingerprint identifies the CRS. No entry logs it on its own: the log
	// is bound to a CRS through the keys, because each rbescheme key
	// encodes the fingerprint of the CRS it was made for and CheckKey
	// rejects any other. When the log has ceremony entries, the rules also
	// reject every registration unless Fingerprint equals the ceremony's
	// result.
	Fingerprint() [32]byte
}

// A Block is the public state of one RBE block.
type Block interface {
	// Register adds a key to an empty slot. The caller has run CheckKey on
	// it, so implementations may skip the expensive part of the check.
	Register(slot int, pk, helpers []byte) error
	// Remove subtracts a slot's key and helper values and empties the slot.
	Remove(slot int) error
	// Digest returns the encoded block commitment.
	Digest() []byte
	// Version counts the changes to the block.
	Version() uint64
	// Opening returns the encoded opening of slot at the current version.
	Opening(slot int) ([]byte, error)
}

// A CeremonyVerifier is a Scheme that can check CRS ceremony
// contributions, so the ceremony transcript can be sequenced into the log
// and replayed by witnesses and auditors like everything else.
type CeremonyVerifier interface {
	// VerifyContribution checks one contribution against the previous CRS
	// encoding (nil for the ceremony's public starting point) and returns
	// the new CRS encoding and its fingerprint.
	VerifyContribution(prev, contribution []byte) (next []byte, fingerprint [32]byte, err error)
}

// A CRSFollower is a Scheme whose CRS comes from the log: the State hands
// it the CRS after each ceremony entry, so witnesses and auditors need no
// CRS file.
type CRSFollower interface {
	SetCRS(encoding []byte) error
}
