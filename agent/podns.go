package agent

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/mazu-mesh/mazu-ztunnel/internal/netns"
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

// NetnsFromCgroup returns /proc/<pid>/ns/net for a process in the cgroup
// or its descendants (the pod's containers) whose network namespace holds
// the pod's IP. A container may run in a namespace of its own, so the first
// process found is not enough. A pod whose containers have not started has
// no process; its namespace then comes from the CNI plugin.
//
// It needs the host's PID namespace, where cgroup.procs lists the pod's
// processes by PID, and CAP_SYS_PTRACE to open the namespace of a process
// whose user or group IDs differ from the agent's.
func NetnsFromCgroup(cgroup string, ip netip.Addr) (string, error) {
	var (
		found                   string
		hidden, denied, without int
		seen                    = map[fileKey]bool{}
	)
	err := filepath.WalkDir(cgroup, func(path string, d os.DirEntry, err error) error {
		if err != nil || found != "" || !d.IsDir() {
			return err
		}
		pids, err := readLines(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil // the container's cgroup went away meanwhile
		}
		for _, pid := range pids {
			if pid == "0" {
				hidden++
				continue
			}
			candidate := "/proc/" + pid + "/ns/net"
			var st unix.Stat_t
			if err := unix.Stat(candidate, &st); err != nil {
				if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
					denied++
				}
				continue // otherwise the process exited
			}
			key := fileKey{dev: st.Dev, ino: st.Ino}
			if seen[key] {
				continue
			}
			seen[key] = true
			if has, err := netnsHasAddr(candidate, ip); err == nil && has {
				found = candidate
				return filepath.SkipAll
			}
			without++
		}
		return nil
	})
	switch {
	case err != nil:
		return "", fmt.Errorf("find network namespace in cgroup %s: %w", cgroup, err)
	case found != "":
		return found, nil
	case hidden > 0:
		return "", fmt.Errorf("find network namespace in cgroup %s: %w", cgroup, errPIDsHidden)
	case denied > 0:
		return "", fmt.Errorf("find network namespace in cgroup %s: %w", cgroup, errNamespaceDenied)
	case without > 0:
		return "", fmt.Errorf("find network namespace in cgroup %s: none of the %d namespaces of its processes has the pod's IP %s", cgroup, without, ip)
	}
	return "", fmt.Errorf("find network namespace in cgroup %s: %w", cgroup, errNoProcess)
}

var (
	errNoProcess = errors.New("no process in the cgroup")
	// errPIDsHidden is the error of an agent outside the host's PID
	// namespace: the kernel lists processes it cannot name as PID 0.
	errPIDsHidden = errors.New("the cgroup's processes are outside the agent's PID namespace (cgroup.procs lists them as 0); run the agent with hostPID: true, as the chart does")
	// errNamespaceDenied is the error of an agent without CAP_SYS_PTRACE:
	// the kernel lets a process open another's namespace only when their
	// user and group IDs match or it has that capability.
	errNamespaceDenied = errors.New("permission denied opening /proc/<pid>/ns/net of its processes; the agent needs CAP_SYS_PTRACE, as the chart grants")
)

// fileKey is a file's device and inode number.
type fileKey struct{ dev, ino uint64 }

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			lines = append(lines, line)
		}
	}
	return lines, scanner.Err()
}

// netnsHasAddr reports whether an interface inside the network namespace
// at path has ip.
func netnsHasAddr(path string, ip netip.Addr) (bool, error) {
	var has bool
	err := netns.Do(path, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if prefix, err := netip.ParsePrefix(a.String()); err == nil && prefix.Addr().Unmap() == ip.Unmap() {
				has = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("read addresses in network namespace %s: %w", path, err)
	}
	return has, nil
}

// namedNetns returns the file in dir that is a bind mount of the network
// namespace at path, or path when dir has none. Container runtimes such as
// containerd and CRI-O keep each pod's namespace there. That name stays valid
// for the pod's life, but a PID may be reused once its process exits.
func namedNetns(dir, path string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return path
	}
	for _, e := range entries {
		named := filepath.Join(dir, e.Name())
		if same, err := SameNetns(named, path); err == nil && same {
			return named
		}
	}
	return path
}

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
