package curator

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxTokenSigRange is the maximum number of entries one /v1/token-signatures
// request may cover.
const MaxTokenSigRange = 1 << 16

// ErrMalformedTokenSigs reports a /v1/token-signatures body that does not
// contain exactly one length-prefixed signature per requested entry.
var ErrMalformedTokenSigs = errors.New("malformed token signature list")

// AppendTokenSigs appends the /v1/token-signatures body for sigs, one per
// entry in log order: a big-endian uint16 length and the signature, with
// length 0 for an entry without one.
func AppendTokenSigs(dst []byte, sigs [][]byte) []byte {
	for _, s := range sigs {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
		dst = append(dst, s...)
	}
	return dst
}

// ParseTokenSigs parses the /v1/token-signatures body of entries
// [start, end) and adds each entry's signature to out, keyed by index.
// Entries without a signature are left out.
func ParseTokenSigs(b []byte, start, end int64, out map[uint64][]byte) error {
	for i := start; i < end; i++ {
		if len(b) < 2 {
			return fmt.Errorf("%w: entry %d is cut short", ErrMalformedTokenSigs, i)
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return fmt.Errorf("%w: entry %d is cut short", ErrMalformedTokenSigs, i)
		}
		if n > 0 {
			out[uint64(i)] = b[2 : 2+n]
		}
		b = b[2+n:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes after the last entry", ErrMalformedTokenSigs, len(b))
	}
	return nil
}
