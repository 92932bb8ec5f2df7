package testbed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// A testbed killed by `go test -timeout` or a panic never runs Stop. Its
// components die with it (Pdeathsig), but its network namespaces, cgroups
// and folders stay. So each testbed records its owner, the process that
// creates its nodes and pods, in an owner record named after the testbed,
// and Start removes the items of every testbed whose owner has died.
//
// The record is written before the testbed creates anything and removed
// after Stop has removed everything else, so every item of a testbed has a
// record while it exists. Items without a record are left alone.

// ownerRecord identifies the process that owns a testbed. The start time and
// boot ID tell a live owner from a new process that reuses its PID.
type ownerRecord struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat, in clock ticks since boot.
	StartTime uint64 `json:"startTime"`
	BootID    string `json:"bootID"`
	// Detached marks a testbed started with Options.Detach: its components
	// outlive the owner, so only `mazu-testbed down` or a reboot ends it.
	Detached bool `json:"detached,omitempty"`
}

// ownersDir is the folder of owner records. It lies beside the run folders
// in the temporary folder, so records survive as long as the folders do.
func ownersDir() string { return filepath.Join(os.TempDir(), "mazu-testbed-owners") }

func ownerRecordPath(name string) string { return filepath.Join(ownersDir(), name+".json") }

// currentOwner describes this process as a testbed owner.
func currentOwner(detached bool) (ownerRecord, error) {
	start, err := processStartTime(os.Getpid())
	if err != nil {
		return ownerRecord{}, err
	}
	boot, err := bootID()
	if err != nil {
		return ownerRecord{}, err
	}
	return ownerRecord{PID: os.Getpid(), StartTime: start, BootID: boot, Detached: detached}, nil
}

// processStartTime returns field 22 of /proc/PID/stat, the process's start
// time in clock ticks since boot. It returns an error wrapping
// os.ErrNotExist when the process does not exist, and errZombie when it has
// exited but is not yet reaped.
func processStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may contain spaces
	// and parentheses, so the fields are counted from the last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, fmt.Errorf("read start time of pid %d: no command name in /proc/%d/stat", pid, pid)
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("read start time of pid %d: /proc/%d/stat has %d fields after the command name, want at least 20", pid, pid, len(fields))
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, errZombie)
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	return start, nil
}

var errZombie = errors.New("process has exited")

func bootID() (string, error) {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// ownerAlive reports whether the record's owner still runs. A detached
// testbed counts as alive until the machine reboots.
func ownerAlive(rec ownerRecord) bool {
	boot, err := bootID()
	if err != nil {
		return true // keep the testbed rather than risk removing a live one
	}
	if boot != rec.BootID {
		return false // the reboot ended every process and namespace of that boot
	}
	if rec.Detached {
		return true
	}
	start, err := processStartTime(rec.PID)
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, errZombie):
		return false
	case err != nil:
		return true
	}
	return start == rec.StartTime
}

