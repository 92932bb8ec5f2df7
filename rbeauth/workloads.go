package rbeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/server"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// DefaultTokenLifetime is the lifetime of the pod-bound tokens the agent
// requests. Each token is one registration in the curator's log, so a
// shorter lifetime grows the log and the witnesses' replay work. A leaked
// token is bound to its pod, IP and TLS key and dies with the pod, which
// makes an hour an acceptable exposure. Tokens are renewed at 80% of their
// lifetime.
const DefaultTokenLifetime = time.Hour

// WorkloadsOptions configures Workloads.
type WorkloadsOptions struct {
	Client  kubernetes.Interface
	Curator *curator.Client
	Policy  *curator.Policy
	CRS     *rbe.CRS
	// TrustDomain is the SPIFFE trust domain of the certificates.
	TrustDomain string
	// Audience is the token audience reserved for mazu: the curator
	// reviews registration tokens with it, and peers verify handshake
	// tokens with it.
	Audience      string
	TokenLifetime time.Duration
	// AgentToken returns the agent's own pod-bound token, which a curator
	// with a node check needs with each registration; nil sends none.
	AgentToken func(ctx context.Context) (string, error)
	// Expect records each entry the agent requested with the node's log
	// monitor, so that the monitor can alert on entries it did not request.
	Expect func(id curator.ID, popMessage []byte)
	// Trusted returns the node's trusted checkpoint for staple updates.
	Trusted TrustedCheckpoint
	// StapleRefresh is how often staples are checked against the latest
	// checkpoint. Zero means 2 s.
	StapleRefresh time.Duration
	// StateDir, if set, keeps each pod's identity on disk, so that the next
	// agent on the node takes over its registration (see restore).
	StateDir string
	Logger   *slog.Logger
}

// Workloads manages the identities of a node's enrolled pods. Each pod gets
// a pod-bound token, a TLS key, a registration in the curator's log and a
// self-signed certificate carrying the token. Workloads keeps each pod's
// stapled proof current as the log grows.
type Workloads struct {
	opts WorkloadsOptions
	log  *slog.Logger

	mu   sync.Mutex
	pods map[types.UID]*workload
}

type workload struct {
	namespace, name string
	uid             types.UID
	ip              netip.Addr
	identity        Identity

	mu        sync.Mutex
	key       *ecdsa.PrivateKey
	spki      []byte
	token     string
	issued    time.Time
	expiry    time.Time
	id        curator.ID
	index     uint64
	block     uint32
	slot      uint32
	certDER   []byte
	cert      *tls.Certificate
	stapledAt int64 // checkpoint size of the current staple
	// pops are the messages signed for the current ID's entries.
	pops [][]byte
}

// NewWorkloads returns an identity manager; Run keeps staples current.
func NewWorkloads(opts WorkloadsOptions) (*Workloads, error) {
	if opts.Client == nil || opts.Curator == nil || opts.Policy == nil || opts.CRS == nil {
		return nil, errors.New("new workloads: Kubernetes client, curator client, policy and CRS are all required")
	}
	if opts.Audience == "" {
		opts.Audience = curator.DefaultAudience
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.TokenLifetime == 0 {
		opts.TokenLifetime = DefaultTokenLifetime
	}
	if opts.StapleRefresh == 0 {
		opts.StapleRefresh = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Trusted == nil {
		opts.Trusted = func() *curator.Checkpoint { return nil }
	}
	return &Workloads{opts: opts, log: opts.Logger, pods: map[types.UID]*workload{}}, nil
}

// Register obtains the pod's identity, registers it and waits for the
// first cosigned proof of it.
func (w *Workloads) Register(ctx context.Context, pod *corev1.Pod, ip netip.Addr) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	wl := &workload{
		namespace: pod.Namespace, name: pod.Name, uid: pod.UID, ip: ip.Unmap(),
		identity: Identity{TrustDomain: w.opts.TrustDomain, Namespace: pod.Namespace, ServiceAccount: sa},
	}
	restored, err := w.restore(ctx, wl)
	if err != nil {
		w.log.Warn("saved identity not restored; registering anew", "pod", wl.namespace+"/"+wl.name, "error", err)
	}
	if !restored {
		if err := w.enroll(ctx, wl, sa); err != nil {
			return err
		}
	}
	w.mu.Lock()
	w.pods[pod.UID] = wl
	w.mu.Unlock()
	return nil
}

// enroll requests a token, makes a key, registers and builds the first
// certificate of wl.
func (w *Workloads) enroll(ctx context.Context, wl *workload, sa string) error {
	token, expiry, err := w.requestToken(ctx, wl, sa)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate TLS key for %s/%s: %w", wl.namespace, wl.name, err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encode TLS key for %s/%s: %w", wl.namespace, wl.name, err)
	}
	resp, popMessage, err := w.register(ctx, wl, token, key, spki)
	if err != nil {
		return err
	}
	der, err := NewCertificate(key, wl.identity, token, expiry)
	if err != nil {
		return err
	}
	wl.mu.Lock()
	wl.key, wl.spki, wl.token, wl.issued, wl.expiry = key, spki, token, time.Now(), expiry
	wl.id, wl.index, wl.block, wl.slot, wl.certDER = curator.IDFromToken(token), resp.Index, resp.Block, resp.Slot, der
	wl.stapledAt, wl.pops = 0, [][]byte{popMessage}
	wl.mu.Unlock()
	if err := w.save(wl); err != nil {
		w.log.Warn("identity not saved; a restarted agent registers the pod again", "pod", wl.namespace+"/"+wl.name, "error", err)
	}
	return w.restaple(ctx, wl)
}

