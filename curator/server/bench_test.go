package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/internal/curatortest"
	"github.com/mazu-mesh/mazu-ztunnel/curator/raftlog"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/curator/store"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// benchReviewer accepts every token for one pod: the benchmarks measure
// the log, not the API server.
type benchReviewer struct{}

func (benchReviewer) Review(context.Context, string) (*server.PodIdentity, error) {
	return &server.PodIdentity{Namespace: "ns", ServiceAccount: "sa", PodName: "p", PodUID: "u",
		PodIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, nil
}

var benchClaims = func() string {
	b, _ := json.Marshal(map[string]any{"aud": []string{curator.DefaultAudience}, "exp": time.Now().Add(24 * time.Hour).Unix(),
		"kubernetes.io": map[string]any{"namespace": "ns", "pod": map[string]string{"name": "p", "uid": "u"},
			"node": map[string]string{"name": "n"}}})
	return "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ." + b64(b)
}()

func b64(b []byte) string {
	return curatortestB64(b)
}

// benchToken returns a distinct token with a 256-byte signature part, the
// size of an RS256 signature.
func benchToken(i int) string {
	sig := make([]byte, 256)
	rand.Read(sig)
	return fmt.Sprintf("%s.%s", benchClaims, curatortestB64(append(sig, byte(i))))
}

type benchEnv struct {
	log    *server.Log
	st     *store.Store
	signer note.Signer
	vkey   string
	tls    ed25519.PrivateKey
	der    []byte
	ids    []curator.ID
	cosig  []note.Signer
	mk     curatortest.KeyMaker
}

func newBenchLog(b *testing.B, maxBatch int) *benchEnv {
	return newBenchLogScheme(b, maxBatch, scheme, fakeKey)
}

func newBenchLogScheme(b *testing.B, maxBatch int, sch curator.Scheme, mk curatortest.KeyMaker) *benchEnv {
	key := curatortest.NewLogKey(b)
	signer, _ := note.NewSigner(key.Signer)
	st, err := store.Open(filepath.Join(b.TempDir(), "curator.db"))
	if err != nil {
		b.Fatal(err)
	}
	l, err := server.New(server.Config{Origin: curatortest.Origin, Signer: signer, VerifierKey: key.VKey, Store: st,
		Scheme: sch, Reviewer: benchReviewer{}, MaxBatch: maxBatch})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close(); st.Close() })
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	return &benchEnv{log: l, st: st, signer: signer, vkey: key.VKey, tls: k, der: der, mk: mk}
}

func (e *benchEnv) register(ctx context.Context, i int) (*server.KeyResponse, error) {
	tok := benchToken(i)
	block, slot, _, err := e.log.Reserve(curator.IDFromToken(tok))
	if err != nil {
		return nil, err
	}
	w := &curatortest.Workload{TLS: e.tls, TLSDER: e.der, IP: netip.MustParseAddr("10.0.0.1"), Token: tok}
	req, err := w.RegisterRequest(block, slot, e.mk)
	if err != nil {
		return nil, err
	}
	return e.log.Submit(ctx, curator.KindRegistration, req)
}

// BenchmarkRegister measures acknowledged registrations per second through
// the sequencer (PoP check, RBE check with the hash-based test scheme, rule
// check, bbolt append with fsync, checkpoint signature), with one client
// (every registration its own batch) and with 64 concurrent clients
// (batched). The token review is stubbed out.
func BenchmarkRegister(b *testing.B) {
	crs := benchCRS(b, 64)
	real := rbescheme.New(crs)
	// Keys are made ahead, per slot, so that the timed loop measures the
	// curator: KeyGen is the registrant's cost.
	keys := map[int][]byte{}
	for slot := 1; slot <= 64; slot++ {
		sk, _ := rbe.NewSecretKey(rand.Reader)
		pk, err := crs.KeyGen(sk, slot)
		if err != nil {
			b.Fatal(err)
		}
		keys[slot], _ = pk.MarshalBinary()
	}
	realKey := func(slot int) ([]byte, []byte, error) { return keys[slot], nil, nil }
	for _, c := range []struct {
		name    string
		clients int
		sch     curator.Scheme
		mk      curatortest.KeyMaker
	}{
		{"test-scheme/single", 1, scheme, fakeKey},
		{"test-scheme/batched-64-clients", 64, scheme, fakeKey},
		{"rbe-n64/single", 1, real, realKey},
		{"rbe-n64/batched-64-clients", 64, real, realKey},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newBenchLogScheme(b, 1024, c.sch, c.mk)
			registerConcurrently(b, e, c.clients)
		})
	}
}

