package ambient_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/deploy/ambient"
	"github.com/mazu-mesh/mazu-ztunnel/testbed"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// TestHelmInstallUpgradeRollback drives Helm's own install, upgrade,
// rollback and uninstall actions against the testbed API server, as the
// helm CLI does, and checks the agent image at each step and what
// uninstall leaves behind.
func TestHelmInstallUpgradeRollback(t *testing.T) {
	tb := testbed.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const (
		release          = "mazu-helm"
		namespace        = "helm-lifecycle"
		witnessNamespace = "helm-lifecycle-witness"
	)

	kubeconfig := tb.Kubeconfig()
	ns := namespace
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &ns
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler))
	if err := cfg.Init(flags, namespace, "secret"); err != nil {
		t.Fatalf("init Helm: %v", err)
	}
	chrt, err := loader.LoadDir(ambient.ChartDir())
	if err != nil {
		t.Fatal(err)
	}
	values := withWitnesses(map[string]any{"namespace": witnessNamespace})
	agentImage := func() string {
		t.Helper()
		ds, err := tb.Client().AppsV1().DaemonSets(namespace).Get(ctx, "mazu-ztunnel", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("read agent DaemonSet: %v", err)
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			if c.Name == "istio-proxy" {
				return c.Image
			}
		}
		t.Fatal("agent DaemonSet has no istio-proxy container")
		return ""
	}

	install := action.NewInstall(cfg)
	install.ReleaseName = release
	install.Namespace = namespace
	install.CreateNamespace = true
	install.WaitStrategy = kube.HookOnlyStrategy
	install.Timeout = time.Minute
	if _, err := install.RunWithContext(ctx, chrt, values); err != nil {
		t.Fatalf("helm install: %v", err)
	}
	if got, want := agentImage(), "ghcr.io/mazu-mesh/mazu-ztunnel:0.1.0"; got != want {
		t.Errorf("after install the agent image is %q, want %q", got, want)
	}

	upgrade := action.NewUpgrade(cfg)
	upgrade.Namespace = namespace
	upgrade.WaitStrategy = kube.HookOnlyStrategy
	upgrade.Timeout = time.Minute
	upgraded := map[string]any{"components": values["components"], "witness": values["witness"], "tag": "0.2.0"}
	if _, err := upgrade.RunWithContext(ctx, release, chrt, upgraded); err != nil {
		t.Fatalf("helm upgrade: %v", err)
	}
	if got, want := agentImage(), "ghcr.io/mazu-mesh/mazu-ztunnel:0.2.0"; got != want {
		t.Errorf("after upgrade the agent image is %q, want %q", got, want)
	}

	rollback := action.NewRollback(cfg)
	rollback.Version = 1
	rollback.WaitStrategy = kube.HookOnlyStrategy
	rollback.Timeout = time.Minute
	if err := rollback.Run(release); err != nil {
		t.Fatalf("helm rollback to revision 1: %v", err)
	}
	if got, want := agentImage(), "ghcr.io/mazu-mesh/mazu-ztunnel:0.1.0"; got != want {
		t.Errorf("after rollback the agent image is %q, want %q", got, want)
	}

	uninstall := action.NewUninstall(cfg)
	uninstall.WaitStrategy = kube.HookOnlyStrategy
	uninstall.Timeout = time.Minute
	if _, err := uninstall.Run(release); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	for _, policy := range []string{"mazu-ztunnel-" + namespace + "-token-shape", "mazu-ztunnel-" + namespace + "-token-node"} {
		if _, err := tb.Client().AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, policy, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after uninstall, reading policy %s returned %v, want NotFound", policy, err)
		}
	}
	if _, err := tb.Client().AppsV1().DaemonSets(namespace).Get(ctx, "mazu-ztunnel", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after uninstall, reading the agent DaemonSet returned %v, want NotFound", err)
	}
	// The witness namespace carries helm.sh/resource-policy: keep, because
	// deleting it would delete the witnesses' keys with their volumes.
	if _, err := tb.Client().CoreV1().Namespaces().Get(ctx, witnessNamespace, metav1.GetOptions{}); err != nil {
		t.Errorf("after uninstall the witness namespace is gone: %v", err)
	}
}
