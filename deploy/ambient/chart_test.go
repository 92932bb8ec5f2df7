package ambient_test

import (
	"bufio"
	"crypto/rand"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/agent"
	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"golang.org/x/mod/sumdb/note"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// render renders the chart with values for the default release.
func render(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	manifest, err := ambient.Render(ambient.RenderOptions{Values: values})
	if err != nil {
		t.Fatal(err)
	}
	objects, err := ambient.Objects(manifest)
	if err != nil {
		t.Fatal(err)
	}
	return objects
}

func find(t *testing.T, objects []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, obj := range objects {
		if obj.GetKind() == kind && obj.GetName() == name {
			return obj
		}
	}
	t.Fatalf("rendered chart has no %s %s", kind, name)
	return nil
}

func agentDaemonSet(t *testing.T, objects []*unstructured.Unstructured) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objects, "DaemonSet", "mazu-ztunnel").Object, &ds); err != nil {
		t.Fatalf("decode DaemonSet: %v", err)
	}
	return &ds
}

func agentContainer(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == "istio-proxy" {
			return c
		}
	}
	t.Fatal("agent DaemonSet has no istio-proxy container")
	return corev1.Container{}
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// TestIstioValueNames sets the values that share their name and meaning with
// Istio's ztunnel chart and checks that each takes effect.
func TestIstioValueNames(t *testing.T) {
	cases := []struct {
		name   string
		values map[string]any
		check  func(t *testing.T, ds *appsv1.DaemonSet, c corev1.Container)
	}{
		{"hub and tag", map[string]any{"hub": "registry.example/mesh", "tag": "1.2.3"}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if c.Image != "registry.example/mesh/mazu-ztunnel:1.2.3" {
				t.Errorf("image = %q", c.Image)
			}
		}},
		{"image as full reference", map[string]any{"image": "other.example/agent@sha256:0123"}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if c.Image != "other.example/agent@sha256:0123" {
				t.Errorf("image = %q", c.Image)
			}
		}},
		{"imagePullSecrets", map[string]any{"imagePullSecrets": []any{"registry-login"}}, func(t *testing.T, ds *appsv1.DaemonSet, _ corev1.Container) {
			secrets := ds.Spec.Template.Spec.ImagePullSecrets
			if len(secrets) != 1 || secrets[0].Name != "registry-login" {
				t.Errorf("imagePullSecrets = %v", secrets)
			}
		}},
		{"resources", map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": "1Gi"}}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if got := c.Resources.Limits.Memory().String(); got != "1Gi" {
				t.Errorf("memory limit = %s", got)
			}
		}},
		{"podAnnotations", map[string]any{"podAnnotations": map[string]any{"example.com/a": "b"}}, func(t *testing.T, ds *appsv1.DaemonSet, _ corev1.Container) {
			if ds.Spec.Template.Annotations["example.com/a"] != "b" {
				t.Errorf("pod annotations = %v", ds.Spec.Template.Annotations)
			}
		}},
		{"nodeSelector", map[string]any{"nodeSelector": map[string]any{"mazu-mesh.io/dataplane": "mazu"}}, func(t *testing.T, ds *appsv1.DaemonSet, _ corev1.Container) {
			sel := ds.Spec.Template.Spec.NodeSelector
			if sel["mazu-mesh.io/dataplane"] != "mazu" || sel["kubernetes.io/os"] != "linux" {
				t.Errorf("node selector = %v", sel)
			}
		}},
		{"tolerations", map[string]any{"tolerations": []any{map[string]any{"key": "dedicated", "operator": "Exists"}}}, func(t *testing.T, ds *appsv1.DaemonSet, _ corev1.Container) {
			tol := ds.Spec.Template.Spec.Tolerations
			if len(tol) != 1 || tol[0].Key != "dedicated" {
				t.Errorf("tolerations = %v", tol)
			}
		}},
		{"priorityClassName", map[string]any{"priorityClassName": "mesh-critical"}, func(t *testing.T, ds *appsv1.DaemonSet, _ corev1.Container) {
			if ds.Spec.Template.Spec.PriorityClassName != "mesh-critical" {
				t.Errorf("priorityClassName = %q", ds.Spec.Template.Spec.PriorityClassName)
			}
		}},
		{"logLevel", map[string]any{"logLevel": "debug"}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "LOG_LEVEL"); v != "debug" {
				t.Errorf("LOG_LEVEL = %q", v)
			}
		}},
		// The agent logs JSON without LOG_FORMAT, so the chart always sets it.
		{"logAsJson unset", nil, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, ok := envValue(c, "LOG_FORMAT"); v != "text" {
				t.Errorf("LOG_FORMAT = %q (set: %v), want text", v, ok)
			}
		}},
		{"logAsJson", map[string]any{"logAsJson": true}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "LOG_FORMAT"); v != "json" {
				t.Errorf("LOG_FORMAT = %q, want json", v)
			}
		}},
		{"meshConfig.trustDomain", map[string]any{"meshConfig": map[string]any{"trustDomain": "example.org"}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "TRUST_DOMAIN"); v != "example.org" {
				t.Errorf("TRUST_DOMAIN = %q, want example.org", v)
			}
		}},
		{"meshConfig.trustDomain default", nil, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "TRUST_DOMAIN"); v != "cluster.local" {
				t.Errorf("TRUST_DOMAIN = %q, want cluster.local", v)
			}
		}},
		{"meshConfig.rootNamespace", map[string]any{"meshConfig": map[string]any{"rootNamespace": "mesh-root"}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "MAZU_ROOT_NAMESPACE"); v != "mesh-root" {
				t.Errorf("MAZU_ROOT_NAMESPACE = %q, want mesh-root", v)
			}
		}},
		{"env", map[string]any{"env": map[string]any{"EXTRA_SETTING": "on"}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "EXTRA_SETTING"); v != "on" {
				t.Errorf("EXTRA_SETTING = %q", v)
			}
		}},
		{"terminationGracePeriodSeconds", map[string]any{"terminationGracePeriodSeconds": 45}, func(t *testing.T, ds *appsv1.DaemonSet, c corev1.Container) {
			if p := ds.Spec.Template.Spec.TerminationGracePeriodSeconds; p == nil || *p != 45 {
				t.Errorf("terminationGracePeriodSeconds = %v", p)
			}
			if v, _ := envValue(c, "TERMINATION_GRACE_PERIOD_SECONDS"); v != "45" {
				t.Errorf("TERMINATION_GRACE_PERIOD_SECONDS = %q", v)
			}
		}},
		{"revision", map[string]any{"revision": "canary", "agent": map[string]any{"istiodCompat": true}}, func(t *testing.T, ds *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "CA_ADDRESS"); v != "istiod-canary.istio-system.svc:15012" {
				t.Errorf("CA_ADDRESS = %q", v)
			}
			if ds.Spec.Template.Annotations["istio.io/rev"] != "canary" {
				t.Errorf("pod annotations = %v", ds.Spec.Template.Annotations)
			}
		}},
		{"istioNamespace", map[string]any{"istioNamespace": "mesh-control", "agent": map[string]any{"istiodCompat": true}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "CA_ADDRESS"); v != "istiod.mesh-control.svc:15012" {
				t.Errorf("CA_ADDRESS = %q", v)
			}
			if v, _ := envValue(c, "MAZU_ROOT_NAMESPACE"); v != "mesh-control" {
				t.Errorf("MAZU_ROOT_NAMESPACE = %q, want the Istio namespace mesh-control", v)
			}
		}},
		{"multiCluster.clusterName", map[string]any{"multiCluster": map[string]any{"clusterName": "east"}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, _ := envValue(c, "ISTIO_META_CLUSTER_ID"); v != "east" {
				t.Errorf("ISTIO_META_CLUSTER_ID = %q", v)
			}
			if v, _ := envValue(c, "MAZU_CURATOR_AUDIENCE"); v != "mazu-curator.istio-system.svc/east" {
				t.Errorf("MAZU_CURATOR_AUDIENCE = %q", v)
			}
		}},
		// Accepted from Istio's values files and ignored: the agent reads no
		// proxyMetadata entry.
		{"meshConfig.defaultConfig.proxyMetadata", map[string]any{"meshConfig": map[string]any{"defaultConfig": map[string]any{"proxyMetadata": map[string]any{"ISTIO_META_ENABLE_HBONE": "true"}}}}, func(t *testing.T, _ *appsv1.DaemonSet, c corev1.Container) {
			if v, ok := envValue(c, "ISTIO_META_ENABLE_HBONE"); ok {
				t.Errorf("ISTIO_META_ENABLE_HBONE = %q, want proxyMetadata ignored", v)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ds := agentDaemonSet(t, render(t, tc.values))
			tc.check(t, ds, agentContainer(t, ds))
		})
	}
}