// requestToken requests a token bound to the pod, as the kubelet does for
// projected volumes.
func (w *Workloads) requestToken(ctx context.Context, wl *workload, sa string) (string, time.Time, error) {
	seconds := int64(w.opts.TokenLifetime / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{w.opts.Audience},
		ExpirationSeconds: &seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: wl.name, UID: wl.uid},
	}}
	resp, err := w.opts.Client.CoreV1().ServiceAccounts(wl.namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("request token for pod %s/%s: %w", wl.namespace, wl.name, err)
	}
	return resp.Status.Token, resp.Status.ExpirationTimestamp.Time, nil
}

// register reserves a slot and appends the registration. The curator
// responds once the entry is durable. It also returns the signed
// possession message, which the log monitor expects.
func (w *Workloads) register(ctx context.Context, wl *workload, token string, key *ecdsa.PrivateKey, spki []byte) (*server.KeyResponse, []byte, error) {
	var reserved server.ReserveResponse
	if err := w.opts.Curator.PostJSON(ctx, "/v1/reserve", map[string]string{"token": token}, &reserved); err != nil {
		return nil, nil, fmt.Errorf("reserve a slot for %s/%s: %w", wl.namespace, wl.name, err)
	}
	sk, err := rbe.DeriveSecretKey([]byte(token), wl.ip.AsSlice(), spki)
	if err != nil {
		return nil, nil, err
	}
	pk, err := w.opts.CRS.KeyGen(sk, int(reserved.Slot))
	if err != nil {
		return nil, nil, fmt.Errorf("generate RBE key for %s/%s: %w", wl.namespace, wl.name, err)
	}
	rbeKey, err := pk.MarshalBinary()
	if err != nil {
		return nil, nil, err
	}
	entry := &curator.Entry{
		Kind: curator.KindRegistration, ID: curator.IDFromToken(token), PrevIndex: curator.NoPrev,
		RBEKey: rbeKey, TLSKey: spki, PodIP: wl.ip.AsSlice(),
	}
	message := curator.PoPMessage(entry)
	pop, err := curator.SignPoP(key, message)
	if err != nil {
		return nil, nil, fmt.Errorf("sign possession proof for %s/%s: %w", wl.namespace, wl.name, err)
	}
	req := &server.KeyRequest{
		Token: token, Block: reserved.Block, Slot: reserved.Slot,
		RBEKey: rbeKey, TLSKey: spki, PodIP: wl.ip.String(), PoPSig: pop,
	}
	if w.opts.AgentToken != nil {
		if req.AgentToken, err = w.opts.AgentToken(ctx); err != nil {
			return nil, nil, fmt.Errorf("read the agent's own token: %w", err)
		}
	}
	if w.opts.Expect != nil {
		w.opts.Expect(entry.ID, message)
	}
	var resp server.KeyResponse
	if err := w.opts.Curator.PostJSON(ctx, "/v1/register", req, &resp); err != nil {
		return nil, nil, fmt.Errorf("register %s/%s with the curator: %w", wl.namespace, wl.name, err)
	}
	w.log.Info("workload registered", "pod", wl.namespace+"/"+wl.name, "id", hex.EncodeToString(entry.ID[:8]), "index", resp.Index, "block", resp.Block, "slot", resp.Slot)
	return &resp, message, nil
}

