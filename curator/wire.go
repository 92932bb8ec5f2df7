package curator

import (
	"encoding/binary"
	"errors"
)

// errMalformed is the single error returned for any malformed encoding of
// untrusted input, so a parse failure does not reveal which field was wrong.
var errMalformed = errors.New("malformed encoding")

// A builder appends fields in TLS presentation language: big-endian
// integers and length-prefixed opaque vectors.
type builder struct{ b []byte }

func (w *builder) u8(v uint8)   { w.b = append(w.b, v) }
func (w *builder) u16(v uint16) { w.b = binary.BigEndian.AppendUint16(w.b, v) }
func (w *builder) u32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *builder) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *builder) raw(v []byte) { w.b = append(w.b, v...) }

// opaque8 and opaque16 append a vector with a 1- or 2-byte length prefix.
// The caller has checked the length against the limit.
func (w *builder) opaque8(v []byte) {
	w.u8(uint8(len(v)))
	w.raw(v)
}

func (w *builder) opaque16(v []byte) {
	w.u16(uint16(len(v)))
	w.raw(v)
}

// A parser reads fields written by builder. Once a read fails, every later
// read fails too, so callers check err once at the end.
type parser struct {
	b   []byte
	err error
}

func (p *parser) take(n int) []byte {
	if p.err != nil || n < 0 || len(p.b) < n {
		p.err = errMalformed
		return nil
	}
	v := p.b[:n:n]
	p.b = p.b[n:]
	return v
}

func (p *parser) u8() uint8 {
	v := p.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (p *parser) u16() uint16 {
	v := p.take(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (p *parser) u32() uint32 {
	v := p.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (p *parser) u64() uint64 {
	v := p.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (p *parser) opaque8() []byte  { return p.take(int(p.u8())) }
func (p *parser) opaque16() []byte { return p.take(int(p.u16())) }

func (p *parser) hash() (h [32]byte) {
	copy(h[:], p.take(32))
	return h
}

// done reports the parse error, or errMalformed when bytes remain.
func (p *parser) done() error {
	if p.err == nil && len(p.b) != 0 {
		p.err = errMalformed
	}
	return p.err
}
