package threat

import (
	"os"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestMain runs the role named by envRole when the test binary is started
// inside a pod, and otherwise runs the tests on one testbed with istiod,
// because the attacks that involve istiod need its CA and its xDS.
func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runRole(role))
	}
	testbed.Main(m, testbed.Options{Istiod: true, IstioCRDs: true})
}
