package rbe

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/cloudflare/circl/ecc/bls12381"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe/internal/group"
)

// Block size limits. A block needs n ≥ 2 so that the powers around the
// missing (n+1)-th power exist. The upper limit bounds the work and memory a
// CRS decoder spends on untrusted input (about 0.79 MB of encoding at 4096).
const (
	MinBlockSize = 2
	MaxBlockSize = 4096
)

// crsMagic starts every CRS encoding; the byte after it is the format version.
const (
	crsMagic   = "MAZURBE\x00"
	crsVersion = 1
	crsHeader  = len(crsMagic) + 1 + 4
)

// CRS is the punctured powers-of-tau common reference string for blocks of n
// slots:
//
//	P_k = [z^k]_1 for k ∈ [1, 2n] \ {n+1},  Q_k = [z^k]_2 for k ∈ [1, n],
//	Z = e(P_1, Q_n) = e(g1, g2)^(z^(n+1)).
//
// Nobody may know z or any encoding of z^(n+1); see the package doc.
//
// A CRS is immutable after construction and safe for concurrent use.
// Precompute adds fixed-base tables and may run concurrently with other
// methods.
type CRS struct {
	n           int
	p           []bls12381.G1 // p[k-1] = P_k; p[n] (the power n+1) stays unset
	q           []bls12381.G2 // q[k-1] = Q_k
	z           bls12381.Gt
	encoding    []byte
	fingerprint [32]byte

	kemOnce sync.Once
	kem     *kemTables

	tablesMu sync.Mutex
	tables   []*group.Comb[bls12381.G1, *bls12381.G1] // per P_k, nil until Precompute

	preparedMu sync.Mutex
	prepared   []*group.PreparedG2 // per Q_k, each built on first use
}

// kemTables holds fixed-base tables for Encap, built on first use.
type kemTables struct {
	g2 *group.Comb[bls12381.G2, *bls12381.G2]   // for ct2 = r·g2
	z  *group.Comb[group.GtElem, *group.GtElem] // for K = Z^r
}

// N returns the block size n.
func (c *CRS) N() int { return c.n }

// Fingerprint returns SHA-256 of the canonical encoding (MarshalBinary). It
// identifies the CRS, and so the epoch, in public keys and ciphertexts.
func (c *CRS) Fingerprint() [32]byte { return c.fingerprint }

// P returns a copy of P_k = [z^k]_1 for k ∈ [1, 2n] \ {n+1}.
func (c *CRS) P(k int) (*bls12381.G1, error) {
	if k < 1 || k > 2*c.n || k == c.n+1 {
		return nil, fmt.Errorf("get CRS point P_%d for n = %d: index outside [1, 2n] \\ {n+1}: %w", k, c.n, ErrInvalidSlot)
	}
	p := c.p[k-1]
	return &p, nil
}

// Q returns a copy of Q_k = [z^k]_2 for k ∈ [1, n].
func (c *CRS) Q(k int) (*bls12381.G2, error) {
	if k < 1 || k > c.n {
		return nil, fmt.Errorf("get CRS point Q_%d for n = %d: index outside [1, n]: %w", k, c.n, ErrInvalidSlot)
	}
	q := c.q[k-1]
	return &q, nil
}

// Z returns a copy of Z = e(P_1, Q_n), computed once when the CRS is built.
func (c *CRS) Z() *bls12381.Gt { z := c.z; return &z }

// MarshalBinary returns the canonical encoding: the 8-byte magic
// "MAZURBE\x00", a version byte (1), n as a 4-byte big-endian integer, the
// points P_k for k ∈ [1, 2n] \ {n+1} in increasing k as compressed G1 points,
// then Q_1 … Q_n as compressed G2 points. Z is not encoded; it is recomputed.
func (c *CRS) MarshalBinary() ([]byte, error) { return append([]byte(nil), c.encoding...), nil }

// EncodedCRSSize returns the length of the encoding of a CRS for block size n.
func EncodedCRSSize(n int) int { return crsHeader + (2*n-1)*G1Size + n*G2Size }

