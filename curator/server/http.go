package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// The curator's API uses JSON for requests and for the agent's updates:
// they carry a few kilobytes at most, and JSON keeps them easy to inspect
// with curl and to evolve. Bytes that are verified rather than read (log
// entries, checkpoints, tiles and the handshake bundle) keep their binary
// or signed-note encodings inside, so nothing is re-encoded before
// verification.

var (
	errNotFound    = errors.New("not found")
	errUnavailable = errors.New("unavailable")
	errBadRequest  = errors.New("invalid request")
)

// A KeyRequest is a request to append a registration, rotation or
// revocation.
type KeyRequest struct {
	// Token is the pod-bound service-account token, with audience
	// mazu-curator. Registration only; its hash is the ID.
	Token string `json:"token,omitempty"`
	// AgentToken is the sending node agent's own pod-bound token, with the
	// same audience. With Config.NodeCheck, the registration token's node
	// must be the agent's node.
	AgentToken string `json:"agent_token,omitempty"`
	// ID and PrevIndex name the entry a rotation or revocation replaces.
	ID        *curator.ID `json:"id,omitempty"`
	PrevIndex uint64      `json:"prev_index,omitempty"`
	// Block and Slot are the slot reserved through /v1/reserve.
	Block      uint32 `json:"block"`
	Slot       uint32 `json:"slot"`
	RBEKey     []byte `json:"rbe_key,omitempty"`
	RBEHelpers []byte `json:"rbe_helpers,omitempty"`
	TLSKey     []byte `json:"tls_key"` // PKIX DER
	PodIP      string `json:"pod_ip"`
	PoPSig     []byte `json:"pop_sig,omitempty"`
	OldKeySig  []byte `json:"old_key_sig,omitempty"`
}

// A KeyResponse is the reply to a KeyRequest, sent once the entry is
// durable.
type KeyResponse struct {
	ID    curator.ID `json:"id"`
	Index uint64     `json:"index"`
	Block uint32     `json:"block"`
	Slot  uint32     `json:"slot"`
	// Opening is the slot's opening at BlockVersion, with the block
	// digest; later registrations in the block change both, and the node
	// agent fetches them from /v1/updates.
	Opening      []byte `json:"opening,omitempty"`
	BlockDigest  []byte `json:"block_digest,omitempty"`
	BlockVersion uint64 `json:"block_version,omitempty"`
	// Bundle is the proof bundle at the checkpoint that first includes the
	// entry; empty when witnesses have not cosigned yet (fetch it later
	// from /v1/bundle/<id>).
	Bundle []byte `json:"bundle,omitempty"`
}

// A ReserveResponse names the slot reserved for a registrant.
type ReserveResponse struct {
	ID      curator.ID `json:"id"`
	Block   uint32     `json:"block"`
	Slot    uint32     `json:"slot"`
	Expires time.Time  `json:"expires"`
}

// Handler returns the HTTP API:
//
//	POST /v1/reserve        {token} → ReserveResponse
//	POST /v1/register       KeyRequest → KeyResponse
//	POST /v1/rotate         KeyRequest → KeyResponse
//	POST /v1/revoke         KeyRequest → KeyResponse
//	POST /v1/updates        curator.UpdatesRequest → curator.UpdatesResponse
//	POST /v1/ceremony       binary CRS contribution → KeyResponse (index only)
//	GET  /v1/bundle/<hex ID>                 binary proof bundle
//	GET  /v1/token-signatures?start=&end=    witnesses only
//	GET  /checkpoint                         C2SP tlog-checkpoint
//	GET  /tile/<L>/<N>[.p/<W>]               C2SP tlog-tiles
//	GET  /tile/entries/<N>[.p/<W>]
//	GET  /healthz/ready                      readiness: the log is loaded
func (l *Log) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/reserve", l.handleReserve)
	mux.HandleFunc("POST /v1/register", l.handleKey(curator.KindRegistration))
	mux.HandleFunc("POST /v1/rotate", l.handleKey(curator.KindRotation))
	mux.HandleFunc("POST /v1/revoke", l.handleKey(curator.KindRevocation))
	mux.HandleFunc("POST /v1/updates", l.handleUpdates)
	mux.HandleFunc("POST /v1/ceremony", l.handleCeremony)
	mux.HandleFunc("GET /v1/bundle/{id}", l.handleBundle)
	mux.HandleFunc("GET /v1/token-signatures", l.handleTokenSigs)
	mux.HandleFunc("GET /checkpoint", l.handleCheckpoint)
	mux.HandleFunc("GET /tile/", l.handleTile)
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ready\n"))
	})
	return mux
}

