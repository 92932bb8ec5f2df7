package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// IstioNamespace is where istiod runs and keeps its CA secret.
const IstioNamespace = "istio-system"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// startIstiod installs Istio's CRDs and runs istiod with ambient mode on,
// every listener bound to loopback.
func (tb *Testbed) startIstiod(ctx context.Context, detach bool) error {
	crds := filepath.Join(tb.state.BinDir, "istio-crds.yaml")
	if _, err := os.Stat(filepath.Join(tb.state.BinDir, "pilot-discovery")); err != nil {
		return fmt.Errorf("%w: pilot-discovery is missing from %s; build it with `make testbed-bins`", ErrNoBinaries, tb.state.BinDir)
	}
	if err := tb.applyCRDs(ctx, crds); err != nil {
		return fmt.Errorf("start istiod: %w", err)
	}
	if err := tb.EnsureNamespace(ctx, IstioNamespace); err != nil {
		return fmt.Errorf("start istiod: %w", err)
	}
	p := tb.state.Ports
	addr := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	args := []string{
		"discovery", "--kubeconfig", tb.Kubeconfig(),
		"--httpAddr", addr(p.IstiodHTTP), "--httpsAddr", addr(p.IstiodHTTPS),
		"--grpcAddr", addr(p.IstiodGRPC), "--secureGRPCAddr", addr(p.IstiodSecureGRPC),
		"--monitoringAddr", addr(p.IstiodMonitoring),
		"--ctrlz_address", "127.0.0.1", "--ctrlz_port", strconv.Itoa(p.IstiodCtrlz),
		// The mesh config files need not exist: istiod then uses its defaults.
		"--meshConfig", filepath.Join(tb.dir, "mesh.yaml"),
		"--networksConfig", filepath.Join(tb.dir, "meshNetworks.yaml"),
		"--domain", TrustDomain,
	}
	env := []string{
		"POD_NAMESPACE=" + IstioNamespace, "POD_NAME=istiod-testbed", "REVISION=default",
		"PILOT_ENABLE_AMBIENT=true", "JWT_POLICY=third-party-jwt", "PILOT_CERT_PROVIDER=istiod",
		"CLUSTER_ID=Kubernetes", "KUBECONFIG=" + tb.Kubeconfig(),
		// Node proxies that may request certificates for other identities
		// (ImpersonatedIdentity), as Istio's chart and mazu's install guide
		// set it: Istio's ztunnel and the mazu agent.
		"CA_TRUSTED_NODE_ACCOUNTS=" + IstioNamespace + "/ztunnel," + IstioNamespace + "/mazu-ztunnel",
	}
	proc, err := tb.start("pilot-discovery", args, env, detach)
	if err != nil {
		return err
	}
	return proc.waitReady(ctx, 90*time.Second, func(ctx context.Context) error {
		return httpGet(ctx, http.DefaultClient, "http://"+addr(p.IstiodHTTP)+"/ready", "")
	})
}

// applyCRDs creates every CustomResourceDefinition in a multi-document YAML
// file, treating "already exists" as success.
func (tb *Testbed) applyCRDs(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("apply Istio CRDs: %w (rebuild with `make testbed-bins`)", err)
	}
	defer f.Close()
	client, err := dynamic.NewForConfig(tb.restConfig)
	if err != nil {
		return fmt.Errorf("apply Istio CRDs: %w", err)
	}
	decoder := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(f), 64*1024)
	var names []string
	for {
		obj := &unstructured.Unstructured{}
		if err := decoder.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("apply Istio CRDs: decode %s: %w", path, err)
		}
		if obj.GetKind() != "CustomResourceDefinition" {
			continue
		}
		_, err := client.Resource(crdResource).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply Istio CRDs: create %s: %w", obj.GetName(), err)
		}
		names = append(names, obj.GetName())
	}
	if len(names) == 0 {
		return fmt.Errorf("apply Istio CRDs: %s contains no CustomResourceDefinition", path)
	}
	return tb.waitCRDsEstablished(ctx, client, names)
}

func (tb *Testbed) waitCRDsEstablished(ctx context.Context, client dynamic.Interface, names []string) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range names {
		for {
			obj, err := client.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err == nil && crdEstablished(obj) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not established after 30 s (last error: %v)", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func crdEstablished(obj *unstructured.Unstructured) bool {
	conditions, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conditions {
		m, ok := c.(map[string]any)
		if ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// IstiodCAAddr returns the address of istiod's CA and secure xDS, or "" when
// istiod is not running.
func (tb *Testbed) IstiodCAAddr() string {
	if tb.state.Ports.IstiodSecureGRPC == 0 {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(tb.state.Ports.IstiodSecureGRPC)
}

// IstiodXDSAddr returns the address of istiod's plaintext xDS, or "".
func (tb *Testbed) IstiodXDSAddr() string {
	if tb.state.Ports.IstiodGRPC == 0 {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(tb.state.Ports.IstiodGRPC)
}