// UnmarshalBinary parses and validates a CRS. Every point must be a
// canonical compressed encoding of a non-identity point in its subgroup, and
// the points must be consecutive powers of one trapdoor with the (n+1)-th
// power missing (see Validate). It must not run concurrently with other
// methods on the same CRS.
func (c *CRS) UnmarshalBinary(b []byte) error {
	parsed, err := parseCRS(b)
	if err != nil {
		return err
	}
	if err := parsed.Validate(); err != nil {
		return err
	}
	c.adopt(parsed)
	return nil
}

// ParseCRS is UnmarshalBinary as a function.
func ParseCRS(b []byte) (*CRS, error) {
	c := new(CRS)
	if err := c.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return c, nil
}

// adopt copies the parsed fields of src into c without copying its locks,
// and drops any tables c built for its previous points.
func (c *CRS) adopt(src *CRS) {
	c.n, c.p, c.q, c.z = src.n, src.p, src.q, src.z
	c.encoding, c.fingerprint = src.encoding, src.fingerprint
	c.kemOnce, c.kem = sync.Once{}, nil
	c.tablesMu.Lock()
	c.tables = nil
	c.tablesMu.Unlock()
}

func parseCRS(b []byte) (*CRS, error) {
	if len(b) < crsHeader || string(b[:len(crsMagic)]) != crsMagic {
		return nil, fmt.Errorf("decode CRS: missing magic %q: %w", crsMagic, ErrInvalidEncoding)
	}
	if v := b[len(crsMagic)]; v != crsVersion {
		return nil, fmt.Errorf("decode CRS: format version %d, want %d: %w", v, crsVersion, ErrInvalidEncoding)
	}
	n64 := binary.BigEndian.Uint32(b[len(crsMagic)+1:])
	if n64 < MinBlockSize || n64 > MaxBlockSize {
		return nil, fmt.Errorf("decode CRS: block size %d outside [%d, %d]: %w", n64, MinBlockSize, MaxBlockSize, ErrInvalidBlockSize)
	}
	n := int(n64)
	if len(b) != EncodedCRSSize(n) {
		return nil, fmt.Errorf("decode CRS: %d bytes for n = %d, want %d: %w", len(b), n, EncodedCRSSize(n), ErrInvalidEncoding)
	}

	c := &CRS{n: n, p: make([]bls12381.G1, 2*n), q: make([]bls12381.G2, n)}
	off := crsHeader
	for k := 1; k <= 2*n; k++ {
		if k == n+1 {
			continue
		}
		p, err := decodeG1(b[off:off+G1Size], false)
		if err != nil {
			return nil, fmt.Errorf("decode CRS point P_%d: %w", k, err)
		}
		c.p[k-1] = p
		off += G1Size
	}
	for k := 1; k <= n; k++ {
		q, err := decodeG2(b[off:off+G2Size], false)
		if err != nil {
			return nil, fmt.Errorf("decode CRS point Q_%d: %w", k, err)
		}
		c.q[k-1] = q
		off += G2Size
	}
	c.finish()
	return c, nil
}

// finish computes Z, the canonical encoding and the fingerprint.
func (c *CRS) finish() {
	c.z = *bls12381.Pair(&c.p[0], &c.q[c.n-1])
	enc := make([]byte, 0, EncodedCRSSize(c.n))
	enc = append(enc, crsMagic...)
	enc = append(enc, crsVersion)
	enc = binary.BigEndian.AppendUint32(enc, uint32(c.n))
	for k := 1; k <= 2*c.n; k++ {
		if k != c.n+1 {
			enc = append(enc, c.p[k-1].BytesCompressed()...)
		}
	}
	for k := range c.q {
		enc = append(enc, c.q[k].BytesCompressed()...)
	}
	c.encoding = enc
	c.fingerprint = sha256.Sum256(enc)
}