// BenchmarkRegisterWitnessed measures registrations through the HTTP API
// with four in-process witnesses that replay every batch (RS256 token
// check against the JWKS, PoP, rules) before cosigning, and 64 clients.
// Tokens are minted by a test issuer, outside the timed region's critical
// path only in the sense that each client signs its own.
func BenchmarkRegisterWitnessed(b *testing.B) {
	is := curatortest.NewIssuer(b)
	c := curatortest.Start(b, curatortest.Options{Witnesses: 4, Scheme: scheme, Reviewer: is, JWKS: is.JWKS()})
	ip := netip.MustParseAddr("10.0.0.1")
	pod := is.AddPod("default", "bench", ip)
	toks := make([]string, b.N)
	for i := range toks {
		toks[i] = is.Token(pod, curator.DefaultAudience, time.Now(), time.Hour)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	next := make(chan int)
	b.ResetTimer()
	start := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := c.Register(ctx, curatortest.NewWorkload(b, toks[i], ip), fakeKey); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := 0; i < b.N; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "registrations/s")
}

// BenchmarkRegisterRaft measures acknowledged registrations per second
// through the leader of three raft replicas in this process, on loopback,
// with the hash-based test scheme and 64 clients. A batch is acknowledged
// once two replicas hold it in their fsynced raft logs and the leader's
// bbolt store applied it. The token review is stubbed out.
func BenchmarkRegisterRaft(b *testing.B) {
	key := curatortest.NewLogKey(b)
	signer, _ := note.NewSigner(key.Signer)
	var peers []raftlog.Peer
	for i, addr := range freeLoopbackAddrs(b, 3) {
		// The API URL is only used to forward requests to the leader,
		// which this benchmark calls directly.
		peers = append(peers, raftlog.Peer{ID: fmt.Sprintf("replica-%d", i), RaftAddr: addr, APIURL: "http://" + addr})
	}
	var nodes []*raftlog.Node
	var services []*raftlog.Service
	for i, p := range peers {
		dir := b.TempDir()
		st, err := store.Open(filepath.Join(dir, "curator.db"))
		if err != nil {
			b.Fatal(err)
		}
		node, err := raftlog.StartNode(raftlog.NodeConfig{ID: p.ID, Bind: p.RaftAddr, Dir: dir, Store: st, Peers: peers, Bootstrap: i == 0})
		if err != nil {
			b.Fatal(err)
		}
		svc, err := raftlog.NewService(server.Config{Origin: curatortest.Origin, Signer: signer, VerifierKey: key.VKey, Store: st,
			Scheme: scheme, Reviewer: benchReviewer{}, MaxBatch: 1024}, node, peers)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { svc.Close(); st.Close() })
		nodes, services = append(nodes, node), append(services, svc)
	}

	var leader *raftlog.Service
	for deadline := time.Now().Add(30 * time.Second); leader == nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no raft leader within 30 s")
		}
		for i, n := range nodes {
			if n.Raft.State() == raft.Leader && n.Raft.Barrier(10*time.Second).Error() == nil {
				leader = services[i]
			}
		}
	}
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	e := &benchEnv{log: leader.Log(), tls: k, der: der, mk: fakeKey}

	registerConcurrently(b, e, 64)
}

// registerConcurrently registers b.N identities from the given number of
// clients at once and reports the rate.
func registerConcurrently(b *testing.B, e *benchEnv, clients int) {
	ctx := context.Background()
	var wg sync.WaitGroup
	next := make(chan int)
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := e.register(ctx, i); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := 0; i < b.N; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "registrations/s")
}

// freeLoopbackAddrs returns n loopback addresses with ports that were free
// a moment ago. Another process may take one before the caller binds it.
func freeLoopbackAddrs(b *testing.B, n int) []string {
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		defer ln.Close()
	}
	return addrs
}

