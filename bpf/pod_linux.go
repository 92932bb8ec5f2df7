package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

const podsDir = "pods"

const (
	dirOutbound = 0
	dirInbound  = 1

	exclConfigured = 1 // an ExcludeCIDRs entry
	exclOwnAddress = 2 // one of the pod's own addresses
)

// Pod describes a pod to enroll.
type Pod struct {
	// ID names the pod, for example its UID. It must be 1 to 63 letters,
	// digits, '.', '_' or '-', because it also names the pin directory.
	ID string

	// Netns is an open handle of the pod's network namespace, such as the fd
	// that istio-cni sends. When nil, NetnsPath is opened instead.
	Netns *os.File

	// NetnsPath is the path of the pod's network namespace, such as
	// /proc/<pid>/ns/net or /var/run/netns/<name>.
	NetnsPath string

	// Cgroup is the pod's cgroup v2 directory, absolute or relative to the
	// cgroup2 mount. The outbound programs attach there and apply to every
	// process in it and below it.
	Cgroup string

	// Settings are the pod's capture settings.
	Settings Settings
}

// EnrolledPod describes an enrolled pod, as Pods reports it.
type EnrolledPod struct {
	ID          string
	NetnsCookie uint64
	CgroupID    uint64
	Ifindex     int
	// Settings as stored in the maps. Interface is empty for pods adopted
	// from a previous agent.
	Settings Settings
}

// podState is the state Capture keeps per enrolled pod.
type podState struct {
	id       string
	meta     capturePodMeta
	iface    string
	links    map[string]link.Link // keyed by pin name
	pinDir   string
	attached bool
}

func (p *podState) closeLinks() {
	for _, l := range p.links {
		l.Close()
	}
	p.links = map[string]link.Link{}
}

// cgroupHook is one cgroup program of a pod.
type cgroupHook struct {
	pin    string
	attach ebpf.AttachType
	prog   func(*captureHandles) *ebpf.Program
}

var cgroupHooks = []cgroupHook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(o *captureHandles) *ebpf.Program { return o.MztConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(o *captureHandles) *ebpf.Program { return o.MztConnect6 }},
	{"sockops", ebpf.AttachCGroupSockOps, func(o *captureHandles) *ebpf.Program { return o.MztSockops }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *captureHandles) *ebpf.Program { return o.MztGetpeer4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *captureHandles) *ebpf.Program { return o.MztGetpeer6 }},
	{"getsockname4", ebpf.AttachCgroupInet4GetSockname, func(o *captureHandles) *ebpf.Program { return o.MztGetsock4 }},
	{"getsockname6", ebpf.AttachCgroupInet6GetSockname, func(o *captureHandles) *ebpf.Program { return o.MztGetsock6 }},
}

const (
	tcxPin      = "tcx_ingress"
	skLookupPin = "sk_lookup"
)

// programFor returns the program behind a pin name.
func (c *Capture) programFor(pin string) *ebpf.Program {
	switch pin {
	case tcxPin:
		return c.objs.MztTcIngress
	case skLookupPin:
		return c.objs.MztSkLookup
	}
	for _, h := range cgroupHooks {
		if h.pin == pin {
			return h.prog(&c.objs)
		}
	}
	return nil
}

// netnsInfo is the data Enroll reads inside the pod's namespace.
type netnsInfo struct {
	cookie  uint64
	ifindex int
	own     []netip.Addr
}

func readNetns(nsFD int, iface string) (netnsInfo, error) {
	var info netnsInfo
	err := inNetns(nsFD, func() error {
		var err error
		if info.cookie, err = netnsCookie(); err != nil {
			return err
		}
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("find interface %s in pod network namespace: %w", iface, err)
		}
		info.ifindex = ifc.Index
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("list pod addresses: %w", err)
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && !ip.Unmap().IsLoopback() {
				info.own = append(info.own, ip.Unmap())
			}
		}
		return nil
	})
	return info, err
}

