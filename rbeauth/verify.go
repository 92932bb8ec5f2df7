package rbeauth

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// RegistrationClaim contains the facts about a peer that its registration
// must bind, plus the proof bundle it stapled to the handshake.
type RegistrationClaim struct {
	// ID is the workload's registered ID, the SHA-256 of its token.
	ID       [32]byte
	Identity Identity
	Token    string
	PeerIP   netip.Addr
	// TLSPublicKey is the DER SubjectPublicKeyInfo of the peer's certificate.
	TLSPublicKey []byte
	// Bundle is the proof bundle stapled to the handshake.
	Bundle []byte
}

// Checkpoint identifies the log state a registration was proven against.
type Checkpoint struct {
	Size     uint64
	RootHash [32]byte
}

// Registry checks a peer's registration against the curator's log. The
// bundle's checkpoint must carry a witness quorum and be consistent with the
// checkpoints this node has verified. The ID must be registered for exactly
// this IP and TLS key with a valid RBE membership proof, and no later entry
// may supersede it. Errors wrap ErrRegistrationMissing, ErrRegistrationKey,
// ErrRegistrationSuperseded, ErrCheckpointQuorum, ErrLogFork or
// ErrCuratorUnavailable.
type Registry interface {
	VerifyRegistration(ctx context.Context, claim RegistrationClaim) (Checkpoint, error)
}

// TrustedSizer is implemented by a Registry whose verdicts depend on the
// node's trusted checkpoint. The Verifier reuses a cached verdict only while
// TrustedSize returns the size it had when the verdict was reached, so a
// registration that a newer checkpoint revokes or rotates is checked again
// instead of staying accepted until its token expires.
type TrustedSizer interface {
	TrustedSize() int64
}

// Peer is a verified peer.
type Peer struct {
	Identity   Identity
	Namespace  string
	PodName    string
	PodUID     string
	IP         netip.Addr
	Checkpoint Checkpoint
	// TokenExpiry is when the peer's token, and so this verification, ends.
	TokenExpiry time.Time
}

// VerifierOptions configures a Verifier.
type VerifierOptions struct {
	Client kubernetes.Interface
	// TrustDomain is the SPIFFE trust domain peers must be in.
	TrustDomain string
	// Audience is the token audience reserved for mazu handshakes.
	Audience string
	Registry Registry
	// LivenessTTL bounds how long a TokenReview or pod lookup is reused.
	// Zero means DefaultLivenessTTL. Values above it are rejected.
	LivenessTTL time.Duration
	// CacheSize bounds each cache. Zero means 4096 entries.
	CacheSize int
	// ClockSkew is tolerated on token and certificate times. Zero means 30 s.
	ClockSkew time.Duration
	Logger    *slog.Logger
	// Registerer receives the verifier's metrics; nil registers none.
	Registerer prometheus.Registerer
	// OnFork, if set, receives the evidence of every log fork that a
	// handshake exposes, so that the caller can keep it.
	OnFork func(*curator.ForkError)
}

// Verifier decides whether a TLS peer is a live, registered workload with
// the expected identity. It trusts only the Kubernetes API and a witness
// quorum over the curator's log.
type Verifier struct {
	trustDomain string
	audience    string
	registry    Registry
	keys        *IssuerKeys
	live        *liveness
	skew        time.Duration
	log         *slog.Logger
	now         func() time.Time
	// verified caches the pairing-heavy registration result, keyed by
	// certificate, peer IP and proof bundle. The bundle commits to its
	// checkpoint, so the key changes with the checkpoint.
	verified *ttlCache[verifiedKey, verifiedPeer]
	results  *prometheus.CounterVec
	onFork   func(*curator.ForkError)
}

// verifiedPeer is a cached verdict and the node's trusted checkpoint size
// (-1 when the registry has none) when it was reached.
type verifiedPeer struct {
	peer        *Peer
	trustedSize int64
}

type verifiedKey struct {
	cert   [32]byte
	ip     netip.Addr
	bundle [32]byte
}

