package curator

import (
	"bytes"
	"crypto/sha256"
	"errors"

	"golang.org/x/mod/sumdb/tlog"
)

// The ID map is a compressed sparse Merkle tree over 256-bit keys (the IDs),
// with the leaf hash of each ID's latest entry as the value. It gives the
// uniqueness and absence proofs the design needs. It is written here
// because the one Go prefix tree with proofs that fits, filippo.io/torchwood
// prefix, is marked experimental and is not an approved dependency.
//
// Hashing, with domain separation from the log's RFC 6962 hashes by a
// distinct context string:
//
//	empty subtree:             32 zero bytes
//	subtree with one leaf:     SHA-256("mazu-map/leaf\x00" ‖ key ‖ value)
//	subtree with two or more:  SHA-256("mazu-map/node\x00" ‖ left ‖ right)
//
// A subtree with one leaf hashes to that leaf wherever it sits, so the tree
// shape is a function of the key set alone and a proof has about log2 N
// siblings for random keys.

var emptyHash tlog.Hash

func mapLeafHash(key ID, value tlog.Hash) tlog.Hash {
	h := sha256.New()
	h.Write([]byte("mazu-map/leaf\x00"))
	h.Write(key[:])
	h.Write(value[:])
	var out tlog.Hash
	h.Sum(out[:0])
	return out
}

func mapNodeHash(l, r tlog.Hash) tlog.Hash {
	h := sha256.New()
	h.Write([]byte("mazu-map/node\x00"))
	h.Write(l[:])
	h.Write(r[:])
	var out tlog.Hash
	h.Sum(out[:0])
	return out
}

func bit(k ID, depth int) int { return int(k[depth/8]>>(7-depth%8)) & 1 }

type mapNode struct {
	child [2]*mapNode // both nil for a leaf
	key   ID
	value tlog.Hash
	hash  tlog.Hash
}

func (n *mapNode) isLeaf() bool { return n.child[0] == nil && n.child[1] == nil }

func nodeHash(n *mapNode) tlog.Hash {
	if n == nil {
		return emptyHash
	}
	return n.hash
}

// A MapTree is the in-memory ID map. It is not safe for concurrent use.
type MapTree struct {
	root *mapNode
	size int
}

// Root returns the root hash.
func (t *MapTree) Root() tlog.Hash { return nodeHash(t.root) }

// Len returns the number of keys.
func (t *MapTree) Len() int { return t.size }

// Set maps key to value, inserting or replacing.
func (t *MapTree) Set(key ID, value tlog.Hash) {
	var added bool
	t.root, added = set(t.root, 0, key, value)
	if added {
		t.size++
	}
}

func set(n *mapNode, depth int, key ID, value tlog.Hash) (*mapNode, bool) {
	if n == nil {
		return &mapNode{key: key, value: value, hash: mapLeafHash(key, value)}, true
	}
	if n.isLeaf() {
		if n.key == key {
			n.value = value
			n.hash = mapLeafHash(key, value)
			return n, false
		}
		// Split: push the existing leaf one level down and retry.
		inner := &mapNode{}
		inner.child[bit(n.key, depth)] = n
		n = inner
	}
	b := bit(key, depth)
	var added bool
	n.child[b], added = set(n.child[b], depth+1, key, value)
	n.hash = mapNodeHash(nodeHash(n.child[0]), nodeHash(n.child[1]))
	return n, added
}

// Get returns the value of key.
func (t *MapTree) Get(key ID) (tlog.Hash, bool) {
	n := t.root
	for depth := 0; n != nil; depth++ {
		if n.isLeaf() {
			return n.value, n.key == key
		}
		n = n.child[bit(key, depth)]
	}
	return emptyHash, false
}

// A MapProof proves the value of a key, or its absence, under a map root.
//
// Siblings run from the root down. The path ends at a leaf: the key
// itself (membership), another key that shares the path (absence), or an
// empty subtree (absence, OtherKey unset).
type MapProof struct {
	Siblings   []tlog.Hash
	Terminal   uint8 // mapTerminalLeaf or mapTerminalEmpty
	OtherKey   ID    // for an absence proof that ends at another leaf
	OtherValue tlog.Hash
}

