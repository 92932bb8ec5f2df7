package bpf

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"golang.org/x/sys/unix"
)

// TestRestartAdoption closes the Capture while connections run in both
// directions, opens a new one on the same pins and checks that no
// connection reached an application without passing the proxy.
func TestRestartAdoption(t *testing.T) {
	t.Run("IPv4", func(t *testing.T) { testRestartAdoption(t, "tcp4", "", nodeIP4, podIP4) })
	// The node also holds the IPv6 probe address, so pick the source.
	t.Run("IPv6", func(t *testing.T) {
		testRestartAdoption(t, "tcp6", netip.AddrPortFrom(nodeIP6, 0).String(), nodeIP6, podIP6)
	})
}

func testRestartAdoption(t *testing.T, network, nodeLaddr string, node, pod netip.Addr) {
	f := newFixture(t)
	old := f.cur.Load()
	dst := netip.AddrPortFrom(node, appPort)

	cmd, out := f.startApp(helperSpec{Network: network, Addr: dst.String(), Count: 3000, Duration: 2500 * time.Millisecond, Interval: 2 * time.Millisecond})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var inboundOK, inboundBad int
	var inboundErr string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 5000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			reply, err := dialIn(t, f.node, network, nodeLaddr, netip.AddrPortFrom(pod, appPort).String(), 2*time.Second)
			if err == nil && strings.HasPrefix(reply, "in ") {
				inboundOK++
			} else {
				inboundBad++
				inboundErr = fmt.Sprintf("reply %q, error %v", reply, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	// The handover: no Capture at all for 300 ms, then a new one that
	// adopts the pins and confirms the pod.
	time.Sleep(600 * time.Millisecond)
	f.cur.Store(nil)
	if err := old.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	c, err := Open(Options{PinDir: f.pinDir, AgentCgroup: f.agentCg})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	f.cur.Store(c)
	if err := c.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll after restart: %v", err)
	}

	attempts := waitApp(t, cmd, out)
	close(stop)
	wg.Wait()

	byMap := 0
	for i, a := range attempts {
		fields := strings.Fields(a.Reply)
		if a.Err != "" || len(fields) != 3 || fields[0] != "out" || fields[2] != dst.String() {
			t.Errorf("outbound attempt %d: reply %q, error %q; want the proxy with SO_ORIGINAL_DST %s", i, a.Reply, a.Err, dst)
			continue
		}
		if fields[1] == dst.String() {
			byMap++
		}
	}
	t.Logf("outbound: %d attempts, %d also resolved by map lookup; inbound: %d proxied", len(attempts), byMap, inboundOK)
	if len(attempts) < 100 || byMap == 0 {
		t.Errorf("outbound: %d attempts, %d resolved by map lookup; want at least 100 and some", len(attempts), byMap)
	}
	if inboundBad != 0 || inboundOK < 50 {
		t.Errorf("inbound: %d proxied, %d not (last: %s); want at least 50 and none missed", inboundOK, inboundBad, inboundErr)
	}
	if n := f.nodeApp.accepted() + f.nodeV6.accepted() + f.podApp.accepted(); n != 0 {
		t.Errorf("applications accepted %d connections past the proxy, want 0", n)
	}

	// Every pinned link now runs the new programs.
	pods, err := c.Pods()
	if err != nil || len(pods) != 1 {
		t.Fatalf("Pods() after restart = %+v, %v; want the adopted pod", pods, err)
	}
	c.mu.Lock()
	links := c.pods[pods[0].ID].links
	c.mu.Unlock()
	if len(links) != len(cgroupHooks)+2 {
		t.Errorf("adopted pod has %d links, want %d", len(links), len(cgroupHooks)+2)
	}
	for pin, l := range links {
		info, err := l.Info()
		if err != nil {
			t.Fatalf("link %s info: %v", pin, err)
		}
		if want := progID(t, c.programFor(pin)); info.Program != want {
			t.Errorf("link %s runs program %d, want the new program %d", pin, info.Program, want)
		}
	}
}

func progID(t testing.TB, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// kernelObjects lists the programs, maps and links in the kernel by ID,
// with their names (links have none).
type kernelObjects struct {
	progs map[ebpf.ProgramID]string
	maps  map[ebpf.MapID]string
	links map[link.ID]ebpf.ProgramID
}

func listKernelObjects(t testing.TB) kernelObjects {
	t.Helper()
	k := kernelObjects{progs: map[ebpf.ProgramID]string{}, maps: map[ebpf.MapID]string{}, links: map[link.ID]ebpf.ProgramID{}}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			t.Fatalf("list programs: %v", err)
		}
		id = next
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			if info, err := p.Info(); err == nil {
				k.progs[id] = info.Name
			}
			p.Close()
		}
	}
	for id := ebpf.MapID(0); ; {
		next, err := ebpf.MapGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			t.Fatalf("list maps: %v", err)
		}
		id = next
		if m, err := ebpf.NewMapFromID(id); err == nil {
			if info, err := m.Info(); err == nil {
				k.maps[id] = info.Name
			}
			m.Close()
		}
	}
	var it link.Iterator
	for it.Next() {
		if info, err := it.Link.Info(); err == nil {
			k.links[it.ID] = info.Program
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("list links: %v", err)
	}
	return k
}