// NewCRSFromTrapdoor builds the CRS for block size n and trapdoor z.
//
// Use it only for tests and known-answer vectors: whoever knows z can decrypt
// every ciphertext and forge openings. Production CRSs come from a ceremony
// (NewCeremony, Contribute, VerifyTranscript).
func NewCRSFromTrapdoor(n int, z *bls12381.Scalar) (*CRS, error) {
	if n < MinBlockSize || n > MaxBlockSize {
		return nil, fmt.Errorf("build CRS for n = %d: outside [%d, %d]: %w", n, MinBlockSize, MaxBlockSize, ErrInvalidBlockSize)
	}
	if z.IsZero() == 1 {
		return nil, fmt.Errorf("build CRS: trapdoor: %w", ErrZeroScalar)
	}
	c := &CRS{n: n, p: make([]bls12381.G1, 2*n), q: make([]bls12381.G2, n)}
	var power bls12381.Scalar
	power.SetOne()
	for k := 1; k <= 2*n; k++ {
		power.Mul(&power, z)
		if k == n+1 {
			continue
		}
		c.p[k-1].ScalarMult(&power, bls12381.G1Generator())
		if k <= n {
			c.q[k-1].ScalarMult(&power, bls12381.G2Generator())
		}
	}
	power = bls12381.Scalar{}
	c.finish()
	return c, nil
}

// Validate checks that the CRS is well formed: P_1 and Q_1 are not the
// identity, and for one unknown z, P_k = [z^k]_1 and Q_k = [z^k]_2. It checks
//
//	e(P_(k+1), g2) = e(P_k, Q_1)   for consecutive present k, k+1,
//	e(P_(n+2), g2) = e(P_n, Q_2)   across the missing power,
//	e(P_k, g2)     = e(g1, Q_k)    for k ∈ [1, n],
//
// batched with random 128-bit coefficients into two G1 and one G2
// multi-scalar multiplication and one product of four pairings. A CRS that
// passes may still have a known trapdoor; only a verified ceremony transcript
// (VerifyTranscript) rules that out.
func (c *CRS) Validate() error { return c.validate(rand.Reader) }

func (c *CRS) validate(rnd io.Reader) error {
	n := c.n
	if !c.isInitialised() {
		return fmt.Errorf("validate CRS: not initialised, build it with ParseCRS or a ceremony: %w", ErrInvalidCRS)
	}
	if c.p[0].IsIdentity() || c.q[0].IsIdentity() {
		return fmt.Errorf("validate CRS: first power is the identity: %w", ErrInvalidCRS)
	}
	// Chain pairs (a, b) with P_b = z^(b-a)·P_a: b-a = 1 except across the gap.
	type pair struct{ a, b int }
	var chain []pair
	for k := 1; k < 2*n; k++ {
		switch {
		case k == n:
			chain = append(chain, pair{n, n + 2})
		case k == n+1:
		default:
			chain = append(chain, pair{k, k + 1})
		}
	}
	coeff, err := randomShortScalars(rnd, len(chain)+n)
	if err != nil {
		return fmt.Errorf("validate CRS: %w", err)
	}

	// lhs = Σ ρ_(a,b)·P_b + Σ σ_k·P_k, all paired with g2.
	lhsPoints := make([]bls12381.G1, 0, len(chain)+n)
	lhsScalars := make([][]byte, 0, len(chain)+n)
	var step1Points, step2Points []bls12381.G1
	var step1Scalars, step2Scalars [][]byte
	for idx, pr := range chain {
		lhsPoints = append(lhsPoints, c.p[pr.b-1])
		lhsScalars = append(lhsScalars, coeff[idx])
		if pr.b-pr.a == 1 {
			step1Points = append(step1Points, c.p[pr.a-1])
			step1Scalars = append(step1Scalars, coeff[idx])
		} else {
			step2Points = append(step2Points, c.p[pr.a-1])
			step2Scalars = append(step2Scalars, coeff[idx])
		}
	}
	cross := coeff[len(chain):]
	for k := 1; k <= n; k++ {
		lhsPoints = append(lhsPoints, c.p[k-1])
		lhsScalars = append(lhsScalars, cross[k-1])
	}

	lhs, err := group.MSM(lhsPoints, lhsScalars)
	if err != nil {
		return fmt.Errorf("validate CRS: %w", err)
	}
	step1, err := group.MSM(step1Points, step1Scalars)
	if err != nil {
		return fmt.Errorf("validate CRS: %w", err)
	}
	step2, err := group.MSM(step2Points, step2Scalars)
	if err != nil {
		return fmt.Errorf("validate CRS: %w", err)
	}
	crossQ, err := group.MSM(c.q, cross)
	if err != nil {
		return fmt.Errorf("validate CRS: %w", err)
	}

	ok := group.PairingProductIsOne(
		[]*bls12381.G1{&lhs, &step1, &step2, bls12381.G1Generator()},
		[]*bls12381.G2{bls12381.G2Generator(), &c.q[0], &c.q[1], &crossQ},
		[]int{1, -1, -1, -1},
	)
	if !ok {
		return fmt.Errorf("validate CRS for n = %d: powers are not consecutive: %w", n, ErrInvalidCRS)
	}
	return nil
}