func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errBadRequest):
		code = http.StatusBadRequest
	case errors.Is(err, ErrUnauthorized):
		code = http.StatusForbidden
	case errors.Is(err, ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, errNotFound):
		code = http.StatusNotFound
	case errors.Is(err, errUnavailable):
		code = http.StatusServiceUnavailable
	}
	http.Error(w, err.Error(), code)
}

func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode JSON body: %v: %w", err, errBadRequest)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (l *Log) handleReserve(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token string `json:"token"`
	}
	if err := readJSON(r, &req); err != nil {
		httpError(w, err)
		return
	}
	if _, err := l.checkToken(r.Context(), req.Token); err != nil {
		l.m.requests.WithLabelValues("reserve", "unauthorized").Inc()
		httpError(w, err)
		return
	}
	id := curator.IDFromToken(req.Token)
	block, slot, exp, err := l.Reserve(id)
	if err != nil {
		httpError(w, err)
		return
	}
	writeJSON(w, ReserveResponse{ID: id, Block: block, Slot: slot, Expires: exp})
}

// checkToken checks a registration token: claims first, for clear errors,
// then the Kubernetes TokenReview, which checks the signature, the
// audience and that the bound pod still exists.
func (l *Log) checkToken(ctx context.Context, token string) (*PodIdentity, error) {
	input, _, err := curator.SplitToken(token)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	claims, err := curator.ParseTokenClaims(input)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	if err := claims.CheckClaims(l.cfg.Audience, l.cfg.Now().Unix()); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	if l.cfg.Reviewer == nil {
		return nil, fmt.Errorf("%w: no token reviewer configured", ErrUnauthorized)
	}
	return l.cfg.Reviewer.Review(ctx, token)
}

func (l *Log) handleKey(kind curator.Kind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req KeyRequest
		if err := readJSON(r, &req); err != nil {
			l.m.requests.WithLabelValues(kind.String(), "invalid").Inc()
			httpError(w, err)
			return
		}
		resp, err := l.Submit(r.Context(), kind, &req)
		if err != nil {
			result := "error"
			switch {
			case errors.Is(err, errBadRequest):
				result = "invalid"
			case errors.Is(err, ErrUnauthorized):
				result = "unauthorized"
			case errors.Is(err, ErrConflict):
				result = "conflict"
			}
			l.m.requests.WithLabelValues(kind.String(), result).Inc()
			l.log.Info("key request rejected", "kind", kind.String(), "result", result, "err", err)
			httpError(w, err)
			return
		}
		l.m.requests.WithLabelValues(kind.String(), "ok").Inc()
		writeJSON(w, resp)
	}
}

// Submit validates a key request, appends its entry and waits until the
// entry is durable.
func (l *Log) Submit(ctx context.Context, kind curator.Kind, req *KeyRequest) (*KeyResponse, error) {
	e, sig, err := l.buildEntry(ctx, kind, req)
	if err != nil {
		return nil, err
	}
	r, err := l.submit(ctx, e, sig)
	if err != nil {
		return nil, err
	}
	return r.reply, nil
}