// TestRemoveLeavesNothing enrolls a pod, restarts the Capture, removes it
// and checks the kernel's object lists and the pin directory.
func TestRemoveLeavesNothing(t *testing.T) {
	t.Run("bpffs mounted by Open", func(t *testing.T) {
		testRemoveLeavesNothing(t, newTopo(t))
	})
	t.Run("existing bpffs", func(t *testing.T) {
		// Pins then only go away if Remove unpins them one by one.
		tp := newTopo(t)
		mnt := tp.pinDir
		if err := os.MkdirAll(mnt, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
			t.Fatalf("mount bpffs: %v", err)
		}
		tp.pinDir = filepath.Join(mnt, "mazu")
		testRemoveLeavesNothing(t, tp)
		entries, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			// maps.debug and progs.debug come with every bpffs instance.
			if !strings.HasSuffix(e.Name(), ".debug") {
				t.Errorf("bpffs %s holds %s after Remove, want nothing of ours", mnt, e.Name())
			}
		}
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
}

func testRemoveLeavesNothing(t *testing.T, tp *topo) {
	joinCgroup(t, tp.agentCg)
	before := listKernelObjects(t)

	// With every option on, so that every program and link is covered.
	opts := Options{PinDir: tp.pinDir, AgentCgroup: tp.agentCg, OriginalDstAsLocalAddr: true}
	c, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := c.Enroll(tp.pod1()); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	serve(t, listen(t, tp.pod, "tcp4", "127.0.0.1:15001"), func(net.Conn) string { return "out" })
	tp.runApp(helperSpec{Network: "tcp4", Addr: netip.AddrPortFrom(nodeIP4, appPort).String(), Count: 3})

	ours := ourObjects(t, c)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c, err = Open(opts)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	ours = mergeObjects(ours, ourObjects(t, c))
	if want := len(cgroupHooks) + 2 + 3; len(ours.links) != want {
		t.Fatalf("found %d links of the Capture, want %d", len(ours.links), want)
	}
	if err := c.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}

	// The kernel frees objects asynchronously after the last reference.
	var left []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		after := listKernelObjects(t)
		left = left[:0]
		for id := range ours.progs {
			if _, ok := after.progs[id]; ok {
				left = append(left, fmt.Sprintf("program %d (%s)", id, after.progs[id]))
			}
		}
		for id := range ours.maps {
			if _, ok := after.maps[id]; ok {
				left = append(left, fmt.Sprintf("map %d (%s)", id, after.maps[id]))
			}
		}
		for id := range ours.links {
			if _, ok := after.links[id]; ok {
				left = append(left, fmt.Sprintf("link %d", id))
			}
		}
		for id, name := range after.progs {
			if _, old := before.progs[id]; !old && strings.HasPrefix(name, "mzt_") {
				left = append(left, fmt.Sprintf("new program %d (%s)", id, name))
			}
		}
		for id, name := range after.maps {
			if _, old := before.maps[id]; !old && strings.HasPrefix(name, "mzt_") {
				left = append(left, fmt.Sprintf("new map %d (%s)", id, name))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) != 0 {
		t.Errorf("after Remove the kernel still has: %s", strings.Join(left, ", "))
	}
	// Keep the Capture reachable until here, so that garbage collection
	// cannot close handles that Remove leaked and hide the leak.
	runtime.KeepAlive(c)
	if _, err := os.Stat(tp.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory %s still exists after Remove (stat error %v)", tp.pinDir, err)
	}
}

// ourObjects collects the IDs of a Capture's programs, of every map they
// use (including .rodata) and of its links.
func ourObjects(t testing.TB, c *Capture) kernelObjects {
	t.Helper()
	k := kernelObjects{progs: map[ebpf.ProgramID]string{}, maps: map[ebpf.MapID]string{}, links: map[link.ID]ebpf.ProgramID{}}
	progs := []*ebpf.Program{c.objs.MztConnect4, c.objs.MztConnect6, c.objs.MztSockops, c.objs.MztGetsockopt,
		c.objs.MztGetpeer4, c.objs.MztGetpeer6, c.objs.MztTcIngress, c.objs.MztSkLookup,
		c.objs.MztGetsock4, c.objs.MztGetsock6, c.objs.MztAgentSock4, c.objs.MztAgentSock6}
	for _, p := range progs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		k.progs[id] = info.Name
		mapIDs, _ := info.MapIDs()
		for _, m := range mapIDs {
			k.maps[m] = ""
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var links []link.Link
	for _, p := range c.pods {
		for _, l := range p.links {
			links = append(links, l)
		}
	}
	for _, l := range c.agentLinks {
		links = append(links, l)
	}
	for _, l := range links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		k.links[info.ID] = info.Program
	}
	return k
}

func mergeObjects(a, b kernelObjects) kernelObjects {
	for id, v := range b.progs {
		a.progs[id] = v
	}
	for id, v := range b.maps {
		a.maps[id] = v
	}
	for id, v := range b.links {
		a.links[id] = v
	}
	return a
}

// TestUnenrollDepartedPod removes a pod's network namespace and cgroup
// while it is enrolled and the agent is down, as when a pod is deleted
// during an agent restart, then adopts and unenrolls it.
func TestUnenrollDepartedPod(t *testing.T) {
	tp := newTopo(t)
	c := tp.open()
	p := tp.pod1()
	if err := c.Enroll(p); err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	pods, err := c.Pods()
	if err != nil || len(pods) != 1 {
		t.Fatalf("Pods() = %+v, %v; want one pod", pods, err)
	}
	cookie := pods[0].NetnsCookie
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.Pods(); !errors.Is(err, ErrClosed) {
		t.Errorf("Pods() after Close: error %v, want ErrClosed", err)
	}
	if _, err := c.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats() after Close: error %v, want ErrClosed", err)
	}
	if err := c.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: error %v, want ErrClosed", err)
	}

	// The pod goes away: its namespace (and so its veth) and its cgroup.
	tp.pod.Close()
	tp.podFile.Close()
	if err := os.Remove(tp.podCgroup); err != nil {
		t.Fatalf("remove pod cgroup: %v", err)
	}

	c, err = Open(Options{PinDir: tp.pinDir, AgentCgroup: tp.agentCg})
	if err != nil {
		t.Fatalf("Open with a departed pod: %v", err)
	}
	t.Cleanup(func() { c.Remove() })
	pods, err = c.Pods()
	if err != nil || len(pods) != 1 || pods[0].ID != p.ID {
		t.Fatalf("Pods() after restart = %+v, %v; want the departed pod listed", pods, err)
	}
	if err := c.Unenroll(p.ID); err != nil {
		t.Fatalf("Unenroll departed pod: %v", err)
	}
	if n := mapEntriesOf(t, c, cookie); n != 0 {
		t.Errorf("%d map entries of the departed pod remain, want 0", n)
	}
	if entries, err := os.ReadDir(filepath.Join(tp.pinDir, podsDir)); err != nil || len(entries) != 0 {
		t.Errorf("pod pin directories after Unenroll: %v (error %v), want none", entries, err)
	}
}

