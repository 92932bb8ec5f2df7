package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// newNamedNetns creates a network namespace bound at /var/run/netns/name and
// returns a handle to it. The calling goroutine's thread is restored to its
// original namespace, or left locked (and so discarded by the runtime) when
// that fails.
func newNamedNetns(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("create netns %s: read current netns: %w", name, err)
	}
	defer orig.Close()
	handle, err := netns.NewNamed(name)
	if restoreErr := netns.Set(orig); restoreErr != nil {
		// The thread is stuck in the wrong namespace. Keeping it locked makes
		// the runtime end it when this goroutine returns.
		return netns.None(), errors.Join(fmt.Errorf("create netns %s: restore thread netns: %w", name, restoreErr), err)
	}
	runtime.UnlockOSThread()
	if err != nil {
		return netns.None(), fmt.Errorf("create netns %s: %w", name, err)
	}
	return handle, nil
}

// inNetns runs fn on a thread switched into the namespace behind handle.
// Sockets that fn opens stay in that namespace after it returns.
func inNetns(handle netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: read current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(fnErr, fmt.Errorf("leave netns: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// setSysctl writes a per-namespace network sysctl such as
// net.ipv4.ip_forward inside the namespace behind handle.
func setSysctl(handle netns.NsHandle, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return inNetns(handle, func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}

func netnsPath(name string) string { return filepath.Join("/var/run/netns", name) }

func deleteNetns(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// cgroup2Root returns the mount point of the cgroup v2 hierarchy, which is
// /sys/fs/cgroup on a unified host and /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		// Fields: id parent major:minor root mountpoint options ... - fstype source superoptions
		fields := strings.Fields(scanner.Text())
		for i, field := range fields {
			if field == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := scanner.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", errors.New("find cgroup2 mount: no cgroup2 file system is mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")
}

// removeCgroupTree removes a cgroup folder and its descendants, deepest
// first. A cgroup folder can only be removed once it has no processes and no
// children, so the caller must have ended the processes first.
func removeCgroupTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", root, err)
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}

// cgroupKillTimeout bounds the wait for a cgroup to empty after cgroup.kill.
// SIGKILL cannot be caught, so only a process stuck in the kernel (such as
// uninterruptible I/O) takes longer.
const cgroupKillTimeout = 5 * time.Second

// killCgroup sends SIGKILL to every process in the cgroup at path and its
// descendants by writing "1" to cgroup.kill (Linux 5.14 and later), then
// waits up to timeout until cgroup.events reports "populated 0". It returns
// nil when the cgroup does not exist. On an older kernel, which lacks
// cgroup.kill, it does nothing, and removing the cgroup fails while it has
// processes.
func killCgroup(path string, timeout time.Duration) error {
	f, err := os.OpenFile(filepath.Join(path, "cgroup.kill"), os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill cgroup %s: %w", path, err)
	}
	_, err = f.WriteString("1")
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("kill cgroup %s: %w", path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		populated, err := cgroupPopulated(path)
		if err != nil || !populated {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill cgroup %s: processes still in it %s after writing cgroup.kill", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cgroupPopulated reads the "populated" key of cgroup.events, which is 1
// while the cgroup or a descendant has a live process. A missing cgroup
// counts as empty.
func cgroupPopulated(path string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s/cgroup.events: %w", path, err)
	}
	for line := range strings.Lines(string(data)) {
		if value, ok := strings.CutPrefix(strings.TrimSpace(line), "populated "); ok {
			return value != "0", nil
		}
	}
	return false, fmt.Errorf("read %s/cgroup.events: no populated key", path)
}
