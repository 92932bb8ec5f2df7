//go:build tools

// Package tools pins istiod (pilot-discovery), which the testbed builds for interop tests.
package tools

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
