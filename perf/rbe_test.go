package perf

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestStartRBEWithoutBinaries checks that missing testbed binaries are
// reported as errNoTestbed, which the runner turns into "not run" rows.
func TestStartRBEWithoutBinaries(t *testing.T) {
	t.Setenv(testbed.EnvBinDir, t.TempDir())
	env, err := startRBE(context.Background(), slog.New(slog.DiscardHandler), netip.MustParseAddr(ipNodeA), netip.MustParseAddr(ipNodeB))
	if err == nil {
		env.Close()
		t.Fatal("startRBE succeeded with an empty binaries folder")
	}
	if !errors.Is(err, errNoTestbed) {
		t.Fatalf("startRBE error %v does not wrap errNoTestbed", err)
	}
}
