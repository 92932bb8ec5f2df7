package group

// ScalarBits is the number of bits of a reduced BLS12-381 scalar: the group
// order q is below 2^255.
const ScalarBits = 255

// Comb is a fixed-base table for one base point (the comb method of Lim and
// Lee). With w teeth, a multiplication costs ⌈255/w⌉ doublings and as many
// additions, against 256 doublings and 64 additions in circl's ScalarMult.
// Table lookups read every entry, so a multiplication runs in constant time
// for a secret scalar.
//
// A Comb is read-only after NewComb returns and safe for concurrent use.
type Comb[T any, PT Point[T]] struct {
	teeth   int
	columns int
	entries []T // entries[m] = Σ_{t: bit t of m is set} 2^(t·columns)·base
}

// NewComb builds the table for base with the given number of teeth (1–10).
// The table holds 2^teeth points.
func NewComb[T any, PT Point[T]](base *T, teeth int) *Comb[T, PT] {
	teeth = min(max(teeth, 1), 10)
	columns := (ScalarBits + teeth - 1) / teeth
	c := &Comb[T, PT]{teeth: teeth, columns: columns, entries: make([]T, 1<<teeth)}

	tooth := *base
	PT(&c.entries[0]).SetIdentity()
	for t := range teeth {
		if t > 0 {
			for range columns {
				PT(&tooth).Double()
			}
		}
		// Entries with highest set bit t are tooth plus an entry below 2^t.
		for m := 0; m < 1<<t; m++ {
			PT(&c.entries[1<<t|m]).Add(&c.entries[m], &tooth)
		}
	}
	return c
}

// Mul returns k·base for the big-endian scalar k of at most ScalarBits bits,
// for example from bls12381.Scalar.MarshalBinary. Bits above ScalarBits are
// ignored.
func (c *Comb[T, PT]) Mul(k []byte) T {
	var acc, sel T
	PT(&acc).SetIdentity()
	for col := c.columns - 1; col >= 0; col-- {
		PT(&acc).Double()
		var m uint
		for t := c.teeth - 1; t >= 0; t-- {
			bit := t*c.columns + col
			if bit < ScalarBits {
				m = m<<1 | scalarBits(k, bit)
			} else {
				m <<= 1
			}
		}
		ctSelect(&sel, c.entries, m)
		PT(&acc).Add(&acc, &sel)
	}
	return acc
}

// Size returns the number of points the table holds.
func (c *Comb[T, PT]) Size() int { return len(c.entries) }

// Exp returns k·x (written additively) for a secret big-endian scalar k with
// a constant-time 4-bit fixed window. For Gt values this is x^k using circl's
// cyclotomic squaring, which took about 0.7 of the time of bls12381.Gt.Exp in
// the benchmarks recorded in rbeauth/rbe/BENCHMARKS.md.
func Exp[T any, PT Point[T]](x *T, k []byte) T {
	var table [16]T
	PT(&table[0]).SetIdentity()
	table[1] = *x
	for i := 2; i < 16; i++ {
		PT(&table[i]).Add(&table[i-1], x)
	}
	var acc, sel T
	PT(&acc).SetIdentity()
	for w := len(k)*2 - 1; w >= 0; w-- {
		for range 4 {
			PT(&acc).Double()
		}
		ctSelect(&sel, table[:], window(k, 4*w, 4))
		PT(&acc).Add(&acc, &sel)
	}
	return acc
}