func benchCRS(b *testing.B, n int) *rbe.CRS {
	start, err := rbe.NewCeremony(n)
	if err != nil {
		b.Fatal(err)
	}
	crs, _, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	crs.Precompute()
	return crs
}

// buildLog appends n registrations in batches of 1000, each closed by a
// state entry, directly through the rule engine, and signs a checkpoint
// with 4 witness cosignatures. It returns a Log over it.
func buildLog(b *testing.B, n int) *benchEnv {
	e := newBenchLog(b, 1024)
	e.log.Close()
	// A fresh Log reloads the store in reopen.
	st := curator.NewState(curator.StateConfig{Scheme: scheme, SkipKeyCheck: true})
	now := uint64(time.Now().UnixMilli())
	var size int64
	for done := 0; done < n; {
		batch := &store.Batch{Start: size}
		for k := 0; k < 1000 && done < n; k, done = k+1, done+1 {
			tok := benchToken(done)
			in, sig, _ := curator.SplitToken(tok)
			blk, slot := st.GlobalSlot(st.SlotEnd())
			pk := make([]byte, 32)
			rand.Read(pk)
			en := &curator.Entry{Kind: curator.KindRegistration, TimestampMS: now, ID: curator.IDFromToken(tok), PrevIndex: curator.NoPrev,
				Block: blk, Slot: slot, RBEKey: pk, RBEHelpers: scheme.Helpers(int(slot), pk), TLSKey: e.der,
				PodIP: []byte{10, 0, 0, 1}, TokenClaims: []byte(in)}
			en.PoPSig, _ = curator.SignPoP(e.tls, curator.PoPMessage(en))
			data, err := en.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			if err := st.Apply(en, tlog.RecordHash(data)); err != nil {
				b.Fatal(err)
			}
			batch.Entries = append(batch.Entries, data)
			batch.TokenSigs = append(batch.TokenSigs, []byte(sig))
			e.ids = append(e.ids, en.ID)
		}
		se := st.NextState(now)
		data, _ := se.Marshal()
		if err := st.Apply(se, tlog.RecordHash(data)); err != nil {
			b.Fatal(err)
		}
		batch.Entries = append(batch.Entries, data)
		tree, err := e.st.Append(batch)
		if err != nil {
			b.Fatal(err)
		}
		size = tree.N
	}
	return e
}

// reopen starts a Log over the built store, with a checkpoint cosigned by
// four witnesses stored as its published one.
func (e *benchEnv) reopen(b *testing.B, key curatortest.LogKey) *curator.Policy {
	n, _ := e.st.Size()
	h, err := tlog.TreeHash(n, e.st)
	if err != nil {
		b.Fatal(err)
	}
	signer, _ := note.NewSigner(key.Signer)
	signers := []note.Signer{signer}
	var vkeys []string
	for i := range 4 {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		cs := curator.NewCosignatureSigner(fmt.Sprintf("witness-%d.example", i), k)
		signers = append(signers, cs)
		vkeys = append(vkeys, cs.VerifierKey())
	}
	cp, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(curatortest.Origin, tlog.Tree{N: n, Hash: h}))}, signers...)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.st.SetCheckpoint(cp); err != nil {
		b.Fatal(err)
	}
	l, err := server.New(server.Config{Origin: curatortest.Origin, Signer: signer, VerifierKey: key.VKey, Store: e.st, Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.Close)
	e.log = l
	p, err := curator.NewPolicy(curatortest.Origin, key.VKey, vkeys, 0)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// liveHeap returns the bytes of live heap objects. It collects twice,
// because the first collection only moves sync.Pool contents aside.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[int(math.Ceil(p*float64(len(d))))-1]
}

var sizes = []int{10, 100, 1_000, 10_000, 100_000}

// since is the size of a node agent's last checkpoint for a log of size
// entries: 1,000 entries back, or the log's first entry when the log is
// shorter, so that every size has a consistency proof to send.
func since(size int64) int64 {
	return max(size-1001, 1)
}