const (
	modeDefaultPinDir = "default-pin-dir" // no bpffs on /sys/fs/bpf
	modeExistingBPFFS = "existing-bpffs"  // a bpffs already on /sys/fs/bpf
)

// TestDefaultPinDirMountsBPFFS opens a Capture with the default pin
// directory, once where /sys/fs/bpf has no bpffs and Open must mount it,
// and once where it has one and Open must use it without mounting again.
// Each case runs in a child process with its own mount namespace, which
// first sets /sys/fs/bpf up for the case: it unmounts any bpffs there, or
// mounts a new, empty bpffs instance. Neither change reaches the host, and
// a real agent's pins are never visible to the child.
func TestDefaultPinDirMountsBPFFS(t *testing.T) {
	privtest.Require(t)
	hostBPFFS, err := isBPFFS(standardBPFFS)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{modeDefaultPinDir, modeExistingBPFFS} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			spec, _ := json.Marshal(helperSpec{Mode: mode})
			cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("helper: %v", err)
			}
			var a attempt
			if err := json.Unmarshal(out, &a); err != nil || a.Reply != "ok" {
				t.Fatalf("default pin directory: %+v (output %q, error %v)", a, out, err)
			}
			if onBPF, _ := isBPFFS(standardBPFFS); onBPF != hostBPFFS {
				t.Errorf("%s holds bpffs = %v in the test's mount namespace after the helper exited, want %v as before", standardBPFFS, onBPF, hostBPFFS)
			}
		})
	}
}

