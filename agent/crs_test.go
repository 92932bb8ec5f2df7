package agent

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/internal/meshtest"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

// TestLoadCRSFromLog starts a curator whose CRS comes from a contribution
// in its log. An agent without a CRS file must take that CRS, and wait
// while the log has too few contributions. A CRS file that differs from
// the still open ceremony is kept.
func TestLoadCRSFromLog(t *testing.T) {
	tb := testbed.Get(t)
	mesh, err := meshtest.StartCurator(t.Context(), meshtest.CuratorOptions{Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2, Ceremony: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	client := &curator.Client{URL: mesh.URL}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	cfg := NodeConfig{}

	crs, err := loadCRS(t.Context(), cfg, client, mesh.Policy, log)
	if err != nil {
		t.Fatalf("load the CRS from the log: %v", err)
	}
	if crs.Fingerprint() != mesh.CRS.Fingerprint() {
		t.Fatalf("CRS from the log has fingerprint %x, the ceremony's is %x", crs.Fingerprint(), mesh.CRS.Fingerprint())
	}

	cfg.CRSMinContributions = 2
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if _, err := loadCRS(ctx, cfg, client, mesh.Policy, log); err == nil || !strings.Contains(err.Error(), "wait for the CRS ceremony") {
		t.Fatalf("load with 2 contributions required of 1 = %v, want a wait that ends with the context", err)
	}

	start, err := rbe.NewCeremony(mesh.CRS.N())
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := other.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	cfg = NodeConfig{CRSFile: filepath.Join(t.TempDir(), "crs.bin")}
	if err := os.WriteFile(cfg.CRSFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	crs, err = loadCRS(t.Context(), cfg, client, mesh.Policy, log)
	if err != nil || crs.Fingerprint() != other.Fingerprint() {
		t.Fatalf("load a CRS file while the ceremony is open = %v; want the file's CRS", err)
	}
}

// TestAgentTakesCRSFromLog runs an agent without a CRS file against a
// curator whose CRS comes from its log. The agent must enroll a pod, which
// registers it and closes the ceremony. After that, a CRS file that is not
// the ceremony's result must be rejected.
func TestAgentTakesCRSFromLog(t *testing.T) {
	privtest.Require(t)
	tb := testbed.Get(t)
	mesh, err := meshtest.StartCurator(t.Context(), meshtest.CuratorOptions{Client: tb.Client(), Dir: t.TempDir(), Witnesses: 2, Ceremony: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mesh.Stop() })
	cni := buildCNI(t)
	node := testbed.NewNode(t, tb, "crs-log")
	na := startAgentWith(t, tb, mesh, node, agentOptions{CRSFromLog: true})
	ambientNamespace(t, tb, "crs-log")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "crs-log", Name: "web", ServiceAccount: "web", OnNetwork: cniAdd(cni, na.socket)})
	waitEnrolled(t, tb, pod)
	registeredID(t, na, pod)

	start, err := rbe.NewCeremony(mesh.CRS.N())
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := rbe.Contribute(start, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := other.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	cfg := NodeConfig{CRSFile: filepath.Join(t.TempDir(), "crs.bin")}
	if err := os.WriteFile(cfg.CRSFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	_, err = loadCRS(t.Context(), cfg, &curator.Client{URL: mesh.URL}, mesh.Policy, log)
	if err == nil || !strings.Contains(err.Error(), "finished ceremony") {
		t.Fatalf("load a foreign CRS file after the ceremony closed = %v, want a rejection naming the ceremony", err)
	}
}
