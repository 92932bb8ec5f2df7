package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Cgroup2Root returns the mount point of the cgroup v2 hierarchy, read from
// /proc/self/mountinfo. It is /sys/fs/cgroup on most nodes and
// /sys/fs/cgroup/unified on hosts with the hybrid layout.
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Fields: id parent dev root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fld := range fields {
			if fld == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}
		return unescapeMountinfo(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", errors.New("find cgroup2 mount: no cgroup2 filesystem in /proc/self/mountinfo: mount one (mount -t cgroup2 none /sys/fs/cgroup)")
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) that
// mountinfo uses in paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// resolveCgroup turns a cgroup v2 directory, absolute or relative to the
// cgroup2 mount, into an absolute path and checks that it is a cgroup2
// directory other than the root. It returns the path and the cgroup ID.
func resolveCgroup(p string) (string, uint64, error) {
	if p == "" {
		return "", 0, errors.New("cgroup path is empty: set it to the pod's cgroup v2 directory")
	}
	root, err := Cgroup2Root()
	if err != nil {
		return "", 0, err
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(root, p)
	}
	p = filepath.Clean(p)
	if p == filepath.Clean(root) {
		return "", 0, fmt.Errorf("cgroup %s is the cgroup2 root: attaching there would capture the whole node; use the pod's own cgroup", p)
	}

	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return "", 0, fmt.Errorf("stat cgroup %s: %w", p, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", 0, fmt.Errorf("cgroup %s is not on a cgroup2 filesystem (cgroup2 is mounted at %s)", p, root)
	}
	id, err := cgroupID(p)
	if err != nil {
		return "", 0, err
	}
	return p, id, nil
}

// cgroupID returns the ID of a cgroup v2 directory, which is its inode
// number, as bpf_get_current_cgroup_id reports it.
func cgroupID(p string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", p, err)
	}
	return st.Ino, nil
}

// standardBPFFS is where bpffs is conventionally mounted.
const standardBPFFS = "/sys/fs/bpf"

// ensureBPFFS makes dir a directory on bpffs. When dir is under an existing
// bpffs, it creates it there. When dir is under /sys/fs/bpf and nothing is
// mounted there, it mounts bpffs on /sys/fs/bpf, as other BPF agents do;
// /sys itself (sysfs) accepts no new directories. Otherwise it mounts a
// bpffs instance on dir itself.
func ensureBPFFS(dir string) error {
	if onBPF, err := isBPFFS(existingAncestor(dir)); err != nil {
		return err
	} else if onBPF {
		return mkdirPins(dir)
	}

	if dir == standardBPFFS || strings.HasPrefix(dir, standardBPFFS+"/") {
		if err := unix.Mount("bpf", standardBPFFS, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", standardBPFFS, err)
		}
		return mkdirPins(dir)
	}

	if err := mkdirPins(dir); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

func mkdirPins(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	return nil
}

// existingAncestor returns dir or its nearest ancestor that exists.
func existingAncestor(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" {
			return dir
		}
		dir = filepath.Dir(dir)
	}
}

func isBPFFS(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("stat pin directory %s: %w", dir, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// removePinDir removes the (empty) pin directory, unmounting it first when
// it is a bpffs mount point of its own, as ensureBPFFS creates.
func removePinDir(dir string) error {
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat pin directory %s: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return fmt.Errorf("stat parent of pin directory %s: %w", dir, err)
	}
	if st.Dev != parent.Dev {
		if err := unix.Unmount(dir, 0); err != nil {
			return fmt.Errorf("unmount bpffs on %s: %w", dir, err)
		}
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("remove pin directory %s: %w", dir, err)
	}
	return nil
}