// checkDefaultPinDir runs in the helper, in a mount namespace that Go made
// private, so mounts and unmounts stay inside it.
func checkDefaultPinDir(mode string) error {
	if err := prepareStandardBPFFS(mode == modeExistingBPFFS); err != nil {
		return err
	}
	mountsBefore, err := mountsAt(standardBPFFS)
	if err != nil {
		return err
	}

	c, err := Open(Options{})
	if err != nil {
		return err
	}
	if onBPF, err := isBPFFS(standardBPFFS); err != nil || !onBPF {
		return fmt.Errorf("%s is not bpffs after Open (error %v)", standardBPFFS, err)
	}
	mountsAfter, err := mountsAt(standardBPFFS)
	if err != nil {
		return err
	}
	wantMounts := mountsBefore + 1
	if mode == modeExistingBPFFS {
		wantMounts = mountsBefore
	}
	if mountsAfter != wantMounts {
		return fmt.Errorf("%d mounts on %s after Open, %d before; want %d", mountsAfter, standardBPFFS, mountsBefore, wantMounts)
	}
	if _, err := os.Stat(filepath.Join(DefaultPinDir, "mzt_pods")); err != nil {
		return fmt.Errorf("pinned map missing: %w", err)
	}
	if err := c.Remove(); err != nil {
		return err
	}
	if _, err := os.Stat(DefaultPinDir); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s still exists after Remove (stat error %v)", DefaultPinDir, err)
	}
	if n, err := mountsAt(standardBPFFS); err != nil || n != mountsAfter {
		return fmt.Errorf("%d mounts on %s after Remove (error %v), want %d: Remove must leave the standard mount", n, standardBPFFS, err, mountsAfter)
	}
	return nil
}

// prepareStandardBPFFS unmounts every bpffs on /sys/fs/bpf, then mounts a
// new bpffs instance there when existing is set.
func prepareStandardBPFFS(existing bool) error {
	for {
		onBPF, err := isBPFFS(standardBPFFS)
		if err != nil {
			return err
		}
		if !onBPF {
			break
		}
		if err := unix.Unmount(standardBPFFS, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", standardBPFFS, err)
		}
	}
	if !existing {
		return nil
	}
	if err := unix.Mount("bpf", standardBPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", standardBPFFS, err)
	}
	return nil
}

// mountsAt counts the entries of /proc/self/mountinfo whose mount point is
// dir.
func mountsAt(dir string) (int, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, fmt.Errorf("read mountinfo: %w", err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 && unescapeMountinfo(fields[4]) == dir {
			n++
		}
	}
	return n, nil
}

