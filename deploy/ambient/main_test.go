package ambient_test

import (
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestMain starts one testbed (kube-apiserver, etcd, kube-controller-manager
// on loopback) for the API-server tests. The rendering tests need none, and
// the API-server tests skip when the testbed cannot run.
func TestMain(m *testing.M) {
	testbed.Main(m, testbed.Options{})
}
