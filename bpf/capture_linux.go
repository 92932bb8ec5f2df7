package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

const (
	// DefaultPinDir is where Open pins maps and links when Options.PinDir is
	// empty.
	DefaultPinDir = "/sys/fs/bpf/mazu-ztunnel"

	// DefaultMark is the socket mark of the agent's own sockets, which are
	// never captured. It matches istio-cni's in-pod mark 1337.
	DefaultMark = 0x539

	// DefaultMarkMask is the part of the socket mark compared with Mark.
	DefaultMarkMask = 0xfff
)

var (
	// ErrNotFound reports that a pod or an original destination is unknown.
	ErrNotFound = errors.New("not found")

	// ErrClosed reports a call on a Capture after Close or Remove.
	ErrClosed = errors.New("capture closed")
)

// Options configures Open. The zero value is valid.
type Options struct {
	// PinDir is the bpffs directory for pinned maps and links. When it is not
	// on bpffs, Open mounts bpffs on /sys/fs/bpf if PinDir lies below it,
	// and otherwise on PinDir itself. Empty means DefaultPinDir.
	//
	// Two Captures may share a PinDir during a handover, as in a rolling
	// update that starts the new agent before the old one stops. The later
	// Open gives every pinned pod link its programs, Enroll by either one
	// takes over the links that the other pinned or re-attaches the ones it
	// detached, and Close by either leaves the pins to the other. The
	// agent-cgroup links move to the cgroup of the Capture that opened
	// last; the other one's OriginalDst then falls back to the map lookup.
	// Each Capture lists only the pods it enrolled or adopted at Open, and
	// Remove by either deletes the capture of every pod.
	PinDir string

	// AgentCgroup is the cgroup v2 directory of the agent process, absolute
	// or relative to the cgroup2 mount. The getsockopt program that returns
	// SO_ORIGINAL_DST is attached there, and connects from this cgroup are
	// never captured. The getsockopt program runs for sockets that belong
	// to the cgroup or its descendants: a socket belongs to the cgroup of
	// the process that created it, and an accepted socket to its
	// listener's. The connect exemption compares the connecting process's
	// cgroup ID with this cgroup's exactly, so processes in child cgroups
	// are captured like any other. Empty means neither: the agent then looks
	// original destinations up with Capture.OriginalDst.
	AgentCgroup string

	// OriginalDstAsLocalAddr makes getsockname on a connection accepted on
	// the outbound listener return its original destination, for sockets of
	// AgentCgroup (the listener must be created there). The proxy then reads
	// the original destination from conn.LocalAddr() with no extra system
	// call (Go calls getsockname on every accept), as it does for inbound
	// connections, and Capture.OriginalDst does the same. It needs
	// AgentCgroup, and the listener's own address stays 127.0.0.1:15001.
	OriginalDstAsLocalAddr bool

	// Mark and MarkMask identify the agent's own sockets (SO_MARK), which are
	// never captured. Zero means DefaultMark and DefaultMarkMask.
	Mark     uint32
	MarkMask uint32

	// Logger receives lifecycle events. Nil discards them.
	Logger *slog.Logger
}

// Capture owns the capture programs and maps of one node agent. Create it
// once with Open. Its methods are safe for concurrent use; after Close or
// Remove they return ErrClosed.
//
// Pods stay captured across a Close: links and maps are pinned under
// PinDir, and the next Open adopts them by swapping in its programs
// atomically, so no connection bypasses the proxy during an agent restart.
//
// It needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns and mount)
// and Linux 6.6 or later (tcx); see the package documentation.
type Capture struct {
	log        *slog.Logger
	pinDir     string
	localAddr  bool           // Options.OriginalDstAsLocalAddr
	migrations []mapMigration // during Open: pinned maps of a previous layout
	objs       captureHandles
	agentLinks map[string]link.Link // keyed by pin name

	mu   sync.Mutex
	pods map[string]*podState // guarded by mu; keyed by pod ID

	// life guards the handles in objs against Close: lookups hold it for
	// reading. Lock order: mu, then life.
	life   sync.RWMutex
	closed bool // written under mu and life, so either one suffices to read
}