// TestSharedPinDir opens two Captures on one PinDir, as during a rolling
// update where the new agent starts before the old one stops. The second
// adopts the pinned links, the first keeps enrolling and unenrolling, then
// closes, and capture continues without a connection past the proxy.
func TestSharedPinDir(t *testing.T) {
	f := newFixture(t)
	first := f.cur.Load()
	second, err := Open(Options{PinDir: f.pinDir, AgentCgroup: f.agentCg})
	if err != nil {
		t.Fatalf("second Open on the same PinDir: %v", err)
	}
	f.cur.Store(second)
	checkCaptured(t, f, "after the second opened")
	if n := linksRunning(t, podPrograms(t, second)); n != len(cgroupHooks)+2 {
		t.Errorf("%d links run the second Capture's pod programs, want %d (one per hook)", n, len(cgroupHooks)+2)
	}

	// The first enrolls the pod again, while the second unenrolls it.
	if err := first.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll by the first Capture after the second opened: %v", err)
	}
	if err := second.Unenroll(f.pod1().ID); err != nil {
		t.Fatalf("Unenroll by the second Capture: %v", err)
	}
	// The first still holds the links that the second detached.
	if err := first.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll by the first Capture after the second unenrolled: %v", err)
	}
	if n := linksRunning(t, podPrograms(t, first)); n != len(cgroupHooks)+2 {
		t.Errorf("%d links run the first Capture's pod programs, want %d (one per hook)", n, len(cgroupHooks)+2)
	}

	closed := podPrograms(t, first)
	if err := first.Close(); err != nil {
		t.Fatalf("Close of the first Capture: %v", err)
	}
	checkCaptured(t, f, "after the first closed")

	// The second, which forgot the pod, enrolls it over the first's pins.
	if err := second.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll by the second Capture over the first's pins: %v", err)
	}
	checkCaptured(t, f, "after the second enrolled again")
	if n := linksRunning(t, podPrograms(t, second)); n != len(cgroupHooks)+2 {
		t.Errorf("%d links run the second Capture's pod programs, want %d (one per hook)", n, len(cgroupHooks)+2)
	}
	if n := linksRunning(t, closed); n != 0 {
		t.Errorf("%d links still run pod programs of the closed Capture, want 0", n)
	}
}

// checkCaptured dials out of the pod and into it, and checks that both
// connections went through the proxy and none reached an application.
func checkCaptured(t *testing.T, f *fixture, when string) {
	t.Helper()
	dst := netip.AddrPortFrom(nodeIP4, appPort)
	got := f.runApp(helperSpec{Network: "tcp4", Addr: dst.String()})
	wantReply(t, "outbound "+when, got, fmt.Sprintf("out %s %s", dst, dst))
	reply, err := dialIn(t, f.node, "tcp4", "", fmt.Sprintf("%s:%d", podIP4, appPort), 2*time.Second)
	if err != nil || !strings.HasPrefix(reply, "in ") {
		t.Errorf("inbound %s: reply %q, error %v; want the inbound proxy", when, reply, err)
	}
	if n := f.nodeApp.accepted() + f.podApp.accepted(); n != 0 {
		t.Errorf("%s: applications accepted %d connections past the proxy, want 0", when, n)
	}
}

// podPrograms returns the IDs of c's programs for pod hooks, keyed to their
// pin names. The agent-cgroup programs are left out: their links run the
// programs of the Capture that opened last.
func podPrograms(t *testing.T, c *Capture) map[ebpf.ProgramID]string {
	t.Helper()
	progs := map[ebpf.ProgramID]string{}
	pins := []string{tcxPin, skLookupPin}
	for _, h := range cgroupHooks {
		pins = append(pins, h.pin)
	}
	for _, pin := range pins {
		progs[progID(t, c.programFor(pin))] = pin
	}
	return progs
}

