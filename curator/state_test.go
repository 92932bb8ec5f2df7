package curator_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/fakerbe"
)

var scheme = fakerbe.Scheme{N: 4}

type registrant struct {
	key ed25519.PrivateKey
	der []byte
}

func newRegistrant() *registrant {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	return &registrant{k, der}
}

func claims(aud string, exp time.Time) []byte {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k"})
	p, _ := json.Marshal(map[string]any{"aud": []string{aud}, "exp": exp.Unix(), "iat": exp.Add(-10 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": "ns", "pod": map[string]string{"name": "p", "uid": "u"},
			"node": map[string]string{"name": "n"}}})
	return []byte(base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p))
}

// registration returns a valid registration at time now for slot.
func (r *registrant) registration(id curator.ID, block, slot uint32, now time.Time) *curator.Entry {
	pk := make([]byte, 16)
	rand.Read(pk)
	e := &curator.Entry{Kind: curator.KindRegistration, TimestampMS: uint64(now.UnixMilli()), ID: id, PrevIndex: curator.NoPrev,
		Block: block, Slot: slot, RBEKey: pk, RBEHelpers: scheme.Helpers(int(slot), pk), TLSKey: r.der,
		PodIP: []byte{10, 0, 0, 1}, TokenClaims: claims(curator.DefaultAudience, now.Add(5*time.Minute))}
	return r.sign(e)
}

func (r *registrant) sign(e *curator.Entry) *curator.Entry {
	e.PoPSig, _ = curator.SignPoP(r.key, curator.PoPMessage(e))
	return e
}

func apply(t *testing.T, s *curator.State, e *curator.Entry) error {
	t.Helper()
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return s.Apply(e, tlog.RecordHash(b))
}

func TestStateRules(t *testing.T) {
	now := time.Now()
	id := func(b byte) curator.ID { return curator.ID{b} }
	for _, tc := range []struct {
		name   string
		mutate func(e *curator.Entry, r *registrant)
		want   string
	}{
		{"valid registration is accepted", func(*curator.Entry, *registrant) {}, ""},
		{"re-registration is rejected", func(e *curator.Entry, r *registrant) { e.ID = id(1); e.Slot = 2; r.sign(e) }, "already registered"},
		{"reused slot is rejected", func(e *curator.Entry, r *registrant) { e.Slot = 1; r.sign(e) }, "already taken"},
		{"slot out of range is rejected", func(e *curator.Entry, r *registrant) { e.Slot = 5; r.sign(e) }, "out of range"},
		{"bad helper values are rejected", func(e *curator.Entry, r *registrant) { e.RBEHelpers[0] ^= 1; r.sign(e) }, "invalid helper values"},
		{"bad PoP signature is rejected", func(e *curator.Entry, r *registrant) { e.PoPSig[0] ^= 1 }, "proof of possession"},
		{"PoP by another key is rejected", func(e *curator.Entry, r *registrant) { newRegistrant().sign(e) }, "proof of possession"},
		{"wrong audience is rejected", func(e *curator.Entry, r *registrant) {
			e.TokenClaims = claims("other", now.Add(time.Minute))
			r.sign(e)
		}, "audience"},
		{"expired token is rejected", func(e *curator.Entry, r *registrant) {
			e.TokenClaims = claims(curator.DefaultAudience, now.Add(-time.Second))
			r.sign(e)
		}, "token expired"},
		{"earlier timestamp is rejected", func(e *curator.Entry, r *registrant) { e.TimestampMS -= 10_000; r.sign(e) }, "precedes"},
		{"registration with a previous entry is rejected", func(e *curator.Entry, r *registrant) { e.PrevIndex = 0; r.sign(e) }, "names a previous entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := curator.NewState(curator.StateConfig{Scheme: scheme})
			r := newRegistrant()
			if err := apply(t, s, r.registration(id(1), 0, 1, now)); err != nil {
				t.Fatalf("first registration: %v", err)
			}
			e := r.registration(id(2), 0, 2, now)
			tc.mutate(e, r)
			err := apply(t, s, e)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Apply = %v, want success", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Apply = %v, want an error containing %q", err, tc.want)
			}
			var re *curator.RuleError
			if err != nil && (!errors.As(err, &re) || re.Index != 1) {
				t.Errorf("Apply error = %T %v, want a RuleError at index 1", err, err)
			}
		})
	}
}

func TestStateChainRules(t *testing.T) {
	now := time.Now()
	s := curator.NewState(curator.StateConfig{Scheme: scheme})
	r := newRegistrant()
	reg := r.registration(curator.ID{1}, 0, 1, now)
	b, _ := reg.Marshal()
	if err := s.Apply(reg, tlog.RecordHash(b)); err != nil {
		t.Fatal(err)
	}
	leaf := tlog.RecordHash(b)
	next := newRegistrant()
	rot := func() *curator.Entry {
		pk := []byte("newkey")
		e := &curator.Entry{Kind: curator.KindRotation, TimestampMS: reg.TimestampMS, ID: reg.ID, PrevIndex: 0, PrevLeafHash: leaf,
			Block: 0, Slot: 1, RBEKey: pk, RBEHelpers: scheme.Helpers(1, pk), TLSKey: next.der, PodIP: reg.PodIP}
		next.sign(e)
		e.OldKeySig, _ = curator.SignPoP(r.key, curator.PoPMessage(e))
		return e
	}
	for _, tc := range []struct {
		name   string
		mutate func(e *curator.Entry)
		want   string
	}{
		{"rotation without the old key is rejected", func(e *curator.Entry) { e.OldKeySig, _ = curator.SignPoP(next.key, curator.PoPMessage(e)) }, "old-key signature"},
		{"rotation naming a stale entry is rejected", func(e *curator.Entry) { e.PrevLeafHash[0] ^= 1 }, "current entry"},
		{"rotation into another slot is rejected", func(e *curator.Entry) { e.Slot = 2 }, "the ID's block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := rot()
			tc.mutate(e)
			if err := s.Check(e); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := apply(t, s, rot()); err != nil {
		t.Fatalf("valid rotation: %v", err)
	}
	// A state entry must carry the recomputed roots.
	st := s.NextState(reg.TimestampMS)
	bad := *st
	bad.MapRoot[0] ^= 1
	if err := s.Check(&bad); err == nil || !strings.Contains(err.Error(), "map root") {
		t.Fatalf("Check(state with a wrong map root) = %v", err)
	}
	bad = *st
	bad.PPDigest[0] ^= 1
	if err := s.Check(&bad); err == nil || !strings.Contains(err.Error(), "block digest root") {
		t.Fatalf("Check(state with a wrong block digest root) = %v", err)
	}
	if err := apply(t, s, st); err != nil {
		t.Fatalf("valid state entry: %v", err)
	}
}

// TestStateCopiesTLSKey applies a parsed record and then overwrites the
// record: the ID's TLS key must not change, because a key that slices the
// record keeps the whole entry encoding in memory for as long as the ID.
func TestStateCopiesTLSKey(t *testing.T) {
	s := curator.NewState(curator.StateConfig{Scheme: scheme})
	r := newRegistrant()
	e := r.registration(curator.ID{7}, 0, 1, time.Now())
	data, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplyRecord(data); err != nil {
		t.Fatal(err)
	}
	for i := range data {
		data[i] = 0
	}
	cur, ok := s.Lookup(curator.ID{7})
	if !ok {
		t.Fatal("registered ID not found")
	}
	if !bytes.Equal(cur.TLSKey, r.der) {
		t.Errorf("TLS key after the record was overwritten = %x, want %x", cur.TLSKey, r.der)
	}
}
