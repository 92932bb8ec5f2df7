// Package privtest gates tests that need root: network namespaces, eBPF and
// cgroups. Such a test skips when the process is not root, unless
// MAZU_REQUIRE_PRIVILEGED=1 is set, in which case it fails instead, so that CI
// cannot pass by skipping them.
package privtest

import (
	"os"
	"testing"
)

// EnvRequire is the environment variable that turns a skip into a failure.
const EnvRequire = "MAZU_REQUIRE_PRIVILEGED"

// Required reports whether privileged tests must run rather than skip.
func Required() bool {
	return os.Getenv(EnvRequire) == "1"
}

// Require skips t when the process is not root, or fails it when
// MAZU_REQUIRE_PRIVILEGED=1.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if Required() {
		t.Fatalf("test needs root, and %s=1 forbids skipping: run it as root", EnvRequire)
	}
	t.Skip("test needs root (network namespaces, eBPF or cgroups); run as root to include it")
}