// TestAgentReadsEveryVariable checks that the agent reads each environment
// variable the chart sets on its container, in strict and compatibility
// mode, so the chart passes nothing the agent ignores.
func TestAgentReadsEveryVariable(t *testing.T) {
	read := map[string]bool{}
	agent.NodeConfigFromFlags(flag.NewFlagSet("mazu-ztunnel", flag.ContinueOnError), func(name string) string {
		read[name] = true
		return ""
	})
	for _, values := range []map[string]any{nil, {"agent": map[string]any{"istiodCompat": true}}} {
		c := agentContainer(t, agentDaemonSet(t, render(t, values)))
		for _, e := range c.Env {
			if !read[e.Name] {
				t.Errorf("chart sets %s (values %v), which the agent does not read", e.Name, values)
			}
		}
	}
}

// withWitnesses returns values that turn the witnesses on with the
// required witness values, then applies overrides to the witness section.
func withWitnesses(overrides map[string]any) map[string]any {
	witness := map[string]any{"jwks": testJWKS, "logKey": testLogKey}
	for key, value := range overrides {
		witness[key] = value
	}
	return map[string]any{"components": map[string]any{"witnesses": true}, "witness": witness}
}

// witnessOnly returns the values of a witness operator's release, with
// overrides applied to the witness section.
func witnessOnly(overrides map[string]any) map[string]any {
	values := withWitnesses(overrides)
	values["components"] = map[string]any{"ztunnel": false, "curator": false, "witnesses": true}
	return values
}