// BenchmarkAgentUpdates measures one node agent's update query (10 local
// IDs, last checkpoint 1,000 entries back or at the first entry) as the log
// grows from 10 to 100,000 registrations. "indexed" serves it from the ID
// map and the per-ID chains. "scan" is a naive query that reads every entry
// from the start of the log, which grows linearly. "warm" repeats one
// query of "indexed". "verify" is the agent's VerifyUpdates on one
// response, and "bundle" fetches and verifies proof bundles.
func BenchmarkAgentUpdates(b *testing.B) {
	for _, n := range sizes {
		key := curatortest.NewLogKey(b)
		e := buildLog(b, n)
		heapBefore := liveHeap()
		policy := e.reopen(b, key)
		// The replayed state (ID map, each ID's current entry, blocks) is
		// what the curator keeps in memory. The entries stay in bbolt's
		// memory map.
		stateBytes := liveHeap() - heapBefore
		setup := func(*testing.B) {}
		pick := func(i int) []curator.ID {
			ids := make([]curator.ID, 10)
			for j := range ids {
				ids[j] = e.ids[(i*7919+j*104729)%len(e.ids)]
			}
			return ids
		}
		b.Run(fmt.Sprintf("memory/N=%d", n), func(b *testing.B) {
			for b.Loop() {
			}
			b.ReportMetric(float64(stateBytes)/(1<<20), "state-MiB")
			b.ReportMetric(float64(stateBytes)/float64(n), "state-bytes/entry")
		})
		b.Run(fmt.Sprintf("indexed/N=%d", n), func(b *testing.B) {
			setup(b)
			size, _ := e.st.Size()
			var lat []time.Duration
			var bytes int
			var last *curator.UpdatesResponse
			for i := 0; b.Loop(); i++ {
				t0 := time.Now()
				resp, err := e.log.Updates(&curator.UpdatesRequest{Since: since(size), IDs: pick(i)})
				if err != nil {
					b.Fatal(err)
				}
				out, _ := json.Marshal(resp)
				lat = append(lat, time.Since(t0))
				bytes, last = len(out), resp
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds()), "p50-µs")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
			b.ReportMetric(float64(bytes), "response-bytes")
			b.ReportMetric(float64(proofHashes(b, last)), "proof-hashes")
		})
		// "warm" repeats one query, so the bbolt pages and heap objects
		// it reads stay in the CPU caches. It does the same work as
		// "indexed", whose queries read other IDs each time, so the
		// difference between the two is mostly the cost of cache misses.
		b.Run(fmt.Sprintf("warm/N=%d", n), func(b *testing.B) {
			setup(b)
			size, _ := e.st.Size()
			ids := pick(1)
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				resp, err := e.log.Updates(&curator.UpdatesRequest{Since: since(size), IDs: ids})
				if err != nil {
					b.Fatal(err)
				}
				json.Marshal(resp)
				lat = append(lat, time.Since(t0))
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds()), "p50-µs")
		})
		b.Run(fmt.Sprintf("verify/N=%d", n), func(b *testing.B) {
			setup(b)
			size, _ := e.st.Size()
			resp, err := e.log.Updates(&curator.UpdatesRequest{Since: since(size), IDs: pick(1)})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := curator.VerifyUpdates(resp, policy, nil, pick(1), time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("scan/N=%d", n), func(b *testing.B) {
			setup(b)
			size, _ := e.st.Size()
			var lat []time.Duration
			for i := 0; b.Loop(); i++ {
				want := map[curator.ID]bool{}
				for _, id := range pick(i) {
					want[id] = true
				}
				t0 := time.Now()
				found := 0
				for start := int64(0); start < size; start += 4096 {
					recs, err := e.st.Entries(start, min(start+4096, size))
					if err != nil {
						b.Fatal(err)
					}
					for _, r := range recs {
						if en, err := curator.ParseEntry(r); err == nil && want[en.ID] {
							found++
						}
					}
				}
				lat = append(lat, time.Since(t0))
				if found != 10 {
					b.Fatalf("scan found %d of 10 IDs", found)
				}
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds()), "p50-µs")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
		})
		b.Run(fmt.Sprintf("bundle/N=%d", n), func(b *testing.B) {
			setup(b)
			var size int
			var reg *curator.Registration
			for i := 0; b.Loop(); i++ {
				id := e.ids[(i*7919)%len(e.ids)]
				bundle, err := e.log.Bundle(id)
				if err != nil {
					b.Fatal(err)
				}
				size = len(bundle)
				if reg, err = curator.VerifyBundle(bundle, policy, id, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size), "bundle-bytes")
			bundle, _ := e.log.Bundle(e.ids[0])
			b.ReportMetric(benchVerifyTree(b, bundle, reg.Tree, e.ids[0]), "verify-known-tree-µs")
		})
	}
}

