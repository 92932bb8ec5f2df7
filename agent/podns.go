package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// The kubelet puts each pod in a cgroup named after its UID and QoS class.
// With the cgroupfs driver the folder is
//
//	<root>/kubepods/<qos>/pod<uid>                 (burstable, besteffort)
//	<root>/kubepods/pod<uid>                       (guaranteed)
//
// and with the systemd driver
//
//	<root>/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice
//	<root>/kubepods.slice/kubepods-pod<uid_>.slice (guaranteed)
//
// where <uid_> is the UID with dashes replaced by underscores. <root> is the
// cgroup v2 mount plus the kubelet's --cgroup-root (empty by default).

// PodCgroupCandidates lists the folders where the kubelet may have put the
// pod's cgroup, for both drivers.
func PodCgroupCandidates(cgroupRoot string, pod *corev1.Pod) []string {
	uid := string(pod.UID)
	qos := strings.ToLower(string(pod.Status.QOSClass))
	if qos == "" {
		qos = "besteffort"
	}
	underscored := strings.ReplaceAll(uid, "-", "_")
	if qos == "guaranteed" {
		return []string{
			filepath.Join(cgroupRoot, "kubepods", "pod"+uid),
			filepath.Join(cgroupRoot, "kubepods.slice", "kubepods-pod"+underscored+".slice"),
		}
	}
	return []string{
		filepath.Join(cgroupRoot, "kubepods", qos, "pod"+uid),
		filepath.Join(cgroupRoot, "kubepods.slice", "kubepods-"+qos+".slice", "kubepods-"+qos+"-pod"+underscored+".slice"),
	}
}

// FindPodCgroup returns the first candidate folder that exists.
func FindPodCgroup(cgroupRoot string, pod *corev1.Pod) (string, error) {
	candidates := PodCgroupCandidates(cgroupRoot, pod)
	for _, dir := range candidates {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir, nil
		}
	}
	return "", fmt.Errorf("find cgroup of pod %s/%s: none of %v exists; check the agent's --cgroup-root", pod.Namespace, pod.Name, candidates)
}

// NetnsFromCgroup returns /proc/<pid>/ns/net for a process in the cgroup or
// its descendants (the pod's containers). A pod whose containers have not
// started has none; its namespace then comes from the CNI plugin.
func NetnsFromCgroup(cgroup string) (string, error) {
	var found string
	err := filepath.WalkDir(cgroup, func(path string, d os.DirEntry, err error) error {
		if err != nil || found != "" || !d.IsDir() {
			return err
		}
		f, err := os.Open(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		defer f.Close()
		scanner := bufio.NewScanner(f)
		for scanner.Scan() {
			candidate := "/proc/" + strings.TrimSpace(scanner.Text()) + "/ns/net"
			if _, err := os.Stat(candidate); err == nil {
				found = candidate
				return filepath.SkipAll
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("find network namespace in cgroup %s: %w", cgroup, err)
	}
	if found == "" {
		return "", fmt.Errorf("find network namespace in cgroup %s: %w", cgroup, errNoProcess)
	}
	return found, nil
}

var errNoProcess = errors.New("no process in the cgroup")

// SameNetns reports whether two paths name the same network namespace.
func SameNetns(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}