// Enroll captures a pod's traffic: outbound connects from its cgroup and
// inbound connections on its interface. Enrolling an enrolled pod again
// applies new settings and re-attaches missing links; it is how an agent
// confirms pods after a restart.
//
// Inbound connections are dropped until the pod's inbound listeners exist,
// and outbound connects are refused until its outbound listener exists.
func (c *Capture) Enroll(p Pod) error {
	if err := validatePodID(p.ID); err != nil {
		return err
	}
	s := p.Settings.withDefaults()
	if err := s.validate(); err != nil {
		return fmt.Errorf("enroll pod %s: %w", p.ID, err)
	}
	cgPath, cgID, err := resolveCgroup(p.Cgroup)
	if err != nil {
		return fmt.Errorf("enroll pod %s: %w", p.ID, err)
	}
	ns := p.Netns
	if ns == nil {
		if p.NetnsPath == "" {
			return fmt.Errorf("enroll pod %s: no network namespace: set Netns or NetnsPath", p.ID)
		}
		if ns, err = os.Open(p.NetnsPath); err != nil {
			return fmt.Errorf("enroll pod %s: open network namespace: %w", p.ID, err)
		}
		defer ns.Close()
	}
	info, err := readNetns(int(ns.Fd()), s.Interface)
	if err != nil {
		return fmt.Errorf("enroll pod %s: %w", p.ID, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("enroll pod %s: %w", p.ID, ErrClosed)
	}
	st, err := c.podForEnrollLocked(p.ID, info.cookie)
	if err != nil {
		return err
	}
	st.meta = capturePodMeta{Netns: info.cookie, CgroupId: cgID, Ifindex: uint32(info.ifindex)}
	st.iface = s.Interface

	if err := c.applyLocked(st, ns, cgPath, s, info); err != nil {
		if !st.attached {
			_ = c.unenrollLocked(p.ID)
		}
		return fmt.Errorf("enroll pod %s: %w", p.ID, err)
	}
	st.attached = true
	c.log.Info("pod enrolled", "pod", p.ID, "netns_cookie", info.cookie, "cgroup", cgPath, "ifindex", info.ifindex)
	return nil
}

func (c *Capture) podForEnrollLocked(id string, cookie uint64) (*podState, error) {
	for otherID, o := range c.pods {
		if otherID != id && o.meta.Netns == cookie {
			return nil, fmt.Errorf("enroll pod %s: its network namespace is already enrolled as pod %s", id, otherID)
		}
	}
	if st, ok := c.pods[id]; ok {
		if st.meta.Netns != cookie {
			return nil, fmt.Errorf("enroll pod %s: already enrolled with another network namespace (cookie %d, now %d): unenroll it first", id, st.meta.Netns, cookie)
		}
		return st, nil
	}
	st := &podState{
		id:     id,
		links:  map[string]link.Link{},
		pinDir: filepath.Join(c.pinDir, podsDir, id),
	}
	c.pods[id] = st
	return st, nil
}

// applyLocked writes the pod's maps, then attaches its links. Maps come
// first so that the programs never see a half-configured pod.
func (c *Capture) applyLocked(st *podState, ns *os.File, cgPath string, s Settings, info netnsInfo) error {
	key := podIDKey(st.id)
	if err := c.objs.MztPodIds.Put(&key, &st.meta); err != nil {
		return fmt.Errorf("store pod ID: %w", err)
	}
	if err := c.syncExclusions(info.cookie, s, info.own); err != nil {
		return err
	}
	if err := c.syncPodAddrs(info.cookie, info.own); err != nil {
		return err
	}
	cfg := capturePodConfig{
		OutboundPort: s.OutboundPort,
		InboundPort:  s.InboundPort,
		HbonePort:    s.HBONEPort,
		Probe4:       addrWords(s.ProbeIPv4)[3],
		Probe6:       addrWords(s.ProbeIPv6),
	}
	if a, ok := primaryAddr(info.own, true); ok {
		cfg.Pod4 = addrWords(a)[3]
	}
	if a, ok := primaryAddr(info.own, false); ok {
		cfg.Pod6 = addrWords(a)
	}
	if err := c.objs.MztPods.Put(info.cookie, &cfg); err != nil {
		return fmt.Errorf("store pod config: %w", err)
	}

	if err := os.MkdirAll(st.pinDir, 0o700); err != nil {
		return fmt.Errorf("create pod pin directory: %w", err)
	}
	if err := c.adoptPinnedLocked(st); err != nil {
		return err
	}
	for _, h := range cgroupHooks {
		if err := c.ensureCgroupLink(st, h, cgPath); err != nil {
			return err
		}
	}
	// sk_lookup goes before tcx, which relies on it for SYNs that meet a
	// TIME_WAIT socket.
	if err := c.ensureSkLookupLink(st, ns); err != nil {
		return err
	}
	return c.ensureTCXLink(st, ns, info.ifindex)
}

// adoptPinnedLocked takes over the pod's pinned links that st does not hold
// yet, by giving them this Capture's programs. Another Capture on the same
// PinDir pins them when it enrolls the pod after this one's Open, as an
// old agent can during a rolling update. Attaching anew would fail to pin,
// and Enroll would then remove the pod's capture. A pinned link whose hook
// is gone is detached, so that the pod gets a new one.
func (c *Capture) adoptPinnedLocked(st *podState) error {
	pins := []string{skLookupPin, tcxPin}
	for _, h := range cgroupHooks {
		pins = append(pins, h.pin)
	}
	for _, pin := range pins {
		if st.links[pin] != nil {
			continue
		}
		l, err := loadPinnedLink(filepath.Join(st.pinDir, pin))
		if err != nil {
			return err
		}
		if l == nil {
			continue
		}
		if err := l.Update(c.programFor(pin)); err != nil {
			c.log.Warn("detaching pinned link that could not be updated", "pod", st.id, "pin", pin, "error", err)
			detachLink(l)
			continue
		}
		st.links[pin] = l
	}
	return nil
}

func (c *Capture) ensureSkLookupLink(st *podState, ns *os.File) error {
	// The pod's namespace cannot change while it stays enrolled, but another
	// Capture on the same PinDir may have detached the link: the kernel
	// then reports namespace inode 0.
	old := st.links[skLookupPin]
	if old != nil {
		if info, err := old.Info(); err == nil && info.NetNs() != nil && info.NetNs().NetnsInode != 0 {
			return nil
		}
	}
	l, err := link.AttachNetNs(int(ns.Fd()), c.objs.MztSkLookup)
	if err != nil {
		return fmt.Errorf("attach sk_lookup to the pod network namespace: %w", err)
	}
	return c.replaceLink(st, skLookupPin, old, l)
}

// ensureCgroupLink attaches h to cgPath unless the pod already has that
// link on that cgroup. A link on another cgroup is replaced after the new
// one is in place.
func (c *Capture) ensureCgroupLink(st *podState, h cgroupHook, cgPath string) error {
	old := st.links[h.pin]
	if old != nil {
		if info, err := old.Info(); err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == st.meta.CgroupId {
			return nil
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgPath, Attach: h.attach, Program: h.prog(&c.objs)})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", h.pin, cgPath, err)
	}
	return c.replaceLink(st, h.pin, old, l)
}