// TestInvalidValuesRejected checks that values the chart cannot honour stop
// the render with a message that names the value.
func TestInvalidValuesRejected(t *testing.T) {
	cases := []struct {
		name    string
		values  map[string]any
		message string
	}{
		{"even raft membership", map[string]any{"curator": map[string]any{"replicas": 2}}, "curator.replicas=2 is invalid"},
		{"no curator members", map[string]any{"curator": map[string]any{"replicas": 0}}, "curator.replicas=0 is invalid"},
		{"two witnesses beside the curator", withWitnesses(map[string]any{"replicas": 2}), "witness.replicas=2 is too few"},
		{"witness release without witnesses", witnessOnly(map[string]any{"replicas": 0}), "witness.replicas=0 is invalid"},
		{"witnesses without JWKS", withWitnesses(map[string]any{"jwks": ""}), "witness.jwks is empty"},
		{"witnesses with blank JWKS", withWitnesses(map[string]any{"jwks": " \n"}), "kubectl get --raw /openid/v1/jwks"},
		{"JWKS not a key set", withWitnesses(map[string]any{"jwks": `{"issuer":"https://kubernetes.default.svc"}`}), "witness.jwks is not a JSON Web Key Set"},
		{"JWKS not JSON", withWitnesses(map[string]any{"jwks": "-----BEGIN PUBLIC KEY-----"}), "witness.jwks is not a JSON Web Key Set"},
		{"witnesses without log key", withWitnesses(map[string]any{"logKey": ""}), "witness.logKey is empty"},
		{"witness key as log key", withWitnesses(map[string]any{"logKey": "w1.example.com+1234abcd+AQID EXTRA"}), "is not a log verifier key"},
		{"log key without hash", withWitnesses(map[string]any{"logKey": "mazu-curator.istio-system.svc/Kubernetes+AQID"}), "is not a log verifier key"},
		{"unchained CNI", map[string]any{"cni": map[string]any{"chained": false}}, "cni.chained=false is not supported"},
		{"DNS capture", map[string]any{"cni": map[string]any{"dnsCapture": true}}, "cni.dnsCapture=true is not supported"},
		{"IPv6 capture off", map[string]any{"cni": map[string]any{"ipv6": false}}, "cni.ipv6=false is not supported"},
		{"unknown anti-affinity", map[string]any{"curator": map[string]any{"antiAffinity": "maybe"}}, `curator.antiAffinity="maybe" is invalid`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ambient.Render(ambient.RenderOptions{Values: tc.values})
			if err == nil {
				t.Fatalf("render succeeded, want an error containing %q", tc.message)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("render error = %q, want it to contain %q", err, tc.message)
			}
		})
	}
}