// NewVerifier returns a Verifier.
func NewVerifier(opts VerifierOptions) (*Verifier, error) {
	if opts.Client == nil || opts.Registry == nil {
		return nil, fmt.Errorf("new verifier: a Kubernetes client and a registry are required")
	}
	if opts.TrustDomain == "" || opts.Audience == "" {
		return nil, fmt.Errorf("new verifier: trust domain %q and audience %q must both be set", opts.TrustDomain, opts.Audience)
	}

	ttl := opts.LivenessTTL
	if ttl == 0 {
		ttl = DefaultLivenessTTL
	}
	if ttl < 0 || ttl > DefaultLivenessTTL {
		return nil, fmt.Errorf("new verifier: liveness TTL %s is outside (0, %s]; a longer TTL would accept deleted pods' tokens for longer than the API server does", ttl, DefaultLivenessTTL)
	}
	size := opts.CacheSize
	if size == 0 {
		size = 4096
	}
	skew := opts.ClockSkew
	if skew == 0 {
		skew = 30 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	v := &Verifier{
		trustDomain: opts.TrustDomain,
		audience:    opts.Audience,
		registry:    opts.Registry,
		keys:        NewIssuerKeys(APIKeySource{Client: opts.Client}),
		live:        newLiveness(opts.Client, opts.Audience, ttl, size),
		skew:        skew,
		log:         log,
		onFork:      opts.OnFork,
		now:         time.Now,
		verified:    newTTLCache[verifiedKey, verifiedPeer](size),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mazu_peer_verifications_total",
			Help: "Peer verifications in TLS handshakes, by result and failure reason.",
		}, []string{"result", "reason"}),
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(v.results); err != nil {
			return nil, fmt.Errorf("new verifier: register metrics: %w", err)
		}
	}
	return v, nil
}

// VerifyPeer checks a completed handshake's peer. The expected list holds
// the identities the caller meant to reach, as Kubernetes states them. It is
// empty on the server side, because any mesh identity may connect there and
// authorization policy decides later.
func (v *Verifier) VerifyPeer(ctx context.Context, cs tls.ConnectionState, peerIP netip.Addr, expected []Identity) (*Peer, error) {
	peer, err := v.verifyPeer(ctx, cs, peerIP.Unmap(), expected)
	result := "accepted"
	if err != nil {
		result = "rejected"
		v.log.Warn("peer rejected", "peer_ip", peerIP, "reason", Reason(err), "error", err)
		var fork *curator.ForkError
		if v.onFork != nil && errors.As(err, &fork) {
			v.onFork(fork)
		}
	}
	v.results.WithLabelValues(result, Reason(err)).Inc()
	return peer, err
}

