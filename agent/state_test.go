package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestStateSharedFolder saves from two agents' state files in one folder at
// once, as the old and the new agent of a rolling update do. Every save
// must succeed, leave valid JSON and no temporary file.
func TestStateSharedFolder(t *testing.T) {
	dir := t.TempDir()
	var states [2]*stateFile
	for i := range states {
		s, err := openState(dir)
		if err != nil {
			t.Fatal(err)
		}
		states[i] = s
	}
	const saves = 200
	errs := make(chan error, 2*saves)
	var wg sync.WaitGroup
	for i, s := range states {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range saves {
				uid := fmt.Sprintf("agent%d-pod%d", i, n)
				errs <- s.put(stateEntry{UID: uid, Namespace: "default", Name: uid, Netns: "/var/run/netns/" + uid})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent save failed: %v", err)
		}
	}

	data, err := os.ReadFile(filepath.Join(dir, "enrolled.json"))
	if err != nil {
		t.Fatal(err)
	}
	var list []stateEntry
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatalf("state file is not valid JSON after concurrent saves: %v", err)
	}
	if len(list) != saves {
		t.Errorf("state file lists %d pods, want the %d of the last writer", len(list), saves)
	}
	leftover, err := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if len(leftover) != 0 {
		t.Errorf("temporary files left behind: %v", leftover)
	}
}