// TestLeastPrivilege checks every pod the chart renders: every container
// drops all capabilities, only the agent adds any, exactly NET_ADMIN,
// SYS_ADMIN and SYS_PTRACE, no pod is privileged or shares the host's
// network or IPC namespace, and only the agent shares its PID namespace.
func TestLeastPrivilege(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			manifest, err := ambient.Render(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			objects, err := ambient.Objects(manifest)
			if err != nil {
				t.Fatal(err)
			}
			pods := 0
			for _, obj := range objects {
				spec, ok := podSpec(t, obj)
				if !ok {
					continue
				}
				pods++
				if spec.HostNetwork || spec.HostIPC {
					t.Errorf("%s %s shares the host's network or IPC namespace", obj.GetKind(), obj.GetName())
				}
				isAgent := obj.GetKind() == "DaemonSet" && slices.ContainsFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "istio-proxy" })
				if spec.HostPID != isAgent {
					t.Errorf("%s %s hostPID = %v, want %v (only the agent finds running pods' namespaces by PID)", obj.GetKind(), obj.GetName(), spec.HostPID, isAgent)
				}
				for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
					checkContainerPrivilege(t, obj, c)
				}
			}
			if pods == 0 {
				t.Fatal("rendered no workload")
			}
		})
	}
}

func podSpec(t *testing.T, obj *unstructured.Unstructured) (corev1.PodSpec, bool) {
	t.Helper()
	var template corev1.PodTemplateSpec
	raw, found, err := unstructured.NestedMap(obj.Object, "spec", "template")
	if err != nil || !found {
		return corev1.PodSpec{}, false
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &template); err != nil {
		t.Fatalf("decode pod template of %s %s: %v", obj.GetKind(), obj.GetName(), err)
	}
	return template.Spec, true
}

func checkContainerPrivilege(t *testing.T, obj *unstructured.Unstructured, c corev1.Container) {
	t.Helper()
	where := obj.GetKind() + " " + obj.GetName() + " container " + c.Name
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Errorf("%s has no capabilities section; it must drop ALL", where)
		return
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s is privileged", where)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s drops %v, want [ALL]", where, sc.Capabilities.Drop)
	}
	var want []corev1.Capability
	if obj.GetKind() == "DaemonSet" && c.Name == "istio-proxy" {
		want = []corev1.Capability{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
	}
	if !slices.Equal(sc.Capabilities.Add, want) {
		t.Errorf("%s adds %v, want %v", where, sc.Capabilities.Add, want)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s has a writable root filesystem", where)
	}
}