const (
	mapTerminalEmpty = 0
	mapTerminalLeaf  = 1
)

// Prove returns a proof for key: of its value if present, else of absence.
func (t *MapTree) Prove(key ID) *MapProof {
	p := &MapProof{}
	n := t.root
	for depth := 0; n != nil && !n.isLeaf(); depth++ {
		b := bit(key, depth)
		p.Siblings = append(p.Siblings, nodeHash(n.child[1-b]))
		n = n.child[b]
	}
	if n != nil {
		p.Terminal = mapTerminalLeaf
		p.OtherKey, p.OtherValue = n.key, n.value
	}
	return p
}

var errMapProof = errors.New("invalid map proof")

// VerifyMapProof checks that p proves key ↦ value under root. With
// value == nil it checks that key is absent.
func VerifyMapProof(root tlog.Hash, key ID, value *tlog.Hash, p *MapProof) error {
	if len(p.Siblings) > 256 {
		return errMapProof
	}
	var h tlog.Hash
	switch {
	case p.Terminal == mapTerminalLeaf && value != nil:
		if p.OtherKey != key || p.OtherValue != *value {
			return errMapProof
		}
		h = mapLeafHash(key, *value)
	case p.Terminal == mapTerminalLeaf && value == nil:
		if p.OtherKey == key || !bytes.Equal(prefixBits(p.OtherKey, len(p.Siblings)), prefixBits(key, len(p.Siblings))) {
			return errMapProof
		}
		h = mapLeafHash(p.OtherKey, p.OtherValue)
	case p.Terminal == mapTerminalEmpty && value == nil:
		h = emptyHash
	default:
		return errMapProof
	}
	for depth := len(p.Siblings) - 1; depth >= 0; depth-- {
		if bit(key, depth) == 0 {
			h = mapNodeHash(h, p.Siblings[depth])
		} else {
			h = mapNodeHash(p.Siblings[depth], h)
		}
	}
	if h != root {
		return errMapProof
	}
	return nil
}

// prefixBits returns the first n bits of k, one byte per bit.
func prefixBits(k ID, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = byte(bit(k, i))
	}
	return out
}

// Marshal encodes p: siblings count (uint16), a bitmap of empty siblings,
// the non-empty siblings, then the terminal.
func (p *MapProof) Marshal() []byte {
	var w builder
	w.u16(uint16(len(p.Siblings)))
	bitmap := make([]byte, (len(p.Siblings)+7)/8)
	for i, s := range p.Siblings {
		if s == emptyHash {
			bitmap[i/8] |= 1 << (7 - i%8)
		}
	}
	w.raw(bitmap)
	for _, s := range p.Siblings {
		if s != emptyHash {
			w.raw(s[:])
		}
	}
	w.u8(p.Terminal)
	if p.Terminal == mapTerminalLeaf {
		w.raw(p.OtherKey[:])
		w.raw(p.OtherValue[:])
	}
	return w.b
}

// ParseMapProof decodes a proof written by MapProof.Marshal.
func ParseMapProof(b []byte) (*MapProof, error) {
	p := parser{b: b}
	mp, err := parseMapProof(&p)
	if err != nil {
		return nil, err
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	return mp, nil
}

func parseMapProof(p *parser) (*MapProof, error) {
	n := int(p.u16())
	if n > 256 {
		return nil, errMalformed
	}
	bitmap := p.take((n + 7) / 8)
	mp := &MapProof{Siblings: make([]tlog.Hash, n)}
	for i := 0; i < n && p.err == nil; i++ {
		if bitmap[i/8]&(1<<(7-i%8)) == 0 {
			mp.Siblings[i] = p.hash()
		}
	}
	mp.Terminal = p.u8()
	switch mp.Terminal {
	case mapTerminalLeaf:
		mp.OtherKey = p.hash()
		mp.OtherValue = p.hash()
	case mapTerminalEmpty:
	default:
		return nil, errMalformed
	}
	if p.err != nil {
		return nil, p.err
	}
	return mp, nil
}