// Open loads the programs, reuses the maps pinned under PinDir or creates
// them, and adopts every pod enrolled by a previous agent.
func Open(opts Options) (*Capture, error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if !filepath.IsAbs(opts.PinDir) {
		return nil, fmt.Errorf("pin directory %q is not absolute: use a path under a bpffs mount such as %s", opts.PinDir, DefaultPinDir)
	}
	if opts.Mark == 0 {
		opts.Mark = DefaultMark
	}
	if opts.MarkMask == 0 {
		opts.MarkMask = DefaultMarkMask
	}
	if opts.Mark&opts.MarkMask != opts.Mark {
		return nil, fmt.Errorf("mark %#x has bits outside mark mask %#x: widen the mask", opts.Mark, opts.MarkMask)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if opts.OriginalDstAsLocalAddr && opts.AgentCgroup == "" {
		return nil, errors.New("OriginalDstAsLocalAddr needs AgentCgroup: set the agent's cgroup")
	}
	var agentCgroup string
	var agentCgroupID uint64
	if opts.AgentCgroup != "" {
		p, id, err := resolveCgroup(opts.AgentCgroup)
		if err != nil {
			return nil, fmt.Errorf("agent cgroup: %w", err)
		}
		agentCgroup, agentCgroupID = p, id
	}

	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(opts.PinDir, podsDir), 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}

	c := &Capture{log: log, pinDir: opts.PinDir, localAddr: opts.OriginalDstAsLocalAddr, pods: map[string]*podState{}, agentLinks: map[string]link.Link{}}
	if err := c.load(opts.Mark, opts.MarkMask, agentCgroupID); err != nil {
		return nil, err
	}
	if err := c.adoptPods(); err != nil {
		c.closeHandles()
		return nil, err
	}
	for _, h := range c.agentHooks(opts.OriginalDstAsLocalAddr) {
		if err := c.adoptAgentLink(h, agentCgroup, agentCgroupID); err != nil {
			c.closeHandles()
			return nil, err
		}
	}
	if err := c.finishMigration(c.migrations); err != nil {
		c.closeHandles()
		return nil, err
	}
	c.migrations = nil
	log.Info("capture opened", "pin_dir", opts.PinDir, "pods", len(c.pods))
	return c, nil
}

func (c *Capture) load(mark, mask uint32, agentCgroupID uint64) error {
	spec, err := loadCapture()
	if err != nil {
		return fmt.Errorf("load capture spec: %w", err)
	}
	vars := map[string]any{
		captureVarMarkValue:     mark,
		captureVarMarkMask:      mask,
		captureVarAgentCgroupId: agentCgroupID,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}

	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: c.pinDir}}
	err = spec.LoadAndAssign(&c.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Maps pinned by a previous version differ from this version's.
		// Their entries are copied into new maps, which Open pins in
		// place of the previous ones once every link runs the new programs.
		migrations, perr := prepareMigration(spec, c.pinDir)
		if perr != nil {
			return fmt.Errorf("load capture programs: maps pinned in %s cannot be migrated, and the previous programs keep capturing; to start over, remove them (Capture.Remove) and enroll every pod again, which leaves pods uncaptured in between: %w", c.pinDir, perr)
		}
		err = spec.LoadAndAssign(&c.objs, opts)
		if err == nil {
			c.migrations = migrations
			if err := c.copyEntries(migrations); err != nil {
				c.closeHandles()
				return err
			}
		} else {
			for _, m := range migrations {
				m.old.Close()
			}
		}
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("load capture programs: %+v", verr)
	}
	if err != nil {
		return fmt.Errorf("load capture programs: %w", err)
	}
	return nil
}

// agentHook is a program on the agent's cgroup.
type agentHook struct {
	pin     string
	attach  ebpf.AttachType
	prog    *ebpf.Program
	enabled bool
}

func (c *Capture) agentHooks(localAddr bool) []agentHook {
	return []agentHook{
		{"agent_getsockopt", ebpf.AttachCGroupGetsockopt, c.objs.MztGetsockopt, true},
		{"agent_getsockname4", ebpf.AttachCgroupInet4GetSockname, c.objs.MztAgentSock4, localAddr},
		{"agent_getsockname6", ebpf.AttachCgroupInet6GetSockname, c.objs.MztAgentSock6, localAddr},
	}
}

// adoptAgentLink makes sure h runs on the agent's cgroup. A pinned link from
// a previous agent gets the new program; when the cgroup changed, the new
// link is attached before the old one goes. A pinned link of a hook that is
// now disabled, or with no agent cgroup set, is detached.
func (c *Capture) adoptAgentLink(h agentHook, cgroup string, cgroupID uint64) error {
	pin := filepath.Join(c.pinDir, h.pin)
	old, err := loadPinnedLink(pin)
	if err != nil {
		return err
	}
	if cgroup == "" || !h.enabled {
		if old != nil {
			detachLink(old)
		}
		return nil
	}
	if old != nil {
		info, err := old.Info()
		if err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgroupID {
			if err := old.Update(h.prog); err != nil {
				old.Close()
				return fmt.Errorf("update %s link: %w", h.pin, err)
			}
			c.agentLinks[h.pin] = old
			return nil
		}
	}

	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: h.attach, Program: h.prog})
	if err != nil {
		if old != nil {
			old.Close()
		}
		return fmt.Errorf("attach %s to %s: %w", h.pin, cgroup, err)
	}
	if old != nil {
		detachLink(old)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("pin %s link: %w", h.pin, err)
	}
	c.agentLinks[h.pin] = l
	return nil
}