// TestWitnessPlacement checks that witnesses land in their own namespace by
// default, and that a witness-only release needs no cluster-wide object, so
// a witness operator needs no cluster-wide rights.
func TestWitnessPlacement(t *testing.T) {
	for _, obj := range render(t, nil) {
		if obj.GetKind() == "StatefulSet" && obj.GetName() == "mazu-witness" {
			t.Errorf("the default values render the witnesses, which need witness.jwks and witness.logKey")
		}
	}

	for _, obj := range render(t, withWitnesses(nil)) {
		if strings.HasPrefix(obj.GetName(), "mazu-witness") && obj.GetKind() != "ConfigMap" && obj.GetKind() != "Namespace" {
			if obj.GetNamespace() != "mazu-witness" {
				t.Errorf("%s %s is in namespace %q, want mazu-witness", obj.GetKind(), obj.GetName(), obj.GetNamespace())
			}
		}
	}

	// A witness operator may run a single witness: the policy counts the
	// witnesses of every release.
	single := render(t, witnessOnly(map[string]any{"replicas": 1}))
	if replicas, _, _ := unstructured.NestedInt64(find(t, single, "StatefulSet", "mazu-witness").Object, "spec", "replicas"); replicas != 1 {
		t.Errorf("witness-only release with witness.replicas=1 renders %d witnesses, want 1", replicas)
	}

	witnessRelease := goldenCases[1]
	manifest, err := ambient.Render(witnessRelease.opts)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := ambient.Objects(manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objects {
		if obj.GetNamespace() != witnessRelease.opts.Namespace {
			t.Errorf("witness-only release renders %s %s outside its namespace %s", obj.GetKind(), obj.GetName(), witnessRelease.opts.Namespace)
		}
	}
	sts := find(t, objects, "StatefulSet", "mazu-witness")
	if replicas, _, _ := unstructured.NestedInt64(sts.Object, "spec", "replicas"); replicas != 3 {
		t.Errorf("witness replicas = %d, want 3", replicas)
	}
}

// TestWitnessTrust checks that each witness reads the pinned JWKS and the
// curator's log key from the files the chart writes them to.
func TestWitnessTrust(t *testing.T) {
	objects := render(t, withWitnesses(map[string]any{"logKey": testLogKey + "\n"}))
	cm := find(t, objects, "ConfigMap", "mazu-witness-trust")
	if jwks, _, _ := unstructured.NestedString(cm.Object, "data", "jwks.json"); jwks != testJWKS {
		t.Errorf("jwks.json = %q, want witness.jwks %q", jwks, testJWKS)
	}
	if logKey, _, _ := unstructured.NestedString(cm.Object, "data", "log.vkey"); logKey != testLogKey {
		t.Errorf("log.vkey = %q, want witness.logKey without surrounding space %q", logKey, testLogKey)
	}

	var sts appsv1.StatefulSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objects, "StatefulSet", "mazu-witness").Object, &sts); err != nil {
		t.Fatalf("decode witness StatefulSet: %v", err)
	}
	spec := sts.Spec.Template.Spec
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("witness pods mount a service-account token, but they must have no API access")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("witness pod has %d containers, want 1", len(spec.Containers))
	}
	witness := spec.Containers[0]
	mountPath := ""
	for _, mount := range witness.VolumeMounts {
		for _, volume := range spec.Volumes {
			if volume.Name == mount.Name && volume.ConfigMap != nil && volume.ConfigMap.Name == cm.GetName() {
				mountPath = mount.MountPath
			}
		}
	}
	if mountPath == "" {
		t.Fatalf("witness container does not mount ConfigMap %s", cm.GetName())
	}
	for env, file := range map[string]string{"MAZU_JWKS_FILE": "jwks.json", "MAZU_LOG_KEY_FILE": "log.vkey"} {
		if got, _ := envValue(witness, env); got != mountPath+"/"+file {
			t.Errorf("%s = %q, want %s/%s", env, got, mountPath, file)
		}
	}

	// The witness checks tokens for the curator's audience, the log origin,
	// which the log key names, whatever namespace the witness release is in.
	origin, _, _ := strings.Cut(testLogKey, "+")
	if got, _ := envValue(witness, "MAZU_LOG_ORIGIN"); got != origin {
		t.Errorf("MAZU_LOG_ORIGIN = %q, want the log key's name %q", got, origin)
	}

	// The chart's check of witness.logKey accepts a real log verifier key.
	_, vkey, err := note.GenerateKey(rand.Reader, "mazu-curator.istio-system.svc/Kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ambient.Render(ambient.RenderOptions{Values: withWitnesses(map[string]any{"logKey": vkey})}); err != nil {
		t.Errorf("render with the log key %q: %v", vkey, err)
	}
}

