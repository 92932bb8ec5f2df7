package curator

import (
	"crypto/rand"
	"crypto/sha256"
	mrand "math/rand/v2"
	"testing"

	"golang.org/x/mod/sumdb/tlog"
)

func randID() (id ID) {
	rand.Read(id[:])
	return id
}

func TestMapTreeProofs(t *testing.T) {
	var tree MapTree
	keys := map[ID]tlog.Hash{}
	for i := range 300 {
		k := randID()
		v := tlog.Hash(sha256.Sum256(k[:]))
		tree.Set(k, v)
		keys[k] = v
		// Every key proves its value, at every size.
		if i%50 == 0 || i < 5 {
			for k, v := range keys {
				if err := VerifyMapProof(tree.Root(), k, &v, tree.Prove(k)); err != nil {
					t.Fatalf("size %d: VerifyMapProof(member) = %v", i+1, err)
				}
			}
		}
	}
	if tree.Len() != 300 {
		t.Fatalf("Len() = %d, want 300", tree.Len())
	}
	for range 100 {
		k := randID()
		p := tree.Prove(k)
		if err := VerifyMapProof(tree.Root(), k, nil, p); err != nil {
			t.Fatalf("VerifyMapProof(absent) = %v", err)
		}
		var v tlog.Hash
		if VerifyMapProof(tree.Root(), k, &v, p) == nil {
			t.Fatal("absence proof verified as membership")
		}
	}
	for k, v := range keys {
		p := tree.Prove(k)
		if VerifyMapProof(tree.Root(), k, nil, p) == nil {
			t.Fatal("membership proof verified as absence")
		}
		w := v
		w[0] ^= 1
		if VerifyMapProof(tree.Root(), k, &w, p) == nil {
			t.Fatal("membership proof verified with a wrong value")
		}
		q, err := ParseMapProof(p.Marshal())
		if err != nil || VerifyMapProof(tree.Root(), k, &v, q) != nil {
			t.Fatalf("proof did not survive Marshal/ParseMapProof: %v", err)
		}
		if len(p.Siblings) > 0 {
			p.Siblings[len(p.Siblings)-1][0] ^= 1
			if VerifyMapProof(tree.Root(), k, &v, p) == nil {
				t.Fatal("tampered sibling verified")
			}
		}
		break
	}
}

// The root depends on the key set only, not on the insertion order.
func TestMapTreeOrderIndependent(t *testing.T) {
	var ids []ID
	for range 64 {
		ids = append(ids, randID())
	}
	var a, b MapTree
	for _, k := range ids {
		a.Set(k, tlog.Hash(k))
	}
	for _, i := range mrand.Perm(len(ids)) {
		b.Set(ids[i], tlog.Hash{})
		b.Set(ids[i], tlog.Hash(ids[i]))
	}
	if a.Root() != b.Root() {
		t.Fatalf("roots differ across insertion orders: %v != %v", a.Root(), b.Root())
	}
}

func TestMapTreeEmpty(t *testing.T) {
	var tree MapTree
	k := randID()
	if err := VerifyMapProof(tree.Root(), k, nil, tree.Prove(k)); err != nil {
		t.Fatalf("absence in an empty tree: %v", err)
	}
}
