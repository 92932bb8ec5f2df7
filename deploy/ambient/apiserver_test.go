package ambient_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// fieldManager names this test as the owner of the fields it applies.
const fieldManager = "mazu-ztunnel-chart-test"

var (
	installOnce sync.Once
	installErr  error
	installed   []*unstructured.Unstructured
)

// installDefault applies the default rendering (the plain manifests) to the
// shared testbed once per test binary, and returns the applied objects.
func installDefault(t testing.TB, tb *testbed.Testbed) []*unstructured.Unstructured {
	t.Helper()
	installOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var manifest string
		if manifest, installErr = ambient.Render(ambient.RenderOptions{}); installErr != nil {
			return
		}
		installed, installErr = applyManifest(ctx, tb, ambient.DefaultNamespace, manifest)
	})
	if installErr != nil {
		t.Fatalf("install the default chart: %v", installErr)
	}
	return installed
}

// applier applies objects with server-side apply through the dynamic client.
type applier struct {
	dynamic dynamic.Interface
	mapper  meta.RESTMapper
}

func newApplier(tb *testbed.Testbed) (*applier, error) {
	cfg := tb.RESTConfig()
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create discovery client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	return &applier{dynamic: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))}, nil
}

// apply server-side applies obj with strict field validation, so a field
// the API server does not know fails the apply instead of being dropped.
func (a *applier) apply(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", gvk, err)
	}
	var client dynamic.ResourceInterface = a.dynamic.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			return nil, fmt.Errorf("%s %s has no metadata.namespace; the chart must set it on every namespaced object", gvk.Kind, obj.GetName())
		}
		client = a.dynamic.Resource(mapping.Resource).Namespace(obj.GetNamespace())
	}
	data, err := json.Marshal(obj.Object)
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	force := true
	applied, err := client.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		FieldManager:    fieldManager,
		Force:           &force,
		FieldValidation: metav1.FieldValidationStrict,
	})
	if err != nil {
		return nil, fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return applied, nil
}

// applyManifest creates the release namespace, as `helm install
// --create-namespace` does, and applies every object of the manifest.
func applyManifest(ctx context.Context, tb *testbed.Testbed, namespace, manifest string) ([]*unstructured.Unstructured, error) {
	objects, err := ambient.Objects(manifest)
	if err != nil {
		return nil, err
	}
	if err := tb.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	a, err := newApplier(tb)
	if err != nil {
		return nil, err
	}
	var applied []*unstructured.Unstructured
	for _, obj := range objects {
		out, err := a.apply(ctx, obj)
		if err != nil {
			return nil, err
		}
		applied = append(applied, out)
	}
	return applied, nil
}

// TestApplyServerSide applies the default rendering to a real kube-apiserver
// and checks that every object was accepted and that applying the same
// manifest again changes nothing.
func TestApplyServerSide(t *testing.T) {
	tb := testbed.Get(t)
	first := installDefault(t, tb)

	manifest, err := ambient.Render(ambient.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objects, err := ambient.Objects(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(objects) {
		t.Fatalf("applied %d objects, the manifest has %d", len(first), len(objects))
	}
	kinds := map[string]int{}
	for _, obj := range objects {
		kinds[obj.GetKind()]++
	}
	// The default values leave the witnesses out (TestApplyVariants applies
	// a witness release).
	want := map[string]int{
		"DaemonSet": 1, "StatefulSet": 1, "PodDisruptionBudget": 1, "ServiceAccount": 2,
		"ClusterRole": 2, "ClusterRoleBinding": 2, "ValidatingAdmissionPolicy": 3,
		"ValidatingAdmissionPolicyBinding": 3, "Namespace": 0, "Service": 2,
	}
	for kind, n := range want {
		if kinds[kind] != n {
			t.Errorf("default manifest has %d objects of kind %s, want %d", kinds[kind], kind, n)
		}
	}

	// A second apply of the same manifest must be a no-op: the chart's
	// output is stable and the server has nothing to change.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := newApplier(tb)
	if err != nil {
		t.Fatal(err)
	}
	for i, obj := range objects {
		again, err := a.apply(ctx, obj)
		if err != nil {
			t.Fatal(err)
		}
		if got, was := again.GetResourceVersion(), first[i].GetResourceVersion(); got != was {
			t.Errorf("re-applying %s %s/%s changed it (resourceVersion %s -> %s)", obj.GetKind(), obj.GetNamespace(), obj.GetName(), was, got)
		}
	}

	// The server stored the agent's capabilities as the chart wrote them.
	ds, err := tb.Client().AppsV1().DaemonSets(ambient.DefaultNamespace).Get(ctx, "mazu-ztunnel", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var agentCaps []string
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == "istio-proxy" && c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
			for _, capability := range c.SecurityContext.Capabilities.Add {
				agentCaps = append(agentCaps, string(capability))
			}
		}
	}
	if fmt.Sprint(agentCaps) != "[NET_ADMIN SYS_ADMIN SYS_PTRACE]" {
		t.Errorf("stored agent capabilities = %v, want [NET_ADMIN SYS_ADMIN SYS_PTRACE]", agentCaps)
	}
	if n := len(ds.Spec.Template.Spec.InitContainers); n != 1 {
		t.Fatalf("stored agent pod has %d init containers, want the mazu-cni installer", n)
	}
	installer := ds.Spec.Template.Spec.InitContainers[0]
	if installer.RestartPolicy == nil || *installer.RestartPolicy != "Always" {
		t.Errorf("mazu-cni installer restartPolicy = %v, want Always (a native sidecar)", installer.RestartPolicy)
	}
}

// TestApplyVariants applies the other golden value sets, each in a namespace
// of its own so that their cluster-wide objects do not replace the default
// release's, and checks that the API server accepts every object.
func TestApplyVariants(t *testing.T) {
	tb := testbed.Get(t)
	for _, tc := range goldenCases[1:] {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			opts := tc.opts
			opts.Namespace = "apply-" + tc.name
			manifest, err := ambient.Render(opts)
			if err != nil {
				t.Fatal(err)
			}
			applied, err := applyManifest(ctx, tb, opts.Namespace, manifest)
			if err != nil {
				t.Fatal(err)
			}
			if len(applied) == 0 {
				t.Fatal("the variant rendered no object")
			}
		})
	}
}