// linksRunning counts the links in the kernel whose program is in progs.
func linksRunning(t *testing.T, progs map[ebpf.ProgramID]string) int {
	t.Helper()
	n := 0
	var it link.Iterator
	for it.Next() {
		if info, err := it.Link.Info(); err == nil {
			if _, ok := progs[info.Program]; ok {
				n++
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("list links: %v", err)
	}
	return n
}

// TestOpenMigratesMapLayout restarts with pinned maps whose layout differs
// from this version's, as after an upgrade that changed them. A map of
// another value size cannot be migrated: Open fails and leaves the
// previous programs capturing. Maps that differ only in max_entries are
// copied into new maps while every link moves to the new programs, with
// no window in which a connection passes the proxy.
func TestOpenMigratesMapLayout(t *testing.T) {
	f := newFixture(t)
	old := f.cur.Load()
	checkCaptured(t, f, "before the restart")
	var tupleKey captureTupleKey
	var tupleVal captureOrigDst
	if it := old.objs.MztTuples.Iterate(); !it.Next(&tupleKey, &tupleVal) {
		t.Fatalf("no tuple entry after an outbound connection (error %v)", it.Err())
	}
	f.cur.Store(nil)
	if err := old.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// Another value size: Open must fail without touching anything.
	restore := repinWith(t, f.pinDir, "mzt_excl_port", func(ms *ebpf.MapSpec) { ms.ValueSize = 2 })
	if c, err := Open(Options{PinDir: f.pinDir, AgentCgroup: f.agentCg}); !errors.Is(err, ebpf.ErrMapIncompatible) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Open with a pinned map of another value size: error %v, want ErrMapIncompatible", err)
	}
	reply, err := dialIn(t, f.node, "tcp4", "", netip.AddrPortFrom(podIP4, appPort).String(), 2*time.Second)
	if err != nil || !strings.HasPrefix(reply, "in ") {
		t.Errorf("inbound after the failed Open: reply %q, error %v; want the inbound proxy", reply, err)
	}
	restore()

	// Other max_entries: Open migrates.
	repinWith(t, f.pinDir, "mzt_pods", func(ms *ebpf.MapSpec) { ms.MaxEntries = 1000 })
	repinWith(t, f.pinDir, "mzt_tuples", func(ms *ebpf.MapSpec) { ms.MaxEntries = 1024 })
	repinWith(t, f.pinDir, "mzt_tw_steer", func(ms *ebpf.MapSpec) { ms.MaxEntries = 128 })
	c, err := Open(Options{PinDir: f.pinDir, AgentCgroup: f.agentCg})
	if err != nil {
		t.Fatalf("Open with pinned maps of other max_entries: %v", err)
	}
	f.cur.Store(c)
	checkCaptured(t, f, "after the migration, before Enroll")

	for name, want := range map[string]uint32{"mzt_pods": 4096, "mzt_tuples": 65536, "mzt_tw_steer": 4096} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(f.pinDir, name), nil)
		if err != nil {
			t.Fatalf("load pinned %s: %v", name, err)
		}
		if got := m.MaxEntries(); got != want {
			t.Errorf("pinned %s has max_entries %d, want this version's %d", name, got, want)
		}
		m.Close()
	}
	var got captureOrigDst
	if err := c.objs.MztTuples.Lookup(&tupleKey, &got); err != nil || got != tupleVal {
		t.Errorf("tuple entry after migration: %+v, error %v; want %+v copied", got, err, tupleVal)
	}
	if pods, err := c.Pods(); err != nil || len(pods) != 1 {
		t.Errorf("Pods() after migration = %+v, %v; want the adopted pod", pods, err)
	}
	if n := linksRunning(t, podPrograms(t, c)); n != len(cgroupHooks)+2 {
		t.Errorf("%d links run the new pod programs, want %d", n, len(cgroupHooks)+2)
	}
	if err := c.Enroll(f.pod1()); err != nil {
		t.Fatalf("Enroll after migration: %v", err)
	}
	checkCaptured(t, f, "after the migration and Enroll")
}

// repinWith replaces the map pinned at pinDir/name with a new map of the
// pinned one's layout changed by change, holding a copy of its entries when
// the layout allows. The links keep using the replaced map. The returned
// function pins the replaced map again.
func repinWith(t *testing.T, pinDir, name string, change func(*ebpf.MapSpec)) func() {
	t.Helper()
	path := filepath.Join(pinDir, name)
	prev, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatalf("load pinned %s: %v", name, err)
	}
	t.Cleanup(func() { prev.Close() })

	info, err := prev.Info()
	if err != nil {
		t.Fatal(err)
	}
	ms := &ebpf.MapSpec{Name: name, Type: prev.Type(), KeySize: prev.KeySize(), ValueSize: prev.ValueSize(),
		MaxEntries: prev.MaxEntries(), Flags: info.Flags}
	change(ms)
	repl, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatalf("create %s with another layout: %v", name, err)
	}
	defer repl.Close()

	if ms.KeySize == prev.KeySize() && ms.ValueSize == prev.ValueSize() && prev.Type() != ebpf.SockHash {
		if _, err := copyMap(prev, repl); err != nil {
			t.Fatalf("copy %s: %v", name, err)
		}
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := repl.Pin(path); err != nil {
		t.Fatalf("pin %s: %v", name, err)
	}
	return func() {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := prev.Pin(path); err != nil {
			t.Fatalf("pin %s again: %v", name, err)
		}
	}
}
