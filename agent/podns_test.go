package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	if _, err := NetnsFromCgroup(cgroup, pod.IP); err == nil {
		t.Error("NetnsFromCgroup found a namespace in a cgroup with no process")
	}

	cmd := pod.Command(context.Background(), "sleep", "30")
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	var netns string
	deadline := time.Now().Add(5 * time.Second)
	for {
		netns, err = NetnsFromCgroup(cgroup, pod.IP)
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
	if _, err := NetnsFromCgroup(cgroup, netip.MustParseAddr("198.18.255.254")); err == nil || !strings.Contains(err.Error(), "has the pod's IP") {
		t.Errorf("NetnsFromCgroup with an IP no namespace holds = %v, want an error naming the IP", err)
	}
	if got := namedNetns("/var/run/netns", netns); got != pod.NetnsPath() {
		t.Errorf("namedNetns(%s) = %s, want the runtime's file %s", netns, got, pod.NetnsPath())
	}

	// A restarted agent keeps a saved /proc path only while that namespace
	// still has the pod's IP, because the PID may now belong to another
	// process. The runtime's own files are kept as they are.
	t.Run("saved namespace path", func(t *testing.T) {
		a := &Agent{log: slog.New(slog.DiscardHandler)}
		if !strings.HasPrefix(netns, "/proc/") {
			t.Fatalf("NetnsFromCgroup = %s, want a /proc path", netns)
		}
		if !a.savedNetnsValid(obj, netns) {
			t.Errorf("savedNetnsValid(%s) = false for the pod's own namespace", netns)
		}
		moved := obj.DeepCopy()
		moved.Status.PodIP = "198.18.255.254"
		moved.Status.PodIPs = []corev1.PodIP{{IP: "198.18.255.254"}}
		if a.savedNetnsValid(moved, netns) {
			t.Errorf("savedNetnsValid(%s) = true for a pod whose IP the namespace does not have", netns)
		}
		if !a.savedNetnsValid(moved, pod.NetnsPath()) {
			t.Errorf("savedNetnsValid(%s) = false for the runtime's file", pod.NetnsPath())
		}
	})

	// An agent in a PID namespace of its own reads the pod's PIDs as 0.
	t.Run("own PID namespace", func(t *testing.T) {
		cmd := netnsFinderCommand(cgroup, pod.IP)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		if got := outputOf(t, cmd); !strings.Contains(got, "hostPID: true") {
			t.Errorf("agent in its own PID namespace got %q, want an error naming hostPID: true", got)
		}
	})
	// This child has the chart's group 1337 and only NET_ADMIN and
	// SYS_ADMIN. Without CAP_SYS_PTRACE it may not open the namespace of
	// the pod's process, which runs as root with group 0.
	t.Run("without CAP_SYS_PTRACE", func(t *testing.T) {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("setpriv (util-linux) not installed")
		}
		finder := netnsFinderCommand(cgroup, pod.IP)
		const caps = "-all,+net_admin,+sys_admin"
		cmd := exec.Command(setpriv, append([]string{"--regid=1337", "--clear-groups", "--inh-caps=" + caps, "--ambient-caps=" + caps, "--bounding-set=" + caps}, finder.Args...)...)
		cmd.Env = finder.Env
		if got := outputOf(t, cmd); !strings.Contains(got, "CAP_SYS_PTRACE") {
			t.Errorf("agent without CAP_SYS_PTRACE got %q, want an error naming CAP_SYS_PTRACE", got)
		}
	})
}

// Environment of the netns-finder role, which runs NetnsFromCgroup in a
// process of its own and prints the path or the error.
const (
	roleNetnsFinder = "netns-finder"
	envCgroup       = "MAZU_E2E_CGROUP"
	envPodIP        = "MAZU_E2E_POD_IP"
)

func runNetnsFinderRole() int {
	path, err := NetnsFromCgroup(os.Getenv(envCgroup), netip.MustParseAddr(os.Getenv(envPodIP)))
	if err != nil {
		fmt.Println(err)
		return 0
	}
	fmt.Println(path)
	return 0
}

func netnsFinderCommand(cgroup string, ip netip.Addr) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+roleNetnsFinder, envCgroup+"="+cgroup, envPodIP+"="+ip.String())
	return cmd
}

func outputOf(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run NetnsFromCgroup in a child process: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
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
