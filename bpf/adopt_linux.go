package bpf

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
)

// adoptPods takes over the pods of a previous agent: every pinned link gets
// the newly loaded program through an atomic link update, so capture never
// stops. Pin directories without a pod ID entry come from an interrupted
// enrollment and are removed.
func (c *Capture) adoptPods() error {
	var key capturePodId
	var meta capturePodMeta
	it := c.objs.MztPodIds.Iterate()
	for it.Next(&key, &meta) {
		id := podIDString(key)
		c.pods[id] = &podState{
			id:       id,
			meta:     meta,
			links:    map[string]link.Link{},
			pinDir:   filepath.Join(c.pinDir, podsDir, id),
			attached: true,
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list pinned pods: %w", err)
	}

	entries, err := os.ReadDir(filepath.Join(c.pinDir, podsDir))
	if err != nil {
		return fmt.Errorf("list pod pin directories: %w", err)
	}
	for _, e := range entries {
		dir := filepath.Join(c.pinDir, podsDir, e.Name())
		st, ok := c.pods[e.Name()]
		if !ok {
			c.log.Warn("removing pins of unknown pod", "pod", e.Name())
			removeLinkDir(dir)
			continue
		}
		if err := c.adoptLinks(st); err != nil {
			return err
		}
	}
	return nil
}

func (c *Capture) adoptLinks(st *podState) error {
	files, err := os.ReadDir(st.pinDir)
	if err != nil {
		return fmt.Errorf("list pins of pod %s: %w", st.id, err)
	}
	for _, f := range files {
		path := filepath.Join(st.pinDir, f.Name())
		l, err := loadPinnedLink(path)
		if err != nil {
			return fmt.Errorf("adopt pod %s: %w", st.id, err)
		}
		prog := c.programFor(f.Name())
		if l == nil || prog == nil {
			if l != nil {
				l.Close()
			}
			c.log.Warn("ignoring unknown pin", "pod", st.id, "pin", f.Name())
			continue
		}
		if err := l.Update(prog); err != nil {
			// The hook is gone (interface or cgroup removed); the pod is
			// departing and Unenroll cleans up.
			c.log.Warn("pinned link not updated", "pod", st.id, "pin", f.Name(), "error", err)
		}
		st.links[f.Name()] = l
	}
	return nil
}

func removeLinkDir(dir string) {
	files, _ := os.ReadDir(dir)
	for _, f := range files {
		if l, err := loadPinnedLink(filepath.Join(dir, f.Name())); err == nil && l != nil {
			detachLink(l)
		}
	}
	_ = os.RemoveAll(dir)
}
