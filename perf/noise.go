package perf

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// The noise gate measures CPU use outside the benchmark. The suite itself
// keeps both CPUs of a small machine busy, so the load average mostly
// reflects the suite's own previous blocks. What disturbs a block is the CPU
// that other processes and the hypervisor take while it runs. Around each
// block the suite reads the machine's busy time from /proc/stat and the CPU
// time of every process from /proc/<pid>/stat. Busy time minus the CPU time
// of the suite's own processes is the CPU used outside the suite.

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. It is
// 100 on every architecture Go supports on Linux, and procfs converts
// /proc/stat with the same constant.
const clockTicks = 100

// maxScannedProcs bounds the processes read from /proc per sample.
const maxScannedProcs = 10000

// topOutsideCount is how many of the busiest outside processes a block
// records.
const topOutsideCount = 3

// procCPU is one process's CPU time from /proc/<pid>/stat, in seconds.
type procCPU struct {
	ppid int
	comm string
	// start is the start time in ticks after boot, which distinguishes a
	// reused PID from the process that had it before.
	start uint64
	// self is utime+stime, summed over the process's threads.
	self float64
	// children is cutime+cstime: the CPU time of children that exited and
	// were waited for by this process.
	children float64
}

func (p procCPU) total() float64 { return p.self + p.children }

// cpuSample is the machine's CPU time and every process's at one instant.
type cpuSample struct {
	at time.Time
	// busy is the CPU time summed over all CPUs outside idle and iowait:
	// user, nice, system, irq, softirq and steal, in seconds. Guest time is
	// already part of user and nice.
	busy  float64
	steal float64
	procs map[int]procCPU
}

// cpuTotals reads the summed "cpu" line of /proc/stat.
func cpuTotals(pfs procfs.FS) (busy, steal float64, err error) {
	st, err := pfs.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	t := st.CPUTotal
	return t.User + t.Nice + t.System + t.IRQ + t.SoftIRQ + t.Steal, t.Steal, nil
}

// readProcCPU reads the CPU times of one process. It returns false for a
// process that exited after /proc was listed.
func readProcCPU(p procfs.Proc) (procCPU, bool, error) {
	st, err := p.Stat()
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return procCPU{}, false, nil
	}
	if err != nil {
		return procCPU{}, false, fmt.Errorf("read /proc/%d/stat: %w", p.PID, err)
	}
	return procCPU{
		ppid:     st.PPID,
		comm:     st.Comm,
		start:    st.Starttime,
		self:     float64(st.UTime+st.STime) / clockTicks,
		children: float64(st.CUTime+st.CSTime) / clockTicks,
	}, true, nil
}

// sampleCPU reads /proc/stat and the stat file of up to maxScannedProcs
// processes.
func sampleCPU(pfs procfs.FS) (cpuSample, error) {
	s := cpuSample{at: time.Now()}
	var err error
	if s.busy, s.steal, err = cpuTotals(pfs); err != nil {
		return s, err
	}
	procs, err := pfs.AllProcs()
	if err != nil {
		return s, fmt.Errorf("list processes in /proc: %w", err)
	}
	if len(procs) > maxScannedProcs {
		// NOTE: a machine with more processes has the rest counted as
		// outside CPU without a name in the busiest list.
		procs = procs[:maxScannedProcs]
	}
	s.procs = make(map[int]procCPU, len(procs))
	for _, p := range procs {
		pc, ok, err := readProcCPU(p)
		if err != nil {
			return s, err
		}
		if ok {
			s.procs[p.PID] = pc
		}
	}
	return s, nil
}

// suitePIDs returns root and its descendants in s. The suite starts every
// proxy, server and load generator through `ip netns exec`, which execs the
// suite binary in place, so they are its children. The testbed's etcd and
// kube-apiserver are its children too.
func suitePIDs(s cpuSample, root int) map[int]bool {
	kids := map[int][]int{}
	for pid, p := range s.procs {
		kids[p.ppid] = append(kids[p.ppid], pid)
	}
	own := map[int]bool{root: true}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, k := range kids[pid] {
			if !own[k] {
				own[k] = true
				queue = append(queue, k)
			}
		}
	}
	return own
}

// suiteCPU is the CPU time of the suite's processes in s: their own and
// that of their children that exited, so that a load generator that ran
// and was waited for within a block still counts.
func suiteCPU(s cpuSample, own map[int]bool) float64 {
	var sum float64
	for pid := range own {
		sum += s.procs[pid].total()
	}
	return sum
}

