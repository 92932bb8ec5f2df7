package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// stateFile records which pods the agent enrolled and where their network
// namespaces are, so that a restarted agent can reopen their listeners. The
// capture itself survives restarts in pinned eBPF links.
type stateFile struct {
	path    string
	mu      sync.Mutex
	entries map[string]stateEntry
}

type stateEntry struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Netns     string `json:"netns"`
}

// openState loads the state in dir; an empty dir keeps state in memory only.
func openState(dir string) (*stateFile, error) {
	s := &stateFile{entries: map[string]stateEntry{}}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open agent state: %w", err)
	}
	s.path = filepath.Join(dir, "enrolled.json")
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open agent state: %w", err)
	}
	var list []stateEntry
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("open agent state %s: %w; remove the file to start over (pods are then re-found from their cgroups)", s.path, err)
	}
	for _, e := range list {
		s.entries[e.UID] = e
	}
	return s, nil
}

func (s *stateFile) put(e stateEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[e.UID] = e
	return s.saveLocked()
}

func (s *stateFile) remove(uid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[uid]; !ok {
		return nil
	}
	delete(s.entries, uid)
	return s.saveLocked()
}

func (s *stateFile) netns(uid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries[uid].Netns
}

func (s *stateFile) list() []stateEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]stateEntry, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// saveLocked writes the file atomically: a temporary file, fsync, rename.
// The temporary file has a name of its own, because the old and the new
// agent of a rolling update share the folder and may save at once.
func (s *stateFile) saveLocked() error {
	if s.path == "" {
		return nil
	}
	list := make([]stateEntry, 0, len(s.entries))
	for _, e := range s.entries {
		list = append(list, e)
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(s.path), filepath.Base(s.path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	tmp := f.Name()
	if err := writeSynced(f, data); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("save agent state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("save agent state: %w", err)
	}
	return nil
}

// writeSynced writes data to f, syncs and closes it.
func writeSynced(f *os.File, data []byte) error {
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
