package ambient_test

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
)

var update = flag.Bool("update", false, "rewrite the golden files and manifests/ from the chart")

// goldenHeader starts every golden file, so a reader knows where it comes from.
const goldenHeader = "# Generated from deploy/ambient/chart by `go test ./deploy/ambient -run TestGolden -update`.\n# Do not edit: change the chart and regenerate.\n"

// testJWKS and testLogKey stand in for the mesh cluster's issuer key set
// and the curator's log verifier key, which a witness release requires.
const (
	testJWKS   = `{"keys":[{"use":"sig","kty":"EC","kid":"test","crv":"P-256","alg":"ES256","x":"AQ","y":"Ag"}]}`
	testLogKey = "mazu-curator.istio-system.svc/Kubernetes+1234abcd+AQID"
)

// goldenCases are the value sets the golden files cover. The default case is
// also the plain manifest set for users without Helm, so it lives in
// manifests/ rather than testdata/.
var goldenCases = []struct {
	name string
	file string
	opts ambient.RenderOptions
}{
	{
		name: "default",
		file: "manifests/mazu-ztunnel.yaml",
		opts: ambient.RenderOptions{},
	},
	{
		// The release a witness operator installs, away from the curator.
		name: "witness-release",
		file: "testdata/witness-release.yaml",
		opts: ambient.RenderOptions{
			ReleaseName: "mazu-witness",
			Namespace:   "mazu-witness-a",
			Values: map[string]any{
				"components": map[string]any{"ztunnel": false, "curator": false, "witnesses": true},
				"witness": map[string]any{
					"namespace":  "",
					"replicas":   3,
					"curatorURL": "https://curator.mesh.example.com",
					"jwks":       testJWKS,
					"logKey":     testLogKey,
				},
			},
		},
	},
	{
		// The agent and curator release once witnesses run elsewhere and nodes
		// no longer need istiod, on a revisioned Istio with a cluster name.
		name: "production",
		file: "testdata/production.yaml",
		opts: ambient.RenderOptions{
			ReleaseName: "mazu",
			Namespace:   "istio-system",
			Values: map[string]any{
				"components":     map[string]any{"witnesses": false},
				"revision":       "1-28",
				"multiCluster":   map[string]any{"clusterName": "east"},
				"logAsJson":      true,
				"resourceQuotas": map[string]any{"enabled": true},
				"agent":          map[string]any{"istiodCompat": true},
				"meshConfig": map[string]any{"defaultConfig": map[string]any{
					"proxyMetadata": map[string]any{"ISTIO_META_ENABLE_HBONE": "true"},
				}},
				"curator": map[string]any{
					"replicas":      5,
					"antiAffinity":  "hard",
					"witnessPolicy": "log mazu-curator.istio-system.svc/east\nwitness w1 w1.example.com+1234abcd+AQID\nquorum 1\n",
					"storage":       map[string]any{"storageClassName": "fast-ssd"},
				},
			},
		},
	},
}

// TestGolden renders each value set and compares it with its golden file.
func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			manifest, err := ambient.Render(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got := goldenHeader + manifest
			if *update {
				if err := os.MkdirAll(filepath.Dir(tc.file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(tc.file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatalf("read golden file (regenerate with -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from the chart's output; if the change is intended, run `go test ./deploy/ambient -run TestGolden -update`\n%s",
					tc.file, firstDifference(string(want), got))
			}
		})
	}
}

// firstDifference shows the first line where want and got differ.
func firstDifference(want, got string) string {
	wantLines, gotLines := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wantLines) || i < len(gotLines); i++ {
		var w, g string
		if i < len(wantLines) {
			w = wantLines[i]
		}
		if i < len(gotLines) {
			g = gotLines[i]
		}
		if w != g {
			return "line " + strconv.Itoa(i+1) + ":\n  golden: " + w + "\n  chart:  " + g
		}
	}
	return "(no line differs)"
}