func (v *Verifier) verifyPeer(ctx context.Context, cs tls.ConnectionState, peerIP netip.Addr, expected []Identity) (*Peer, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: no peer certificate", ErrCertificateInvalid)
	}
	now := v.now()
	cert := cs.PeerCertificates[0]
	facts, err := inspectCertificate(cert, now)
	if err != nil {
		return nil, err
	}
	if len(cs.SignedCertificateTimestamps) != 1 {
		return nil, fmt.Errorf("%w: %d stapled proof bundles, want 1", ErrRegistrationMissing, len(cs.SignedCertificateTimestamps))
	}
	bundle := cs.SignedCertificateTimestamps[0]
	key := verifiedKey{cert: sha256.Sum256(cert.Raw), ip: peerIP, bundle: sha256.Sum256(bundle)}

	token, err := parseToken(facts.token)
	if err != nil {
		return nil, err
	}
	trustedSize := v.trustedSize()
	cached, warm := v.verified.get(key, now)
	if warm && cached.trustedSize != trustedSize {
		// The node's checkpoint moved on: a newer log entry may supersede
		// the cached registration.
		warm = false
	}
	if !warm {
		if err := v.checkTokenSignature(ctx, token); err != nil {
			return nil, err
		}
	}
	// Expiry, identity and liveness are checked on every handshake: they
	// change without the certificate changing.
	if err := token.claims.checkTime(now, v.skew); err != nil {
		return nil, err
	}
	if err := v.checkIdentity(facts.identity, &token.claims, expected); err != nil {
		return nil, err
	}
	if err := v.live.review(ctx, facts.token, &token.claims); err != nil {
		v.forgetKey(key)
		return nil, err
	}
	if err := v.live.checkPod(ctx, &token.claims, peerIP); err != nil {
		v.forgetKey(key)
		return nil, err
	}
	if warm {
		return cached.peer, nil
	}

	checkpoint, err := v.registry.VerifyRegistration(ctx, RegistrationClaim{
		ID:           sha256.Sum256([]byte(facts.token)),
		Identity:     facts.identity,
		Token:        facts.token,
		PeerIP:       peerIP,
		TLSPublicKey: facts.publicKey,
		Bundle:       bundle,
	})
	if err != nil {
		return nil, err
	}
	peer := &Peer{
		Identity:    facts.identity,
		Namespace:   token.claims.Kubernetes.Namespace,
		PodName:     token.claims.PodName(),
		PodUID:      token.claims.PodUID(),
		IP:          peerIP,
		Checkpoint:  checkpoint,
		TokenExpiry: time.Unix(token.claims.Expiry, 0),
	}
	v.verified.put(key, verifiedPeer{peer: peer, trustedSize: trustedSize}, peer.TokenExpiry)
	return peer, nil
}

func (v *Verifier) trustedSize() int64 {
	if s, ok := v.registry.(TrustedSizer); ok {
		return s.TrustedSize()
	}
	return -1
}

// checkTokenSignature checks the issuer, signature and audience.
func (v *Verifier) checkTokenSignature(ctx context.Context, token *parsedToken) error {
	issuer, err := v.keys.Issuer(ctx)
	if err != nil {
		return err
	}
	if token.claims.Issuer != issuer {
		return fmt.Errorf("%w: issuer %q, the cluster's is %q", ErrTokenIssuer, token.claims.Issuer, issuer)
	}
	key, err := v.keys.Key(ctx, token.header.KeyID)
	if err != nil {
		return err
	}
	if err := token.verifySignature(key); err != nil {
		return err
	}
	if !token.claims.Audience.Contains(v.audience) {
		return fmt.Errorf("%w: audiences %v do not include %q", ErrTokenAudience, []string(token.claims.Audience), v.audience)
	}
	if token.claims.PodUID() == "" || token.claims.PodName() == "" {
		return fmt.Errorf("%w: %v", ErrTokenMalformed, errNoPodClaim)
	}
	return nil
}

// checkIdentity checks that the certificate's identity is the token's
// service account in this trust domain, and one of the expected identities.
func (v *Verifier) checkIdentity(id Identity, claims *Claims, expected []Identity) error {
	tokenID := Identity{TrustDomain: v.trustDomain, Namespace: claims.Kubernetes.Namespace, ServiceAccount: claims.Kubernetes.ServiceAccount.Name}
	if id != tokenID {
		return fmt.Errorf("%w: certificate names %s but its token is for %s", ErrIdentityMismatch, id, tokenID)
	}
	if len(expected) > 0 && !slices.Contains(expected, id) {
		return fmt.Errorf("%w: peer is %s, expected one of %v", ErrIdentityMismatch, id, expected)
	}
	return nil
}

func (v *Verifier) forgetKey(key verifiedKey) {
	v.verified.remove(func(k verifiedKey, _ verifiedPeer) bool { return k == key })
}

// ForgetPod drops every cached result for a pod. The node agent calls it
// when its pod watch reports the pod deleted.
func (v *Verifier) ForgetPod(uid string) {
	v.live.forgetPod(uid)
	v.verified.remove(func(_ verifiedKey, p verifiedPeer) bool { return p.peer.PodUID == uid })
}

// CachedPeers returns how many verified peers are cached.
func (v *Verifier) CachedPeers() int { return v.verified.len() }
