package curator

import (
	"bytes"
	"testing"

	"golang.org/x/mod/sumdb/tlog"
)

func sampleEntries() []*Entry {
	return []*Entry{
		{Kind: KindRegistration, TimestampMS: 1, ID: ID{1}, PrevIndex: NoPrev, Block: 2, Slot: 3, RBEKey: []byte("pk"),
			RBEHelpers: []byte("helpers"), TLSKey: []byte("tls"), PodIP: []byte{10, 0, 0, 1}, TokenClaims: []byte("h.p"), PoPSig: []byte("sig")},
		{Kind: KindRotation, TimestampMS: 2, ID: ID{1}, PrevIndex: 0, PrevLeafHash: tlog.Hash{9}, Block: 2, Slot: 3,
			RBEKey: []byte("pk2"), TLSKey: []byte("tls2"), PodIP: make([]byte, 16), PoPSig: []byte("s"), OldKeySig: []byte("o")},
		{Kind: KindState, TimestampMS: 3, Epoch: 1, FirstIndex: 0, NumBlocks: 3, MapRoot: tlog.Hash{1}, PPDigest: tlog.Hash{2}},
		{Kind: KindCeremony, TimestampMS: 0, Ceremony: []byte("contribution")},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range sampleEntries() {
		b, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%v) = %v", e.Kind, err)
		}
		got, err := ParseEntry(b)
		if err != nil {
			t.Fatalf("ParseEntry(%v) = %v", e.Kind, err)
		}
		b2, _ := got.Marshal()
		if !bytes.Equal(b, b2) {
			t.Errorf("%v: re-encoding differs", e.Kind)
		}
		if _, err := ParseEntry(append(b, 0)); err == nil {
			t.Errorf("ParseEntry(%v with a trailing byte) succeeded", e.Kind)
		}
		if _, err := ParseEntry(b[:len(b)-1]); err == nil {
			t.Errorf("ParseEntry(%v truncated) succeeded", e.Kind)
		}
	}
}

func TestEntryRejectsBadPodIP(t *testing.T) {
	e := sampleEntries()[0]
	e.PodIP = []byte{1, 2, 3}
	if _, err := e.Marshal(); err == nil {
		t.Fatal("Marshal with a 3-byte pod IP succeeded")
	}
}

func TestEntryTooLarge(t *testing.T) {
	e := sampleEntries()[0]
	e.RBEKey = make([]byte, 40000)
	e.RBEHelpers = make([]byte, 40000)
	if _, err := e.Marshal(); err == nil {
		t.Fatal("Marshal of an entry over 65535 bytes succeeded")
	}
}