func (l *Log) buildEntry(ctx context.Context, kind curator.Kind, req *KeyRequest) (*curator.Entry, []byte, error) {
	ip, err := netip.ParseAddr(req.PodIP)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid pod IP %q: %w", req.PodIP, errBadRequest)
	}
	if _, err := x509.ParsePKIXPublicKey(req.TLSKey); err != nil {
		return nil, nil, fmt.Errorf("invalid TLS key, want PKIX DER: %v: %w", err, errBadRequest)
	}
	e := &curator.Entry{Kind: kind, Block: req.Block, Slot: req.Slot, RBEKey: req.RBEKey,
		RBEHelpers: req.RBEHelpers, TLSKey: req.TLSKey, PodIP: ip.AsSlice(), PoPSig: req.PoPSig, OldKeySig: req.OldKeySig}
	var tokenSig []byte
	switch kind {
	case curator.KindRegistration:
		pod, err := l.checkToken(ctx, req.Token)
		if err != nil {
			return nil, nil, err
		}
		if err := l.checkNode(ctx, pod, req.AgentToken); err != nil {
			return nil, nil, err
		}
		if !containsAddr(pod.PodIPs, ip) {
			return nil, nil, fmt.Errorf("%w: pod IP %v is not an IP of pod %s/%s (%v)", ErrUnauthorized, ip, pod.Namespace, pod.PodName, pod.PodIPs)
		}
		input, sig, _ := curator.SplitToken(req.Token)
		e.ID = curator.IDFromToken(req.Token)
		e.PrevIndex = curator.NoPrev
		e.TokenClaims = []byte(input)
		tokenSig = []byte(sig)
		if err := l.checkReservation(e); err != nil {
			return nil, nil, err
		}
	default:
		if req.ID == nil || req.Token != "" {
			return nil, nil, fmt.Errorf("%v needs id and prev_index and no token: %w", kind, errBadRequest)
		}
		e.ID, e.PrevIndex = *req.ID, req.PrevIndex
		l.mu.RLock()
		cur, ok := l.state.Lookup(e.ID)
		l.mu.RUnlock()
		if !ok || cur.Index != req.PrevIndex {
			return nil, nil, fmt.Errorf("%v of ID %v: previous entry %d is not its current entry: %w", kind, e.ID, req.PrevIndex, ErrConflict)
		}
		e.PrevLeafHash = cur.LeafHash
	}
	if kind != curator.KindRevocation {
		if err := l.cfg.Scheme.CheckKey(int(e.Slot), e.RBEKey, e.RBEHelpers); err != nil {
			return nil, nil, fmt.Errorf("invalid RBE key for slot %d: %v: %w", e.Slot, err, errBadRequest)
		}
		if err := curator.VerifyPoP(e.TLSKey, curator.PoPMessage(e), e.PoPSig); err != nil {
			return nil, nil, fmt.Errorf("invalid proof of possession: %v: %w", err, errBadRequest)
		}
	}
	return e, tokenSig, nil
}

// checkNode closes the window in which the API server's admission cache
// has not yet seen a new pod: the registration token's node must be the
// node of the agent that sends it.
func (l *Log) checkNode(ctx context.Context, pod *PodIdentity, agentToken string) error {
	if !l.cfg.NodeCheck {
		return nil
	}
	if agentToken == "" {
		return fmt.Errorf("%w: agent_token missing: the node agent must send its own token for audience %s", ErrUnauthorized, l.cfg.Audience)
	}
	agent, err := l.checkToken(ctx, agentToken)
	if err != nil {
		return fmt.Errorf("agent token: %w", err)
	}
	if sa := l.cfg.AgentServiceAccount; sa != "" && agent.Namespace+"/"+agent.ServiceAccount != sa {
		return fmt.Errorf("%w: agent token belongs to %s/%s, want the agent service account %s", ErrUnauthorized, agent.Namespace, agent.ServiceAccount, sa)
	}
	if pod.NodeName == "" || agent.NodeName == "" {
		return fmt.Errorf("%w: token without a node claim", ErrUnauthorized)
	}
	if pod.NodeName != agent.NodeName {
		return fmt.Errorf("%w: registration token is for node %s, the agent runs on node %s", ErrUnauthorized, pod.NodeName, agent.NodeName)
	}
	return nil
}

func containsAddr(l []netip.Addr, a netip.Addr) bool {
	for _, x := range l {
		if x.Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

// checkReservation requires the slot reserved for the ID, or a fresh slot
// that no other ID reserved.
func (l *Log) checkReservation(e *curator.Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.ceremonyDoneLocked(); err != nil {
		return err
	}
	n := uint64(l.cfg.Scheme.BlockSize())
	if e.Slot < 1 || uint64(e.Slot) > n {
		return fmt.Errorf("slot %d outside [1, %d]: %w", e.Slot, n, errBadRequest)
	}
	g := uint64(e.Block)*n + uint64(e.Slot) - 1
	if r, ok := l.reserved[e.ID]; ok && r.global == g {
		return nil
	}
	if g < l.nextSlot {
		return fmt.Errorf("block %d slot %d is taken or reserved for another ID; reserve a slot first: %w", e.Block, e.Slot, ErrConflict)
	}
	l.nextSlot = g + 1
	return nil
}

// handleCeremony sequences one CRS ceremony contribution. Contributions
// are accepted only before the first registration, and each must extend
// the previous one; the rule engine checks both.
func (l *Log) handleCeremony(w http.ResponseWriter, r *http.Request) {
	// Contributors authenticate with a pod-bound token, which bounds who
	// can make the curator verify and log a contribution.
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		httpError(w, fmt.Errorf("%w: contributions need an Authorization: Bearer header with a pod-bound token", ErrUnauthorized))
		return
	}
	if _, err := l.checkToken(r.Context(), token); err != nil {
		httpError(w, err)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, curator.MaxEntrySize+1))
	if err != nil || len(body) > curator.MaxEntrySize-16 {
		httpError(w, fmt.Errorf("contribution missing or over %d bytes: %w", curator.MaxEntrySize-16, errBadRequest))
		return
	}
	index, err := l.SubmitContribution(r.Context(), body)
	if err != nil {
		httpError(w, err)
		return
	}
	writeJSON(w, KeyResponse{Index: index})
}

