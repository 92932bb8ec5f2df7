package rbeauth

import "errors"

// Verification failures. Each has its own sentinel so that callers can test
// for it with errors.Is, and Reason maps it to the metric label.
var (
	ErrCertificateInvalid     = errors.New("peer certificate invalid")
	ErrTokenMalformed         = errors.New("token malformed")
	ErrTokenSignature         = errors.New("token signature invalid")
	ErrTokenIssuer            = errors.New("token issuer not trusted")
	ErrTokenAudience          = errors.New("token audience invalid")
	ErrTokenExpired           = errors.New("token expired")
	ErrTokenNotLive           = errors.New("token rejected by TokenReview")
	ErrPodMismatch            = errors.New("token's pod does not match the peer")
	ErrIdentityMismatch       = errors.New("peer identity is not the expected one")
	ErrRegistrationMissing    = errors.New("registration missing")
	ErrRegistrationKey        = errors.New("registration does not match the peer's token, IP and TLS key")
	ErrRegistrationSuperseded = errors.New("registration superseded")
	ErrCheckpointQuorum       = errors.New("checkpoint lacks a witness quorum")
	ErrLogFork                = errors.New("transparency log fork detected")
	ErrKubernetesUnavailable  = errors.New("kubernetes API unavailable")
	ErrCuratorUnavailable     = errors.New("curator unavailable")
)

var reasons = []struct {
	err    error
	reason string
}{
	{ErrCertificateInvalid, "certificate_invalid"},
	{ErrTokenMalformed, "token_malformed"},
	{ErrTokenSignature, "token_signature"},
	{ErrTokenIssuer, "token_issuer"},
	{ErrTokenAudience, "token_audience"},
	{ErrTokenExpired, "token_expired"},
	{ErrTokenNotLive, "token_not_live"},
	{ErrPodMismatch, "pod_mismatch"},
	{ErrIdentityMismatch, "identity_mismatch"},
	{ErrRegistrationMissing, "registration_missing"},
	{ErrRegistrationKey, "registration_key"},
	{ErrRegistrationSuperseded, "registration_superseded"},
	{ErrCheckpointQuorum, "checkpoint_quorum"},
	{ErrLogFork, "log_fork"},
	{ErrKubernetesUnavailable, "kubernetes_unavailable"},
	{ErrCuratorUnavailable, "curator_unavailable"},
	{ErrMazuPeerWithoutRBE, "mazu_peer_without_rbe"},
	{ErrCAChain, "ca_chain_invalid"},
}

// Reason returns the metric label for a verification error: "ok" for nil
// and "other" for an error that is none of the sentinels.
func Reason(err error) string {
	if err == nil {
		return "ok"
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "other"
}
