package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/mazu-mesh/mazu-ztunnel/testbed"
)

func TestPodCgroupCandidatesBothDrivers(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID("1a2b-3c")}, Status: corev1.PodStatus{QOSClass: corev1.PodQOSBurstable}}
	got := PodCgroupCandidates("/sys/fs/cgroup", pod)
	want := []string{
		"/sys/fs/cgroup/kubepods/burstable/pod1a2b-3c",
		"/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c.slice",
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("burstable candidates = %v, want %v", got, want)
	}
	pod.Status.QOSClass = corev1.PodQOSGuaranteed
	got = PodCgroupCandidates("/sys/fs/cgroup", pod)
	if got[0] != "/sys/fs/cgroup/kubepods/pod1a2b-3c" || got[1] != "/sys/fs/cgroup/kubepods.slice/kubepods-pod1a2b_3c.slice" {
		t.Errorf("guaranteed candidates = %v", got)
	}
}

// TestFindPodNetnsFromCgroup finds a testbed pod's cgroup from its UID, as
// the kubelet's cgroupfs driver lays it out, and its network namespace from
// a process running there.
func TestFindPodNetnsFromCgroup(t *testing.T) {
	tb := testbed.Get(t)
	node := testbed.NewNode(t, tb, "podns")
	pod := testbed.NewPod(t, tb, node, testbed.PodSpec{Namespace: "podns", Name: "sleeper"})
	obj, err := tb.Client().CoreV1().Pods("podns").Get(context.Background(), "sleeper", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	cgroup, err := FindPodCgroup(node.CgroupRoot, obj)
	if err != nil {
		t.Fatal(err)
	}
	if cgroup != pod.Cgroup {
		t.Errorf("FindPodCgroup = %s, want %s", cgroup, pod.Cgroup)
	}
	if _, err := NetnsFromCgroup(cgroup); err == nil {
		t.Error("NetnsFromCgroup found a namespace in a cgroup with no process")
	}

	cmd := pod.Command(context.Background(), "sleep", "30")
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	var netns string
	deadline := time.Now().Add(5 * time.Second)
	for {
		netns, err = NetnsFromCgroup(cgroup)
		if err == nil {
			if same, _ := SameNetns(netns, pod.NetnsPath()); same {
				break
			}
		}
		// nsenter joins the namespace just after the process starts.
		if time.Now().After(deadline) {
			t.Fatalf("NetnsFromCgroup = %s, %v; want the pod's namespace %s", netns, err, pod.NetnsPath())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(cgroup, "cgroup.procs")); err != nil {
		t.Fatal(err)
	}
}

// TestContainerNetnsPath maps CNI_NETNS paths of the host into the agent's
// container and rejects names that would leave the mounted folder.
func TestContainerNetnsPath(t *testing.T) {
	cases := []struct {
		dir, path, want string
		wantErr         bool
	}{
		{"", "/var/run/netns/cni-1", "/var/run/netns/cni-1", false},
		{"/host/var/run/netns", "/var/run/netns/cni-1", "/host/var/run/netns/cni-1", false},
		{"/host/var/run/netns", "/run/netns/cni-2", "/host/var/run/netns/cni-2", false},
		{"/host/var/run/netns", "/proc/42/ns/net", "/proc/42/ns/net", false},
		{"/host/var/run/netns", "/var/run/netns/../../etc/passwd", "", true},
		{"/host/var/run/netns", "/var/run/netns/..", "", true},
		{"/host/var/run/netns", "/var/run/netns/", "", true},
	}
	for _, c := range cases {
		got, err := containerNetnsPath(c.dir, c.path)
		if (err != nil) != c.wantErr {
			t.Errorf("containerNetnsPath(%q, %q) error = %v, want error %v", c.dir, c.path, err, c.wantErr)
			continue
		}
		if got != c.want {
			t.Errorf("containerNetnsPath(%q, %q) = %q, want %q", c.dir, c.path, got, c.want)
		}
	}
}