// TestCuratorRollsOnWitnessPolicy checks that a new witness policy changes
// the curator's pod template, so that `helm upgrade` restarts the members,
// which read the policy only at start.
func TestCuratorRollsOnWitnessPolicy(t *testing.T) {
	podAnnotations := func(values map[string]any) map[string]string {
		t.Helper()
		sts := find(t, render(t, values), "StatefulSet", "mazu-curator")
		annotations, _, _ := unstructured.NestedStringMap(sts.Object, "spec", "template", "metadata", "annotations")
		return annotations
	}
	empty := podAnnotations(nil)["checksum/witness-policy"]
	set := podAnnotations(map[string]any{"curator": map[string]any{"witnessPolicy": "log " + testLogKey + "\n"}})["checksum/witness-policy"]
	if empty == "" || set == "" {
		t.Fatalf("curator pod template has no checksum/witness-policy annotation (%q, %q)", empty, set)
	}
	if empty == set {
		t.Errorf("checksum/witness-policy = %q with and without a policy, so a new policy would not restart the curator", empty)
	}
}

// TestCuratorAgentServiceAccount checks that the curator is given the agent's
// ServiceAccount, so that its node check accepts no other pod's token as
// the agent's.
func TestCuratorAgentServiceAccount(t *testing.T) {
	for _, tc := range []struct {
		name, resourceName, want string
	}{
		{"default", "mazu-ztunnel", "istio-system/mazu-ztunnel"},
		{"resourceName", "mesh-agent", "istio-system/mesh-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objects := render(t, map[string]any{"resourceName": tc.resourceName})
			var sts appsv1.StatefulSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objects, "StatefulSet", "mazu-curator").Object, &sts); err != nil {
				t.Fatalf("decode curator StatefulSet: %v", err)
			}
			curator := sts.Spec.Template.Spec.Containers[0]
			if got, _ := envValue(curator, "MAZU_AGENT_SERVICE_ACCOUNT"); got != tc.want {
				t.Errorf("MAZU_AGENT_SERVICE_ACCOUNT = %q, want %q", got, tc.want)
			}

			ds := find(t, objects, "DaemonSet", tc.resourceName)
			account, _, _ := unstructured.NestedString(ds.Object, "spec", "template", "spec", "serviceAccountName")
			if got := ds.GetNamespace() + "/" + account; got != tc.want {
				t.Errorf("agent pods run as %q, but the curator is told %q", got, tc.want)
			}
		})
	}
}

