package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// mapMigration is a pinned map of a previous version whose max_entries or
// flags differ from this version's, but whose type, key and value sizes do
// not, so its entries can be copied into a map of this version.
type mapMigration struct {
	name   string
	old    *ebpf.Map
	copied int
}

// prepareMigration compares every pinned map with spec. A pinned map of a
// different type, key size or value size is an error that wraps
// ebpf.ErrMapIncompatible, returned before anything changes, so the
// previous version's programs keep capturing. A pinned map that differs
// only in max_entries or flags is returned for migration, and its spec is
// set to create an unpinned map, which finishMigration pins later.
func prepareMigration(spec *ebpf.CollectionSpec, pinDir string) ([]mapMigration, error) {
	var out []mapMigration
	closeAll := func() {
		for _, m := range out {
			m.old.Close()
		}
	}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		old, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("load pinned map %s: %w", name, err)
		}
		if ms.Compatible(old) == nil {
			old.Close()
			continue
		}
		if old.Type() != ms.Type || old.KeySize() != ms.KeySize || old.ValueSize() != ms.ValueSize {
			err := fmt.Errorf("pinned map %s (%s, key %d bytes, value %d bytes) has another layout than this version's (%s, key %d bytes, value %d bytes): %w",
				name, old.Type(), old.KeySize(), old.ValueSize(), ms.Type, ms.KeySize, ms.ValueSize, ebpf.ErrMapIncompatible)
			old.Close()
			closeAll()
			return nil, err
		}
		ms.Pinning = ebpf.PinNone
		out = append(out, mapMigration{name: name, old: old})
	}
	return out, nil
}

// copyEntries copies the entries of every migrated map into the new map.
// Socket maps are left empty: user space reads a socket cookie from them
// but must store a socket. The socket storage (mzt_orig) cannot be listed
// from user space, and the TIME_WAIT steering map (mzt_tw_steer) holds
// entries only between the tc program and the listener lookup of one SYN.
func (c *Capture) copyEntries(migrations []mapMigration) error {
	maps := c.mapsByName()
	for i := range migrations {
		m := &migrations[i]
		dst := maps[m.name]
		if dst == nil {
			return fmt.Errorf("migrate map %s: not loaded", m.name)
		}
		switch m.old.Type() {
		case ebpf.SkStorage, ebpf.SockHash, ebpf.SockMap:
			// NOTE: while the tc link runs the previous program and the
			// sk_lookup link the new one, a SYN steered past a TIME_WAIT
			// socket is stored in the previous mzt_tw_steer and not found,
			// so it reaches the application's listener.
			c.log.Warn("pinned map migrated without its entries", "map", m.name)
			continue
		}
		n, err := copyMap(m.old, dst)
		if err != nil {
			return fmt.Errorf("migrate map %s: %w", m.name, err)
		}
		m.copied = n
	}
	return nil
}

// copyMap copies src's entries into dst, which has the same type, key
// size and value size.
func copyMap(src, dst *ebpf.Map) (int, error) {
	n := 0
	if src.Type() == ebpf.PerCPUArray || src.Type() == ebpf.PerCPUHash || src.Type() == ebpf.LRUCPUHash {
		if src.ValueSize() != 8 {
			return 0, fmt.Errorf("per-CPU values of %d bytes cannot be copied; only 8-byte counters can", src.ValueSize())
		}
		var k []byte
		var v []uint64
		it := src.Iterate()
		for it.Next(&k, &v) {
			if err := dst.Put(k, v); err != nil {
				return n, fmt.Errorf("copy entry: %w", err)
			}
			n++
		}
		return n, it.Err()
	}

	var k, v []byte
	it := src.Iterate()
	for it.Next(&k, &v) {
		if err := dst.Put(k, v); err != nil {
			return n, fmt.Errorf("copy entry: %w", err)
		}
		n++
	}
	return n, it.Err()
}

// finishMigration replaces the pins of the migrated maps with this
// version's maps, once every pinned link runs this version's programs.
// The previous maps go away when the last program that uses them does.
func (c *Capture) finishMigration(migrations []mapMigration) error {
	maps := c.mapsByName()
	for _, m := range migrations {
		path := filepath.Join(c.pinDir, m.name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin previous map %s: %w", m.name, err)
		}
		if err := maps[m.name].Pin(path); err != nil {
			return fmt.Errorf("pin migrated map %s: %w", m.name, err)
		}
		m.old.Close()
		c.log.Info("pinned map migrated", "map", m.name, "entries", m.copied)
	}
	return nil
}

// mapsByName returns the loaded maps, keyed by their names in capture.c.
func (c *Capture) mapsByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"mzt_pods":      c.objs.MztPods,
		"mzt_pod_ids":   c.objs.MztPodIds,
		"mzt_excl_cidr": c.objs.MztExclCidr,
		"mzt_excl_port": c.objs.MztExclPort,
		"mzt_pod_addrs": c.objs.MztPodAddrs,
		"mzt_tuples":    c.objs.MztTuples,
		"mzt_orig":      c.objs.MztOrig,
		"mzt_tw_steer":  c.objs.MztTwSteer,
		"mzt_stats":     c.objs.MztStats,
	}
}