// SubmitContribution appends a CRS ceremony contribution, in the encoding
// of rbescheme.EncodeContribution, and returns its index once it is
// durable. The caller authenticates the contributor.
func (l *Log) SubmitContribution(ctx context.Context, contribution []byte) (uint64, error) {
	res, err := l.submit(ctx, &curator.Entry{Kind: curator.KindCeremony, Ceremony: contribution}, nil)
	if err != nil {
		return 0, err
	}
	return res.index, nil
}

func (l *Log) handleUpdates(w http.ResponseWriter, r *http.Request) {
	var req curator.UpdatesRequest
	if err := readJSON(r, &req); err != nil {
		httpError(w, err)
		return
	}
	resp, err := l.Updates(&req)
	if err != nil {
		httpError(w, err)
		return
	}
	writeJSON(w, resp)
}

func (l *Log) handleBundle(w http.ResponseWriter, r *http.Request) {
	id, err := curator.ParseID(r.PathValue("id"))
	if err != nil {
		httpError(w, fmt.Errorf("%v: %w", err, errBadRequest))
		return
	}
	b, err := l.Bundle(id)
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(b)
}

func (l *Log) handleCheckpoint(w http.ResponseWriter, r *http.Request) {
	l.mu.RLock()
	cp := l.checkpoint
	l.mu.RUnlock()
	if cp == nil {
		httpError(w, fmt.Errorf("no checkpoint published yet: %w", errNotFound))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(cp)
}

// handleTokenSigs serves token signatures to witnesses, which sign the
// request with their cosignature key. The curator holds only the
// witnesses' public keys.
func (l *Log) handleTokenSigs(w http.ResponseWriter, r *http.Request) {
	start, err1 := strconv.ParseInt(r.URL.Query().Get("start"), 10, 64)
	end, err2 := strconv.ParseInt(r.URL.Query().Get("end"), 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start || end-start > curator.MaxTokenSigRange {
		httpError(w, fmt.Errorf("want start and end with 0 ≤ start ≤ end ≤ start+%d: %w", curator.MaxTokenSigRange, errBadRequest))
		return
	}
	if !l.witnessAuthorized(r.Header.Get("Mazu-Witness-Auth"), start, end) {
		httpError(w, fmt.Errorf("%w: token signatures are served only to configured witnesses", ErrUnauthorized))
		return
	}
	sigs, err := l.cfg.Store.TokenSigs(start, end)
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(curator.AppendTokenSigs(nil, sigs))
}

func (l *Log) witnessAuthorized(header string, start, end int64) bool {
	vs := make([]note.Verifier, len(l.cfg.Witnesses))
	for i, w := range l.cfg.Witnesses {
		vs[i] = w.Verifier
	}
	return curator.CheckTokenSignatureAuth(vs, header, start, end, l.cfg.Now())
}

func (l *Log) handleTile(w http.ResponseWriter, r *http.Request) {
	t, err := curator.ParseTilePath(strings.TrimPrefix(r.URL.Path, "/"))
	if err != nil {
		httpError(w, fmt.Errorf("%v: %w", err, errNotFound))
		return
	}
	// Tiles cover the durable log, which may run ahead of the published
	// checkpoint: witnesses read the new entries before they cosign.
	l.mu.RLock()
	tree := l.tree
	l.mu.RUnlock()
	data, err := curator.ReadTile(l.cfg.Store, l.cfg.Store, tree.N, t)
	if err != nil {
		httpError(w, fmt.Errorf("%v: %w", err, errNotFound))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	if t.W < 1<<t.H {
		w.Header().Set("Cache-Control", "no-store")
	}
	w.Write(data)
}