// TestValuesDocumented checks that every key in values.yaml has a comment
// on the line above it, except keys inside a block of Kubernetes fields
// (resources, annotations, tolerations, update strategy), which the
// comment on the block covers.
func TestValuesDocumented(t *testing.T) {
	f, err := os.Open(filepath.Join(ambient.ChartDir(), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keyLine := regexp.MustCompile(`^(\s*)([A-Za-z_][A-Za-z0-9_.-]*):`)
	opaque := map[string]bool{"resources": true, "podAnnotations": true, "tolerations": true, "updateStrategy": true}
	type parent struct {
		indent int
		key    string
	}
	var parents []parent
	previous := ""
	scanner := bufio.NewScanner(f)
	for line := 1; scanner.Scan(); line++ {
		text := scanner.Text()
		m := keyLine.FindStringSubmatch(text)
		if m != nil {
			indent := len(m[1])
			for len(parents) > 0 && parents[len(parents)-1].indent >= indent {
				parents = parents[:len(parents)-1]
			}
			covered := slices.ContainsFunc(parents, func(p parent) bool { return opaque[p.key] })
			if !covered && !strings.HasPrefix(strings.TrimSpace(previous), "#") {
				t.Errorf("values.yaml line %d: key %q has no comment above it", line, m[2])
			}
			parents = append(parents, parent{indent, m[2]})
		}
		if strings.TrimSpace(text) != "" {
			previous = text
		}
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestHelmLint runs Helm's own chart linter, as `helm lint --strict` does,
// and fails on any warning or error. Informational messages (such as a
// missing icon) are logged only.
func TestHelmLint(t *testing.T) {
	kubeVersion, err := common.ParseKubeVersion(ambient.DefaultKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	result := lint.RunAll(ambient.ChartDir(), nil, ambient.DefaultNamespace, lint.WithKubeVersion(kubeVersion))
	for _, msg := range result.Messages {
		if msg.Severity >= support.WarningSev {
			t.Errorf("helm lint: %v", msg)
		} else {
			t.Logf("helm lint: %v", msg)
		}
	}
}

// TestNoClashWithIstio checks that the chart can share the Istio namespace
// with Istio's ztunnel and istio-cni while nodes move over: no object takes
// one of their names, and the agent's pod selector does not match their pods.
func TestNoClashWithIstio(t *testing.T) {
	istioNames := map[string]bool{"ztunnel": true, "istio-cni-node": true, "istio-cni": true, "istio-cni-config": true}
	for _, obj := range render(t, nil) {
		if istioNames[obj.GetName()] {
			t.Errorf("%s %s takes a name of Istio's data plane", obj.GetKind(), obj.GetName())
		}
	}
	ds := agentDaemonSet(t, render(t, nil))
	for _, app := range []string{"ztunnel", "istio-cni-node"} {
		if ds.Spec.Selector.MatchLabels["app"] == app {
			t.Errorf("agent DaemonSet selects app=%s, the label of Istio's pods", app)
		}
	}
	if ds.Spec.Template.Labels["istio.io/dataplane-mode"] != "none" {
		t.Errorf("agent pods lack istio.io/dataplane-mode=none, so an ambient namespace would capture them")
	}
}

// TestNodeCheckOptional checks that agent.tokenRequest.checkNode=false drops
// only the parameterized node policy and keeps the request-shape and pod
// annotation policies.
func TestNodeCheckOptional(t *testing.T) {
	policies := func(objects []*unstructured.Unstructured) []string {
		var names []string
		for _, obj := range objects {
			if obj.GetKind() == "ValidatingAdmissionPolicy" {
				names = append(names, obj.GetName())
			}
		}
		return names
	}
	with := policies(render(t, nil))
	if want := []string{"mazu-ztunnel-istio-system-pod-annotations", "mazu-ztunnel-istio-system-token-shape", "mazu-ztunnel-istio-system-token-node"}; !slices.Equal(with, want) {
		t.Errorf("default policies = %v, want %v", with, want)
	}
	without := policies(render(t, map[string]any{"agent": map[string]any{"tokenRequest": map[string]any{"checkNode": false}}}))
	if want := []string{"mazu-ztunnel-istio-system-pod-annotations", "mazu-ztunnel-istio-system-token-shape"}; !slices.Equal(without, want) {
		t.Errorf("policies with checkNode=false = %v, want %v", without, want)
	}
}