// proofHashes counts the hashes in the proofs of an updates response: the
// consistency proof, the state entry's inclusion proof and, per ID, the map
// proof, the chain's inclusion proofs and the block proof.
func proofHashes(b *testing.B, resp *curator.UpdatesResponse) int {
	n := len(resp.Consistency) + len(resp.StateInclusion)
	for _, iu := range resp.IDs {
		mp, err := curator.ParseMapProof(iu.MapProof)
		if err != nil {
			b.Fatal(err)
		}
		n += len(mp.Siblings) + len(iu.BlockProof)
		for _, ie := range iu.Entries {
			n += len(ie.Inclusion)
		}
	}
	return n
}

// benchVerifyTree times VerifyBundleTree, the per-handshake check once the
// checkpoint is known.
func benchVerifyTree(b *testing.B, bundle []byte, t tlog.Tree, id curator.ID) float64 {
	const rounds = 2000
	t0 := time.Now()
	for range rounds {
		if _, err := curator.VerifyBundleTree(bundle, t, id); err != nil {
			b.Fatal(err)
		}
	}
	return float64(time.Since(t0).Microseconds()) / rounds
}

// BenchmarkBundleSizeRBE reports the bundle size when the entry carries a
// real GKMR key with its helper values (n = 128), under a checkpoint with
// four cosignatures, in a small log.
func BenchmarkBundleSizeRBE(b *testing.B) {
	crs := benchCRS(b, 128)
	mk := func(slot int) ([]byte, []byte, error) {
		sk, _ := rbe.NewSecretKey(rand.Reader)
		pk, err := crs.KeyGen(sk, slot)
		if err != nil {
			return nil, nil, err
		}
		enc, err := pk.MarshalBinary()
		return enc, nil, err
	}
	e := newBenchLogScheme(b, 1024, rbescheme.New(crs), mk)
	var last *server.KeyResponse
	for i := range 3 {
		r, err := e.register(context.Background(), i)
		if err != nil {
			b.Fatal(err)
		}
		last = r
	}
	e.log.Close()
	bundle, err := e.log.Bundle(last.ID)
	if err != nil {
		b.Fatal(err)
	}
	parsed, _ := curator.ParseBundle(bundle)
	for b.Loop() {
		curator.ParseBundle(bundle)
	}
	b.ReportMetric(float64(len(bundle)), "bundle-bytes-log-signed")
	b.ReportMetric(float64(len(parsed.Entry)), "entry-bytes")

	// Add four cosignatures to the stored checkpoint, from witnesses named
	// like BenchmarkAgentUpdates' (17 characters), and build the bundle
	// again from a curator that loads it.
	cp, err := e.st.Checkpoint()
	if err != nil {
		b.Fatal(err)
	}
	text, _, _ := strings.Cut(string(cp), "\n\n")
	cosigned := bytes.Clone(cp)
	for i := range 4 {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		line, err := note.Sign(&note.Note{Text: text + "\n"}, curator.NewCosignatureSigner(fmt.Sprintf("witness-%d.example", i), k))
		if err != nil {
			b.Fatal(err)
		}
		cosigned = append(cosigned, line[len(text)+2:]...)
	}
	if err := e.st.SetCheckpoint(cosigned); err != nil {
		b.Fatal(err)
	}
	l, err := server.New(server.Config{Origin: curatortest.Origin, Signer: e.signer, VerifierKey: e.vkey, Store: e.st, Scheme: rbescheme.New(crs)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	withCosignatures, err := l.Bundle(last.ID)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(cosigned)-len(cp))/4, "cosignature-line-bytes")
	b.ReportMetric(float64(len(withCosignatures)), "bundle-bytes-4-cosignatures")
}
