// Package kubetest runs the curator's token paths against a real
// kube-apiserver from the testbed package: TokenRequest for pod-bound
// tokens, TokenReview for verification, and the issuer's JWKS for the
// witnesses. It has no non-test code.
package kubetest
