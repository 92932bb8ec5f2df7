package rbe_test

import (
	"bytes"
	"crypto/rand"
	"fmt"

	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// Example runs the whole flow: a two-party ceremony, two registrations, and
// a key encapsulated to one slot and recovered by its owner.
func Example() {
	// Ceremony: every contributor re-randomises the CRS; anyone verifies.
	start, _ := rbe.NewCeremony(8)
	first, firstProof, _ := rbe.Contribute(start, rand.Reader)
	second, secondProof, _ := rbe.Contribute(first, rand.Reader)
	crs, err := rbe.VerifyTranscript(start, []rbe.Contribution{
		{CRS: first, Proof: firstProof},
		{CRS: second, Proof: secondProof},
	})
	if err != nil {
		fmt.Println("ceremony:", err)
		return
	}

	// Registrants derive keys; the curator checks and registers them.
	block := rbe.NewBlock(crs)
	sk, _ := rbe.DeriveSecretKey([]byte("service-account-token"), []byte("10.244.0.7"), []byte("tls-public-key"))
	pk, _ := crs.KeyGen(sk, 3)
	if err := block.Register(pk); err != nil {
		fmt.Println("register:", err)
		return
	}
	other, _ := rbe.NewSecretKey(rand.Reader)
	otherPK, _ := crs.KeyGen(other, 5)
	_ = block.Register(otherPK)

	// Anyone can check the membership proof of slot 3.
	opening, _ := block.Opening(3)
	fmt.Println("member:", crs.VerifyMembership(block.Digest(), 3, &pk.PK, opening) == nil)

	// A peer encapsulates to slot 3 knowing only the digest.
	ct, key, _ := crs.Encap(block.Digest(), 3, rand.Reader)
	got, err := crs.Decap(sk, 3, opening, ct)
	fmt.Println("same key:", err == nil && bytes.Equal(got, key), len(ct), "byte ciphertext")
	// Output:
	// member: true
	// same key: true 753 byte ciphertext
}