// Precompute builds fixed-base comb tables for every P_k, which made KeyGen
// 2.2–3.1 times faster in the benchmarks recorded in BENCHMARKS.md. The
// tables take 2^6 points (9.2 kB) per P_k, about 18·n kB in total (4.7 MB at
// n = 256, 19 MB at n = 1024). Calling it again does nothing.
func (c *CRS) Precompute() {
	c.tablesMu.Lock()
	defer c.tablesMu.Unlock()
	if c.tables != nil {
		return
	}
	tables := make([]*group.Comb[bls12381.G1, *bls12381.G1], 2*c.n)
	for k := range tables {
		if k != c.n {
			tables[k] = group.NewComb[bls12381.G1, *bls12381.G1](&c.p[k], combTeeth)
		}
	}
	c.tables = tables
}

// combTeeth is the comb width for KeyGen tables. Six teeth gave the fastest
// KeyGen in the benchmarks recorded in BENCHMARKS.md, because wider tables
// cost more in constant-time lookups than they save in additions.
const combTeeth = 6

// preparedQ returns the Miller-loop lines of q[idx], preparing them on
// first use. Preparing costs about one pairing, once per slot and process;
// every later membership check in that slot saves about a third of its
// pairing cost. Slots that are never checked cost nothing.
func (c *CRS) preparedQ(idx int) *group.PreparedG2 {
	c.preparedMu.Lock()
	defer c.preparedMu.Unlock()
	if c.prepared == nil {
		c.prepared = make([]*group.PreparedG2, len(c.q))
	}
	if c.prepared[idx] == nil {
		c.prepared[idx] = group.PrepareG2(&c.q[idx])
	}
	return c.prepared[idx]
}

// preparedG2Generator holds the Miller-loop lines of the G2 generator.
var preparedG2Generator = sync.OnceValue(func() *group.PreparedG2 {
	return group.PrepareG2(bls12381.G2Generator())
})

// keyGenTables returns the tables if Precompute ran, or nil.
func (c *CRS) keyGenTables() []*group.Comb[bls12381.G1, *bls12381.G1] {
	c.tablesMu.Lock()
	defer c.tablesMu.Unlock()
	return c.tables
}

// kemTables returns the fixed-base tables for Encap, building them on first use.
func (c *CRS) kemTables() *kemTables {
	c.kemOnce.Do(func() {
		c.kem = &kemTables{
			g2: group.NewComb[bls12381.G2, *bls12381.G2](bls12381.G2Generator(), combTeeth),
			z:  group.NewComb[group.GtElem, *group.GtElem]((*group.GtElem)(&c.z), combTeeth),
		}
	})
	return c.kem
}

// isInitialised reports whether c has the point slices of its block size.
func (c *CRS) isInitialised() bool {
	return c.n >= MinBlockSize && len(c.p) == 2*c.n && len(c.q) == c.n
}

// checkSlot returns an error unless 1 ≤ slot ≤ n.
func (c *CRS) checkSlot(op string, slot int) error {
	if slot < 1 || slot > c.n {
		return fmt.Errorf("%s: slot %d outside [1, %d]: %w", op, slot, c.n, ErrInvalidSlot)
	}
	return nil
}