// restaple fetches the ID's bundle and its RBE opening at one checkpoint and
// swaps them into the certificate. It retries while the log moves between
// the two requests.
func (w *Workloads) restaple(ctx context.Context, wl *workload) error {
	wl.mu.Lock()
	id, key, der := wl.id, wl.key, wl.certDER
	wl.mu.Unlock()
	var lastErr error
	for attempt := range 20 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("staple proof for %s/%s: %w (last error: %v)", wl.namespace, wl.name, ctx.Err(), lastErr)
			case <-time.After(250 * time.Millisecond):
			}
		}
		bundleBytes, err := w.opts.Curator.Bundle(ctx, id)
		if err != nil {
			lastErr = err
			continue
		}
		bundle, err := curator.ParseBundle(bundleBytes)
		if err != nil {
			return fmt.Errorf("staple proof for %s/%s: %w", wl.namespace, wl.name, err)
		}
		resp, err := w.opts.Curator.Updates(ctx, 0, []curator.ID{id})
		if err != nil {
			lastErr = err
			continue
		}
		if string(resp.Checkpoint) != string(bundle.Checkpoint) {
			lastErr = errors.New("the log grew between the bundle and the opening")
			continue
		}
		updates, err := curator.VerifyUpdates(resp, w.opts.Policy, nil, []curator.ID{id}, time.Now())
		if err != nil {
			return fmt.Errorf("staple proof for %s/%s: verify opening: %w", wl.namespace, wl.name, err)
		}
		v := updates.IDs[id]
		if v == nil || v.Current == nil || v.Opening == nil {
			return fmt.Errorf("staple proof for %s/%s: the log has no current registration for the ID", wl.namespace, wl.name)
		}
		staple := &Staple{Bundle: bundleBytes, Block: v.Block, Version: v.Version, Digest: v.Digest, BlockProof: resp.IDs[0].BlockProof, Opening: v.Opening}
		encoded, err := staple.MarshalBinary()
		if err != nil {
			return err
		}
		cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, SignedCertificateTimestamps: [][]byte{encoded}}
		wl.mu.Lock()
		wl.cert, wl.stapledAt = cert, updates.Checkpoint.Tree.N
		wl.mu.Unlock()
		return nil
	}
	return fmt.Errorf("staple proof for %s/%s: %v", wl.namespace, wl.name, lastErr)
}

// Certificate returns the pod's certificate with its current staple.
func (w *Workloads) Certificate(uid types.UID) (*tls.Certificate, error) {
	w.mu.Lock()
	wl, ok := w.pods[uid]
	w.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no identity for pod %s: it is not enrolled", uid)
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	if wl.cert == nil {
		return nil, fmt.Errorf("no certificate yet for pod %s/%s", wl.namespace, wl.name)
	}
	return wl.cert, nil
}

// Forget drops the pod's identity, saved or held, and revokes its
// registration, which frees its slot in the curator. The identity is dropped even when the
// revocation fails, and the error then means the registration stays in the
// log.
func (w *Workloads) Forget(ctx context.Context, uid types.UID) error {
	w.mu.Lock()
	wl, ok := w.pods[uid]
	delete(w.pods, uid)
	w.mu.Unlock()
	if !ok {
		// A previous agent may have saved the pod's identity.
		return w.revokeSaved(ctx, uid)
	}
	w.removeSaved(uid)
	wl.mu.Lock()
	id, index, block, slot, key, spki, registered := wl.id, wl.index, wl.block, wl.slot, wl.key, wl.spki, wl.key != nil
	wl.mu.Unlock()
	if !registered {
		return nil
	}
	index, err := w.revoke(ctx, wl, id, index, block, slot, key, spki)
	if err != nil {
		return fmt.Errorf("revoke the registration of %s/%s: %w", wl.namespace, wl.name, err)
	}
	w.log.Info("workload registration revoked", "pod", wl.namespace+"/"+wl.name, "revocation_index", index)
	return nil
}