// captureHandles holds the loaded programs and maps. It leaves out the
// generated Variables on purpose: a Variable keeps an mmap of .rodata that
// only the garbage collector releases, so the map would outlive Remove.
type captureHandles struct {
	capturePrograms
	captureMaps
}

func (h *captureHandles) Close() error {
	return errors.Join(h.capturePrograms.Close(), h.captureMaps.Close())
}

// Close releases the agent's handles. Pinned links and maps stay, so
// enrolled pods remain captured (and fail closed while no agent listens)
// until the next Open adopts them. Capture is unusable afterwards.
func (c *Capture) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.closeHandlesLocked()
	return nil
}

func (c *Capture) closeHandles() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeHandlesLocked()
}

func (c *Capture) closeHandlesLocked() {
	for _, p := range c.pods {
		p.closeLinks()
	}
	c.pods = map[string]*podState{}
	for pin, l := range c.agentLinks {
		l.Close()
		delete(c.agentLinks, pin)
	}

	for _, m := range c.migrations {
		m.old.Close()
	}
	c.migrations = nil

	c.life.Lock()
	defer c.life.Unlock()
	c.closed = true
	c.objs.Close()
}

// Remove unenrolls every pod, detaches all programs, deletes the pinned maps
// and the pin directory, and releases the handles. Capture is unusable
// afterwards.
func (c *Capture) Remove() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}

	var errs []error
	for id := range c.pods {
		if err := c.unenrollLocked(id); err != nil {
			errs = append(errs, err)
		}
	}
	for pin, l := range c.agentLinks {
		detachLink(l)
		delete(c.agentLinks, pin)
	}
	for _, m := range c.mapsByName() {
		if m == nil {
			continue
		}
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map: %w", err))
		}
	}
	c.closeHandlesLocked()

	if err := os.RemoveAll(filepath.Join(c.pinDir, podsDir)); err != nil {
		errs = append(errs, fmt.Errorf("remove pod pins: %w", err))
	}
	if err := removePinDir(c.pinDir); err != nil {
		errs = append(errs, err)
	}
	c.log.Info("capture removed", "pin_dir", c.pinDir)
	return errors.Join(errs...)
}

// loadPinnedLink returns the link pinned at path, or nil when there is none.
func loadPinnedLink(path string) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	return l, nil
}

// detachLink removes a link from its hook even when another process still
// holds it, then drops the pin and the handle.
func detachLink(l link.Link) {
	_ = l.Detach()
	_ = l.Unpin()
	_ = l.Close()
}

// Stats are counters summed over all CPUs since the maps were created.
type Stats struct {
	ConnectSeen         uint64 // TCP connects in enrolled pods
	ConnectRedirected   uint64 // connects sent to the outbound listener
	ConnectExcluded     uint64 // connects to excluded CIDRs or ports
	StorageFailed       uint64 // original destinations that could not be stored
	TupleStored         uint64 // redirected connections published to the tuple map
	SockoptAnswered     uint64 // SO_ORIGINAL_DST answers
	PeernameRewritten   uint64 // getpeername calls shown the original destination
	InboundAssigned     uint64 // inbound SYNs assigned to a listener
	InboundNoListener   uint64 // inbound SYNs dropped because the listener is missing
	InboundProbe        uint64 // inbound SYNs from the probe address, passed
	InboundAssignFailed uint64 // inbound SYNs dropped because bpf_sk_assign failed
	InboundUnknownDst   uint64 // inbound SYNs dropped because the destination is no enrolled pod address
	InboundTWSteered    uint64 // inbound SYNs meeting a TIME_WAIT socket, steered through sk_lookup
	InboundTWFailed     uint64 // such SYNs dropped because the steering map update failed
	SocknameRewritten   uint64 // getsockname calls shown the pod's address
	AgentSocknameOrig   uint64 // agent getsockname calls returning an original destination
	InboundFragment     uint64 // inbound IP fragments carrying TCP, dropped
	InboundMalformed    uint64 // inbound packets dropped because a header was truncated or too deep to parse
}

// Stats reads the counters.
func (c *Capture) Stats() (Stats, error) {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed {
		return Stats{}, ErrClosed
	}

	var s Stats
	fields := []*uint64{
		&s.ConnectSeen, &s.ConnectRedirected, &s.ConnectExcluded, &s.StorageFailed,
		&s.TupleStored, &s.SockoptAnswered, &s.PeernameRewritten, &s.InboundAssigned,
		&s.InboundNoListener, &s.InboundProbe, &s.InboundAssignFailed, &s.InboundUnknownDst,
		&s.InboundTWSteered, &s.InboundTWFailed, &s.SocknameRewritten,
		&s.AgentSocknameOrig, &s.InboundFragment, &s.InboundMalformed,
	}
	for i, f := range fields {
		var per []uint64
		if err := c.objs.MztStats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			*f += v
		}
	}
	return s, nil
}