func (c *Capture) ensureTCXLink(st *podState, ns *os.File, ifindex int) error {
	old := st.links[tcxPin]
	if old != nil {
		if info, err := old.Info(); err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			return nil
		}
	}
	var l link.Link
	// The ifindex is resolved in the calling thread's namespace.
	err := inNetns(int(ns.Fd()), func() error {
		var err error
		// First in line, so that no other program can pass a SYN to the
		// application before capture sees it.
		l, err = link.AttachTCX(link.TCXOptions{
			Interface: ifindex,
			Program:   c.objs.MztTcIngress,
			Attach:    ebpf.AttachTCXIngress,
			Anchor:    link.Head(),
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("attach tcx ingress to ifindex %d: %w", ifindex, err)
	}
	return c.replaceLink(st, tcxPin, old, l)
}

func (c *Capture) replaceLink(st *podState, pin string, old, l link.Link) error {
	path := filepath.Join(st.pinDir, pin)
	if old != nil {
		detachLink(old)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		delete(st.links, pin)
		return fmt.Errorf("pin %s link: %w", pin, err)
	}
	st.links[pin] = l
	return nil
}

// Unenroll stops capturing a pod: it detaches the pod's programs and
// deletes every map entry of its network namespace. It returns an error
// wrapping ErrNotFound when the pod is not enrolled.
//
// Sockets that the pod opened while enrolled keep their socket-storage
// entry until they close.
func (c *Capture) Unenroll(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("unenroll pod %s: %w", id, ErrClosed)
	}
	return c.unenrollLocked(id)
}

func (c *Capture) unenrollLocked(id string) error {
	st, ok := c.pods[id]
	if !ok {
		return fmt.Errorf("unenroll pod %s: %w", id, ErrNotFound)
	}
	// Links go first: a program that runs meanwhile still finds the pod's
	// config and keeps capturing.
	for _, l := range st.links {
		detachLink(l)
	}
	st.links = map[string]link.Link{}
	netns := st.meta.Netns

	var errs []error
	if err := c.objs.MztPods.Delete(netns); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete pod config: %w", err))
	}
	all := func(captureCidrKey) bool { return true }
	allPorts := func(capturePortKey) bool { return true }
	if err := c.deleteNetnsEntries(netns, all, allPorts); err != nil {
		errs = append(errs, err)
	}
	if err := c.deleteSteerEntries(netns); err != nil {
		errs = append(errs, err)
	}
	if err := c.deletePodAddrs(netns, nil); err != nil {
		errs = append(errs, err)
	}
	if err := c.deleteTuples(netns); err != nil {
		errs = append(errs, err)
	}
	key := podIDKey(id)
	if err := c.objs.MztPodIds.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete pod ID: %w", err))
	}
	if err := os.RemoveAll(st.pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pod pin directory: %w", err))
	}
	delete(c.pods, id)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unenroll pod %s: %w", id, err)
	}
	c.log.Info("pod unenrolled", "pod", id, "netns_cookie", netns)
	return nil
}

// Pods lists the enrolled pods, sorted by ID.
func (c *Capture) Pods() ([]EnrolledPod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("list pods: %w", ErrClosed)
	}

	var out []EnrolledPod
	for id, st := range c.pods {
		s, err := c.settingsLocked(st.meta.Netns)
		if err != nil {
			return nil, fmt.Errorf("list pods: %w", err)
		}
		s.Interface = st.iface
		out = append(out, EnrolledPod{
			ID:          id,
			NetnsCookie: st.meta.Netns,
			CgroupID:    st.meta.CgroupId,
			Ifindex:     int(st.meta.Ifindex),
			Settings:    s,
		})
	}
	slices.SortFunc(out, func(a, b EnrolledPod) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out, nil
}

func podIDKey(id string) capturePodId {
	var k capturePodId
	for i := 0; i < len(id) && i < len(k.Id)-1; i++ {
		k.Id[i] = int8(id[i])
	}
	return k
}

func podIDString(k capturePodId) string {
	b := make([]byte, 0, len(k.Id))
	for _, c := range k.Id {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}