// revoke appends a revocation of the ID's entry at index, signed with the
// entry's TLS key, and returns the revocation's index.
func (w *Workloads) revoke(ctx context.Context, wl *workload, id curator.ID, index uint64, block, slot uint32, key *ecdsa.PrivateKey, spki []byte) (uint64, error) {
	entry := &curator.Entry{Kind: curator.KindRevocation, ID: id, PrevIndex: index, PodIP: wl.ip.AsSlice(), TLSKey: spki}
	message := curator.PoPMessage(entry)
	sig, err := curator.SignPoP(key, message)
	if err != nil {
		return 0, err
	}
	if w.opts.Expect != nil {
		w.opts.Expect(id, message)
	}
	req := &server.KeyRequest{ID: &id, PrevIndex: index, Block: block, Slot: slot, TLSKey: spki, PodIP: wl.ip.String(), OldKeySig: sig}
	var resp server.KeyResponse
	if err := w.opts.Curator.PostJSON(ctx, "/v1/revoke", req, &resp); err != nil {
		return 0, err
	}
	return resp.Index, nil
}

// IDs returns the registered IDs of the enrolled pods.
func (w *Workloads) IDs() map[curator.ID]types.UID {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[curator.ID]types.UID, len(w.pods))
	for uid, wl := range w.pods {
		wl.mu.Lock()
		out[wl.id] = uid
		wl.mu.Unlock()
	}
	return out
}

// Describe returns the pod's certificate and registration state.
func (w *Workloads) Describe(uid types.UID) any {
	w.mu.Lock()
	wl, ok := w.pods[uid]
	w.mu.Unlock()
	if !ok {
		return nil
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	return map[string]any{
		"identity":         wl.identity.String(),
		"id":               hex.EncodeToString(wl.id[:]),
		"logIndex":         wl.index,
		"block":            wl.block,
		"slot":             wl.slot,
		"tokenExpiry":      wl.expiry.UTC().Format(time.RFC3339),
		"stapledAtLogSize": wl.stapledAt,
		"registered":       wl.cert != nil,
	}
}

// Run refreshes staples when the log grows and renews tokens at 80% of
// their lifetime, until ctx ends.
func (w *Workloads) Run(ctx context.Context) {
	ticker := time.NewTicker(w.opts.StapleRefresh)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		w.refresh(ctx)
	}
}

func (w *Workloads) refresh(ctx context.Context) {
	size, err := w.latestSize(ctx)
	if err != nil {
		w.log.Warn("curator checkpoint unavailable; staples kept", "error", err)
		return
	}
	w.mu.Lock()
	list := make([]*workload, 0, len(w.pods))
	for _, wl := range w.pods {
		list = append(list, wl)
	}
	w.mu.Unlock()
	for _, wl := range list {
		wl.mu.Lock()
		renew := time.Since(wl.issued) > w.opts.TokenLifetime*8/10
		stale := wl.stapledAt < size
		wl.mu.Unlock()
		switch {
		case renew:
			if err := w.renew(ctx, wl); err != nil {
				w.log.Error("token renewal failed; the old registration stays until its token expires", "pod", wl.namespace+"/"+wl.name, "error", err)
			}
		case stale:
			if err := w.restaple(ctx, wl); err != nil {
				w.log.Warn("staple not refreshed", "pod", wl.namespace+"/"+wl.name, "error", err)
			}
		}
	}
}

func (w *Workloads) latestSize(ctx context.Context) (int64, error) {
	raw, err := w.opts.Curator.Checkpoint(ctx)
	if err != nil {
		return 0, err
	}
	cp, err := w.opts.Policy.Open(raw, time.Now())
	if err != nil {
		return 0, err
	}
	return cp.Tree.N, nil
}

// renew registers a new token and key, swaps the certificate in (open
// connections keep theirs), and revokes the old registration so the log
// shows it superseded.
func (w *Workloads) renew(ctx context.Context, wl *workload) error {
	wl.mu.Lock()
	oldID, oldIndex, oldBlock, oldSlot, oldKey, oldSPKI := wl.id, wl.index, wl.block, wl.slot, wl.key, wl.spki
	wl.mu.Unlock()
	if err := w.enroll(ctx, wl, wl.identity.ServiceAccount); err != nil {
		return err
	}
	index, err := w.revoke(ctx, wl, oldID, oldIndex, oldBlock, oldSlot, oldKey, oldSPKI)
	if err != nil {
		return fmt.Errorf("revoke the superseded registration of %s/%s: %w", wl.namespace, wl.name, err)
	}
	w.log.Info("workload token renewed", "pod", wl.namespace+"/"+wl.name, "revoked_index", oldIndex, "revocation_index", index)
	return nil
}
