package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// syncExclusions adds the wanted exclusion entries of a namespace, then
// deletes the stale ones, so an update never drops a wanted entry.
func (c *Capture) syncExclusions(netns uint64, s Settings, own []netip.Addr) error {
	cidrs := map[captureCidrKey]uint8{}
	for _, p := range s.ExcludeCIDRs {
		cidrs[cidrKey(netns, p)] = exclConfigured
	}
	for _, a := range own {
		k := cidrKey(netns, netip.PrefixFrom(a, a.BitLen()))
		if _, ok := cidrs[k]; !ok {
			cidrs[k] = exclOwnAddress
		}
	}
	ports := map[capturePortKey]uint8{}
	for _, p := range s.ExcludePorts {
		ports[capturePortKey{Netns: netns, Port: p, Dir: dirOutbound}] = 1
	}
	for _, p := range s.ExcludeInboundPorts {
		ports[capturePortKey{Netns: netns, Port: p, Dir: dirInbound}] = 1
	}

	for k, v := range cidrs {
		if err := c.objs.MztExclCidr.Put(&k, &v); err != nil {
			return fmt.Errorf("store excluded CIDR: %w", err)
		}
	}
	for k, v := range ports {
		if err := c.objs.MztExclPort.Put(&k, &v); err != nil {
			return fmt.Errorf("store excluded port %d: %w", k.Port, err)
		}
	}
	return c.deleteNetnsEntries(netns, func(k captureCidrKey) bool { _, ok := cidrs[k]; return !ok },
		func(k capturePortKey) bool { _, ok := ports[k]; return !ok })
}

// primaryAddr returns the first global unicast address of the family in
// own, the address getsockname shows for captured connects.
func primaryAddr(own []netip.Addr, ipv4 bool) (netip.Addr, bool) {
	for _, a := range own {
		if a.Is4() == ipv4 && a.IsGlobalUnicast() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// syncPodAddrs points the pod's addresses at its namespace, for the tc
// program, and drops addresses the pod no longer has.
func (c *Capture) syncPodAddrs(netns uint64, own []netip.Addr) error {
	want := map[capturePodAddr]bool{}
	for _, a := range own {
		k := capturePodAddr{Addr: addrWords(a)}
		want[k] = true
		if err := c.objs.MztPodAddrs.Put(&k, netns); err != nil {
			return fmt.Errorf("store pod address %s: %w", a, err)
		}
	}
	return c.deletePodAddrs(netns, want)
}

// deletePodAddrs deletes the address entries of netns that are not in keep.
func (c *Capture) deletePodAddrs(netns uint64, keep map[capturePodAddr]bool) error {
	var stale []capturePodAddr
	var k capturePodAddr
	var v uint64
	it := c.objs.MztPodAddrs.Iterate()
	for it.Next(&k, &v) {
		if v == netns && !keep[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list pod addresses: %w", err)
	}
	for _, k := range stale {
		if err := c.objs.MztPodAddrs.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete pod address: %w", err)
		}
	}
	return nil
}

// deleteNetnsEntries deletes the exclusion entries of netns that the
// filters select.
func (c *Capture) deleteNetnsEntries(netns uint64, cidr func(captureCidrKey) bool, port func(capturePortKey) bool) error {
	var cidrKeys []captureCidrKey
	var ck captureCidrKey
	var v uint8
	it := c.objs.MztExclCidr.Iterate()
	for it.Next(&ck, &v) {
		if n, _ := cidrFromKey(ck); n == netns && cidr(ck) {
			cidrKeys = append(cidrKeys, ck)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list excluded CIDRs: %w", err)
	}
	var portKeys []capturePortKey
	var pk capturePortKey
	it = c.objs.MztExclPort.Iterate()
	for it.Next(&pk, &v) {
		if pk.Netns == netns && port(pk) {
			portKeys = append(portKeys, pk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list excluded ports: %w", err)
	}

	var errs []error
	for _, k := range cidrKeys {
		if err := c.objs.MztExclCidr.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete excluded CIDR: %w", err))
		}
	}
	for _, k := range portKeys {
		if err := c.objs.MztExclPort.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete excluded port: %w", err))
		}
	}
	return errors.Join(errs...)
}

// deleteSteerEntries deletes the TIME_WAIT steering entries whose local
// address belongs to netns. It must run before the pod's addresses go.
func (c *Capture) deleteSteerEntries(netns uint64) error {
	own := map[[4]uint32]bool{}
	var pa capturePodAddr
	var cookie uint64
	it := c.objs.MztPodAddrs.Iterate()
	for it.Next(&pa, &cookie) {
		if cookie == netns {
			own[pa.Addr] = true
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list pod addresses: %w", err)
	}

	var keys []captureSteerKey
	var k captureSteerKey
	var v uint64
	it = c.objs.MztTwSteer.Iterate()
	for it.Next(&k, &v) {
		if own[k.Local] {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list steering entries: %w", err)
	}
	for _, k := range keys {
		if err := c.objs.MztTwSteer.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete steering entry: %w", err)
		}
	}
	return nil
}

func (c *Capture) deleteTuples(netns uint64) error {
	var keys []captureTupleKey
	var k captureTupleKey
	var v captureOrigDst
	it := c.objs.MztTuples.Iterate()
	for it.Next(&k, &v) {
		if k.Netns == netns {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list tuples: %w", err)
	}
	for _, k := range keys {
		if err := c.objs.MztTuples.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete tuple: %w", err)
		}
	}
	return nil
}

func (c *Capture) settingsLocked(netns uint64) (Settings, error) {
	var cfg capturePodConfig
	if err := c.objs.MztPods.Lookup(netns, &cfg); err != nil {
		return Settings{}, fmt.Errorf("read pod config: %w", err)
	}
	s := Settings{
		OutboundPort: cfg.OutboundPort,
		InboundPort:  cfg.InboundPort,
		HBONEPort:    cfg.HbonePort,
		ProbeIPv4:    wordsAddr([4]uint32{0, 0, addrWords(netip.IPv4Unspecified())[2], cfg.Probe4}),
		ProbeIPv6:    wordsAddr(cfg.Probe6),
	}

	var ck captureCidrKey
	var v uint8
	it := c.objs.MztExclCidr.Iterate()
	for it.Next(&ck, &v) {
		if n, p := cidrFromKey(ck); n == netns && v == exclConfigured {
			s.ExcludeCIDRs = append(s.ExcludeCIDRs, p)
		}
	}
	if err := it.Err(); err != nil {
		return Settings{}, fmt.Errorf("list excluded CIDRs: %w", err)
	}

	var pk capturePortKey
	it = c.objs.MztExclPort.Iterate()
	for it.Next(&pk, &v) {
		if pk.Netns != netns {
			continue
		}
		if pk.Dir == dirInbound {
			s.ExcludeInboundPorts = append(s.ExcludeInboundPorts, pk.Port)
		} else {
			s.ExcludePorts = append(s.ExcludePorts, pk.Port)
		}
	}
	if err := it.Err(); err != nil {
		return Settings{}, fmt.Errorf("list excluded ports: %w", err)
	}

	slices.SortFunc(s.ExcludeCIDRs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	slices.Sort(s.ExcludePorts)
	slices.Sort(s.ExcludeInboundPorts)
	return s, nil
}
