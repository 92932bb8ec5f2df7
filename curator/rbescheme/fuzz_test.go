package rbescheme_test

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// FuzzVerifyContribution feeds arbitrary contribution encodings to the
// ceremony check, starting from the ceremony's public start or after one
// real contribution. What it accepts is framed exactly: the length field
// names the CRS, and the proof fills the rest.
func FuzzVerifyContribution(f *testing.F) {
	start, err := rbe.NewCeremony(2)
	if err != nil {
		f.Fatal(err)
	}
	first, proof1, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	second, proof2, err := rbe.Contribute(first, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}

	enc1, err := rbescheme.EncodeContribution(rbe.Contribution{CRS: first, Proof: proof1})
	if err != nil {
		f.Fatal(err)
	}
	enc2, err := rbescheme.EncodeContribution(rbe.Contribution{CRS: second, Proof: proof2})
	if err != nil {
		f.Fatal(err)
	}
	firstCRS, _ := first.MarshalBinary()

	f.Add(enc1, false)
	f.Add(enc2, true)
	f.Add(enc2[:len(enc2)-1], true)
	f.Add([]byte{0, 0, 0}, false)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2}, false)
	f.Add([]byte{0, 0, 0, 0}, false)

	s := &rbescheme.Scheme{}
	f.Fuzz(func(t *testing.T, contribution []byte, afterFirst bool) {
		var prev []byte
		if afterFirst {
			prev = firstCRS
		}
		next, fp, err := s.VerifyContribution(prev, contribution)
		if err != nil {
			return
		}
		crs, err := rbe.ParseCRS(bytes.Clone(next))
		if err != nil {
			t.Fatalf("accepted contribution yields a CRS that does not parse: %v", err)
		}
		if crs.Fingerprint() != fp {
			t.Fatalf("fingerprint %x, the returned CRS has %x", fp, crs.Fingerprint())
		}
		if len(contribution) != 4+len(next)+rbe.ContributionProofSize || !bytes.Equal(contribution[4:4+len(next)], next) {
			t.Fatalf("accepted a contribution of %d bytes whose framing does not match its CRS of %d bytes", len(contribution), len(next))
		}
	})
}
