// Package ambient renders the mazu-ztunnel Helm chart in chart/ with Helm's
// own library, exactly as `helm template` does, and splits the result into
// Kubernetes objects. The tests use it to check the chart against golden
// files, to keep manifests/ in step with the chart, and to apply the objects
// to a real API server.
package ambient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Defaults of RenderOptions, which are also the release the plain
// manifests in manifests/ are rendered for.
const (
	DefaultReleaseName = "mazu-ztunnel"
	DefaultNamespace   = "istio-system"
	// DefaultKubeVersion is the cluster version the chart is rendered for
	// when no API server is asked, as `helm template` does with client-go
	// v0.37. The chart requires 1.30 or later.
	DefaultKubeVersion = "v1.37.0"
)

// RenderOptions selects the release to render.
type RenderOptions struct {
	// ChartDir is the chart folder. Empty means ChartDir().
	ChartDir string
	// ReleaseName and Namespace default to DefaultReleaseName and
	// DefaultNamespace.
	ReleaseName string
	Namespace   string
	// Values override the chart's values.yaml, as `helm template -f` does.
	Values map[string]any
	// KubeVersion is the Kubernetes version reported to the chart. Empty
	// means DefaultKubeVersion.
	KubeVersion string
}

// ChartDir returns the path of the chart folder next to this source file.
func ChartDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "chart"
	}
	return filepath.Join(filepath.Dir(file), "chart")
}

// Render renders the chart client-side, as `helm template` does, and
// returns the manifest: every object in Helm's install order, each after a
// "# Source:" comment naming its template. NOTES.txt is not part of it.
func Render(opts RenderOptions) (string, error) {
	if opts.ChartDir == "" {
		opts.ChartDir = ChartDir()
	}
	if opts.ReleaseName == "" {
		opts.ReleaseName = DefaultReleaseName
	}
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	if opts.KubeVersion == "" {
		opts.KubeVersion = DefaultKubeVersion
	}
	kubeVersion, err := common.ParseKubeVersion(opts.KubeVersion)
	if err != nil {
		return "", fmt.Errorf("render chart: invalid Kubernetes version %q: %w", opts.KubeVersion, err)
	}
	chrt, err := loader.LoadDir(opts.ChartDir)
	if err != nil {
		return "", fmt.Errorf("render chart: load %s: %w", opts.ChartDir, err)
	}

	// Helm logs through the configuration's handler; discard it so that
	// rendering does not write to the global logger.
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler))
	install := action.NewInstall(cfg)
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName = opts.ReleaseName
	install.Namespace = opts.Namespace
	install.Replace = true
	install.KubeVersion = kubeVersion
	values := opts.Values
	if values == nil {
		values = map[string]any{}
	}
	rel, err := install.Run(chrt, values)
	if err != nil {
		return "", fmt.Errorf("render chart %s as release %s/%s: %w", opts.ChartDir, opts.Namespace, opts.ReleaseName, err)
	}
	r, ok := rel.(*release.Release)
	if !ok {
		return "", fmt.Errorf("render chart: unexpected release type %T", rel)
	}
	return r.Manifest, nil
}

// Objects splits a rendered manifest into objects, in manifest order. An
// object without apiVersion, kind or name is an error, because the API
// server would reject it.
func Objects(manifest string) ([]*unstructured.Unstructured, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader([]byte(manifest)), 4096)
	var objects []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		err := decoder.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse manifest document %d: %w", len(objects)+1, err)
		}
		if trimmed := bytes.TrimSpace(raw); len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
			continue
		}
		// Unstructured's own JSON decoding keeps integers as int64, as
		// client-go expects, where encoding/json would make them float64.
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("parse manifest document %d: %w", len(objects)+1, err)
		}
		if obj.GetAPIVersion() == "" || obj.GetName() == "" {
			return nil, fmt.Errorf("parse manifest document %d (%s): apiVersion or metadata.name is missing", len(objects)+1, obj.GetKind())
		}
		objects = append(objects, obj)
	}
	return objects, nil
}
