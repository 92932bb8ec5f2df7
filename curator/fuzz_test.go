package curator

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func FuzzParseEntry(f *testing.F) {
	for _, e := range sampleEntries() {
		b, _ := e.Marshal()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEntry(b)
		if err != nil {
			return
		}
		// The encoding is canonical: what parses re-encodes identically.
		out, err := e.Marshal()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("ParseEntry accepted a non-canonical encoding: %x", b)
		}
	})
}

func FuzzParseMapProof(f *testing.F) {
	var tree MapTree
	for i := range 20 {
		tree.Set(ID{byte(i), byte(i * 7)}, tlog.Hash{byte(i)})
	}
	f.Add(tree.Prove(ID{3, 21}).Marshal())
	f.Add(tree.Prove(ID{0xff}).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseMapProof(b)
		if err != nil {
			return
		}
		VerifyMapProof(tree.Root(), ID{3, 21}, &tlog.Hash{3}, p)
		VerifyMapProof(tree.Root(), ID{0xff}, nil, p)
	})
}

func FuzzParseBundle(f *testing.F) {
	b := &Bundle{Checkpoint: []byte("cp"), Index: 1, Entry: []byte("e"), Inclusion: tlog.RecordProof{{1}},
		StateEntry: []byte("s"), MapProof: &MapProof{Siblings: []tlog.Hash{{}, {2}}}}
	enc, _ := b.Marshal()
	f.Add(enc)
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(data)
		if err != nil {
			return
		}
		if _, err := b.Marshal(); err != nil {
			t.Fatalf("parsed bundle does not marshal: %v", err)
		}
		VerifyBundleTree(data, tlog.Tree{N: 5}, ID{})
	})
}

func FuzzVerifyBundle(f *testing.F) {
	skey, vkey, _ := GenerateLogKey("fuzz.test/log")
	_ = skey
	p, err := NewPolicy("fuzz.test/log", vkey, nil, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("MZB1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		VerifyBundle(data, p, ID{}, time.Now())
	})
}

func FuzzParseCheckpoint(f *testing.F) {
	f.Add(string(FormatCheckpoint("o", tlog.Tree{N: 5, Hash: tlog.Hash{1}})))
	f.Fuzz(func(t *testing.T, s string) {
		o, tr, err := ParseCheckpoint(s)
		if err != nil {
			return
		}
		if got := string(FormatCheckpoint(o, tr)); got != s {
			t.Fatalf("ParseCheckpoint accepted a non-canonical body %q (re-encodes to %q)", s, got)
		}
	})
}

func FuzzParseTilePath(f *testing.F) {
	f.Add("tile/0/x001/234.p/5")
	f.Add("tile/entries/000")
	f.Add("tile/1/000")
	f.Fuzz(func(t *testing.T, s string) {
		tl, err := ParseTilePath(s)
		if err != nil {
			return
		}
		if _, err := ParseTilePath(TilePath(tl)); err != nil {
			t.Fatalf("TilePath(ParseTilePath(%q)) = %q does not parse", s, TilePath(tl))
		}
	})
}

func FuzzSplitEntryBundle(f *testing.F) {
	f.Add([]byte{0, 1, 'a', 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		SplitEntryBundle(b)
	})
}

func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"b","x":"AQ","y":"AQ"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := ParseJWKS(b)
		if err != nil {
			return
		}
		j.Verify("eyJhbGciOiJSUzI1NiIsImtpZCI6ImEifQ.e30", "AAAA")
	})
}

func FuzzTokenClaims(f *testing.F) {
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJtYXp1LWN1cmF0b3IifQ")
	f.Fuzz(func(t *testing.T, s string) {
		if c, err := ParseTokenClaims(s); err == nil {
			c.CheckClaims(DefaultAudience, 0)
		}
		SplitToken(s)
	})
}

func FuzzCosignatureVerifierKey(f *testing.F) {
	f.Add("w+01020304+BAAA")
	f.Fuzz(func(t *testing.T, s string) {
		NewCosignatureVerifier(s)
	})
}

func FuzzVerifyUpdates(f *testing.F) {
	_, vkey, _ := GenerateLogKey("fuzz.test/log")
	p, err := NewPolicy("fuzz.test/log", vkey, nil, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"checkpoint":"","ids":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp UpdatesResponse
		if json.Unmarshal(b, &resp) != nil {
			return
		}
		VerifyUpdates(&resp, p, nil, []ID{{}}, time.Now())
	})
}

// FuzzCheckTokenSignatureAuth feeds arbitrary Mazu-Witness-Auth headers
// and ranges to the curator's check. It accepts only the header the
// witness made for that range, in the form TokenSignatureAuth writes.
func FuzzCheckTokenSignatureAuth(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer := NewCosignatureSigner("witness.test", key)
	verifier, err := NewCosignatureVerifier(signer.VerifierKey())
	if err != nil {
		f.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	valid := TokenSignatureAuth(signer, 10, 20, now)
	f.Add(valid, int64(10), int64(20))
	f.Add(valid, int64(10), int64(21))
	f.Add("+"+valid, int64(10), int64(20))
	f.Add("1700000000", int64(0), int64(0))
	f.Add("1700000000 AAAA", int64(0), int64(1))
	f.Add("99999999999999999999 "+strings.Repeat("A", 88), int64(0), int64(1))
	f.Fuzz(func(t *testing.T, header string, start, end int64) {
		if !CheckTokenSignatureAuth([]note.Verifier{verifier}, header, start, end, now) {
			return
		}
		if header != valid || start != 10 || end != 20 {
			t.Fatalf("accepted header %q for [%d, %d), want only %q for [10, 20)", header, start, end, valid)
		}
	})
}

// FuzzParseTokenSignatureAuth checks that what the header parser accepts
// is in canonical form: formatting it again gives the same header.
func FuzzParseTokenSignatureAuth(f *testing.F) {
	f.Add("1700000000 " + base64.StdEncoding.EncodeToString(make([]byte, ed25519.SignatureSize)))
	f.Add("-5 AAAA")
	f.Add("007 AAAA")
	f.Fuzz(func(t *testing.T, header string) {
		unix, sig, err := parseTokenSignatureAuth(header)
		if err != nil {
			return
		}
		if again := fmt.Sprintf("%d %s", unix, base64.StdEncoding.EncodeToString(sig)); again != header {
			t.Fatalf("parseTokenSignatureAuth(%q) = %d, %x, which formats as %q", header, unix, sig, again)
		}
	})
}