// BlockCPU is the machine's CPU use during one block, in vCPU: CPU-seconds
// per second of the block, summed over all CPUs.
type BlockCPU struct {
	// Seconds is the time between the two samples.
	Seconds float64 `json:"seconds"`
	// BusyVCPU is all CPU time outside idle and iowait, steal included.
	BusyVCPU float64 `json:"busy_vcpu"`
	// SuiteVCPU is the suite process and its descendants.
	SuiteVCPU float64 `json:"suite_vcpu"`
	// OutsideVCPU is BusyVCPU − SuiteVCPU: other processes, kernel threads
	// and steal. Tick sampling in /proc/stat can make it slightly negative.
	OutsideVCPU float64 `json:"outside_vcpu"`
	StealVCPU   float64 `json:"steal_vcpu"`
	// TopOutside lists the busiest processes outside the suite during the
	// block, busiest first.
	TopOutside []OutsideProc `json:"top_outside,omitempty"`
}

// OutsideProc is one process outside the suite and its CPU use during a
// block, children it waited for included.
type OutsideProc struct {
	PID  int     `json:"pid"`
	Comm string  `json:"comm"`
	VCPU float64 `json:"vcpu"`
}

// blockCPU compares the samples taken before and after a block. root is
// the suite's PID.
func blockCPU(before, after cpuSample, root int) (BlockCPU, error) {
	secs := after.at.Sub(before.at).Seconds()
	if secs <= 0 {
		return BlockCPU{}, fmt.Errorf("invalid CPU samples: the second was taken %s after the first, expected a positive interval", after.at.Sub(before.at))
	}
	ownBefore, ownAfter := suitePIDs(before, root), suitePIDs(after, root)
	busy := after.busy - before.busy
	suite := suiteCPU(after, ownAfter) - suiteCPU(before, ownBefore)
	b := BlockCPU{
		Seconds:     secs,
		BusyVCPU:    busy / secs,
		SuiteVCPU:   suite / secs,
		OutsideVCPU: (busy - suite) / secs,
		StealVCPU:   (after.steal - before.steal) / secs,
	}
	exited := exitedBefore(before, after)
	for pid, p := range after.procs {
		if ownAfter[pid] {
			continue
		}
		used := p.total() - exited[pid]
		if q, ok := before.procs[pid]; ok && q.start == p.start {
			used -= q.total()
		}
		if used > 0 {
			b.TopOutside = append(b.TopOutside, OutsideProc{PID: pid, Comm: p.comm, VCPU: used / secs})
		}
	}
	slices.SortFunc(b.TopOutside, func(x, y OutsideProc) int {
		if x.VCPU != y.VCPU {
			if x.VCPU > y.VCPU {
				return -1
			}
			return 1
		}
		return x.PID - y.PID
	})
	if len(b.TopOutside) > topOutsideCount {
		b.TopOutside = b.TopOutside[:topOutsideCount]
	}
	return b, nil
}

// exitedBefore maps each process in after to the CPU time, as of before,
// of its descendants that exited between the samples. A parent's cutime
// and cstime gain a waited-for child's whole CPU time, so this part, used
// before the block, is taken off the parent's use during the block.
func exitedBefore(before, after cpuSample) map[int]float64 {
	alive := func(pid int) bool {
		p, ok := after.procs[pid]
		return ok && p.start == before.procs[pid].start
	}
	out := map[int]float64{}
	for pid, p := range before.procs {
		if alive(pid) {
			continue
		}
		// Charge the nearest ancestor that is still alive, which waited for
		// this process or for the exited process in between. The bound
		// stops a loop of reused PIDs.
		for ancestor, hops := p.ppid, 0; hops < 64; hops++ {
			a, ok := before.procs[ancestor]
			if !ok {
				break
			}
			if alive(ancestor) {
				out[ancestor] += p.total()
				break
			}
			ancestor = a.ppid
		}
	}
	return out
}

// Drop reasons of the noise gate.
const (
	dropOutside    = "outside CPU"
	dropSteal      = "steal"
	dropUnmeasured = "CPU not measured"
)

// gateReason returns why the noise gate drops b, or "" to keep it. Steal
// is checked first because OutsideVCPU includes it.
func (res *Results) gateReason(b Block) string {
	c := res.Config
	if c.MaxOutsideVCPU <= 0 && c.MaxStealShare <= 0 {
		return ""
	}
	switch {
	case b.CPU == nil:
		return dropUnmeasured
	case c.MaxStealShare > 0 && b.CPU.StealVCPU > c.MaxStealShare*float64(max(res.Machine.NProc, 1)):
		return dropSteal
	case c.MaxOutsideVCPU > 0 && b.CPU.OutsideVCPU > c.MaxOutsideVCPU:
		return dropOutside
	}
	return ""
}