func readOwnerRecord(name string) (ownerRecord, error) {
	var rec ownerRecord
	data, err := os.ReadFile(ownerRecordPath(name))
	if err != nil {
		return rec, fmt.Errorf("read owner record of testbed %s: %w", name, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("decode owner record %s: %w", ownerRecordPath(name), err)
	}
	return rec, nil
}

// claimName writes the owner record of testbed name. It fails when the name
// already has a record.
func claimName(name string, rec ownerRecord) error {
	if err := os.MkdirAll(ownersDir(), 0o755); err != nil {
		return fmt.Errorf("claim testbed name %s: %w", name, err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("claim testbed name %s: encode owner record: %w", name, err)
	}

	// The record is written in full under a temporary name and then linked
	// into place, so that no process ever reads a half-written record, and
	// the link fails if the name is taken.
	tmp, err := os.CreateTemp(ownersDir(), "."+name+"-*")
	if err != nil {
		return fmt.Errorf("claim testbed name %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("claim testbed name %s: write owner record: %w", name, err)
	}

	err = os.Link(tmp.Name(), ownerRecordPath(name))
	if errors.Is(err, os.ErrExist) {
		holder, readErr := readOwnerRecord(name)
		if readErr != nil {
			return fmt.Errorf("claim testbed name %s: already in use: %w", name, readErr)
		}
		return fmt.Errorf("claim testbed name %s: already in use by the testbed of pid %d; pick another name or stop that testbed", name, holder.PID)
	}
	if err != nil {
		return fmt.Errorf("claim testbed name %s: %w", name, err)
	}
	return nil
}

func releaseName(name string) error {
	if err := os.Remove(ownerRecordPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release testbed name %s: %w", name, err)
	}
	return nil
}

// sweepDeadTestbeds removes the namespaces, cgroups and folders of every
// testbed whose owner has died, then its owner record. It never touches a
// testbed whose owner runs, nor items that have no owner record.
func sweepDeadTestbeds(log *slog.Logger) error {
	entries, err := os.ReadDir(ownersDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sweep dead testbeds: %w", err)
	}
	var errs []error
	for _, entry := range entries {
		name, ok := strings.CutSuffix(entry.Name(), ".json")
		if !ok {
			continue
		}
		rec, err := readOwnerRecord(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // another process swept it
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ownerAlive(rec) {
			continue
		}
		removed, err := removeTestbedItems(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep testbed %s of dead pid %d: %w", name, rec.PID, err))
			continue
		}
		errs = append(errs, releaseName(name))
		log.Info("testbed removed leftovers of a dead testbed", "name", name, "ownerPID", rec.PID, "removed", removed)
	}
	return errors.Join(errs...)
}

// removeTestbedItems removes what a testbed named name creates: its network
// namespaces, its cgroup with every process in it, its etcd data and its
// temporary run folder. It matches names exactly, so the items of an
// attached testbed, named name-XXXX, stay. It returns what it removed.
//
// NOTE: the Node objects that a dead process created while attached to a
// `mazu-testbed up` testbed stay in that testbed's API server.
func removeTestbedItems(name string) ([]string, error) {
	var removed []string
	var errs []error
	if root, err := cgroup2Root(); err == nil {
		cgroup := filepath.Join(root, "mazu-testbed-"+name)
		if _, err := os.Stat(cgroup); err == nil {
			errs = append(errs, killCgroup(cgroup, cgroupKillTimeout), removeCgroupTree(cgroup))
			removed = append(removed, cgroup)
		}
	} else {
		errs = append(errs, err)
	}

	netnsPattern := regexp.MustCompile(`^mzt-` + regexp.QuoteMeta(name) + `-(fab|n[0-9]+(-[0-9]+)?)$`)
	entries, err := os.ReadDir(netnsPath(""))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list network namespaces: %w", err))
	}
	for _, entry := range entries {
		if netnsPattern.MatchString(entry.Name()) {
			errs = append(errs, deleteNetns(entry.Name()))
			removed = append(removed, netnsPath(entry.Name()))
		}
	}

	// os.MkdirTemp ends these folder names with a random decimal number.
	folders := []struct{ parent, prefix string }{
		{shmDir(), "mazu-etcd-"},
		{os.TempDir(), "mazu-etcd-"},
		{os.TempDir(), "mazu-testbed-"},
	}
	for _, f := range folders {
		pattern := regexp.MustCompile(`^` + f.prefix + regexp.QuoteMeta(name) + `-[0-9]+$`)
		matches, _ := filepath.Glob(filepath.Join(f.parent, f.prefix+name+"-*"))
		for _, path := range matches {
			if !pattern.MatchString(filepath.Base(path)) {
				continue
			}
			if err := os.RemoveAll(path); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", path, err))
				continue
			}
			removed = append(removed, path)
		}
	}
	return removed, errors.Join(errs...)
}
