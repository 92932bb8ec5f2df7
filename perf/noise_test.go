package perf

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// Sample text in the format of Linux 6.x, with fewer interrupt counters.
const sampleProcStat = `cpu  439612 26849 98759 256891 1824 12 6133 307 0 0
cpu0 218388 13774 49209 130223 533 6 2859 157 0 0
cpu1 221224 13075 49550 126668 1291 6 3274 150 0 0
intr 51213409 0 9 0 0 0 0 0 0 0 0
ctxt 98034512
btime 1767225600
processes 431207
procs_running 3
procs_blocked 0
softirq 10482111 1 2843412 3 1251342 0 0 1734 3180471 0 3205148
`

// writeProc writes a /proc tree with /proc/stat and one stat file per
// PID into a temporary folder.
func writeProc(t *testing.T, stat string, pids map[int]string) procfs.FS {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	for pid, text := range pids {
		pd := filepath.Join(dir, strconv.Itoa(pid))
		if err := os.Mkdir(pd, 0o755); err != nil {
			t.Fatal(err)
		}
		if text == "" {
			continue // a process that exited after /proc was listed
		}
		if err := os.WriteFile(filepath.Join(pd, "stat"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pfs, err := procfs.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	return pfs
}

func TestProcStatParsers(t *testing.T) {
	pfs := writeProc(t, sampleProcStat, map[int]string{
		1: "1 (process_api) S 0 0 0 0 -1 4194560 72827 209176374 0 15887 365 1712 381406 93240 10 -10 19 0 25 52199424 2864 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		// A command name with a space and a closing parenthesis.
		4242: "4242 (tmux: a) b) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 4 0 417673 3133440 414 18446744073709551615 94101663322112 94101663341993 140723313763504 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94101663358000 94101663359616 94102120816640 140723313765059 140723313765079 140723313765079 140723313766379 0\n",
		5000: "",
	})

	busy, steal, err := cpuTotals(pfs)
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal of the "cpu" line, in 1/100 s.
	if want := float64(439612+26849+98759+12+6133+307) / 100; math.Abs(busy-want) > 1e-9 {
		t.Errorf("busy %v s, want %v", busy, want)
	}
	if math.Abs(steal-3.07) > 1e-9 {
		t.Errorf("steal %v s, want 3.07", steal)
	}

	s, err := sampleCPU(pfs)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.procs) != 2 {
		t.Errorf("sampled %d processes, want 2 (PID 5000 has no stat file)", len(s.procs))
	}
	p, ok := s.procs[4242]
	if !ok {
		t.Fatalf("PID 4242 missing from %v", s.procs)
	}
	if p.comm != "tmux: a) b" {
		t.Errorf("comm %q, want %q", p.comm, "tmux: a) b")
	}
	if p.ppid != 1 {
		t.Errorf("ppid %d, want 1", p.ppid)
	}
	if math.Abs(p.self-3.0) > 1e-9 {
		t.Errorf("utime+stime %v s, want 3.0", p.self)
	}
	if math.Abs(p.children-0.1) > 1e-9 {
		t.Errorf("cutime+cstime %v s, want 0.1", p.children)
	}
	if p.start != 417673 {
		t.Errorf("start time %d ticks, want 417673", p.start)
	}
	if got := s.procs[1].total(); math.Abs(got-(365+1712+381406+93240)/100.0) > 1e-9 {
		t.Errorf("PID 1 total %v s, want its four times summed", got)
	}

	bad := writeProc(t, sampleProcStat, map[int]string{7: "7 no parentheses\n"})
	if _, err := sampleCPU(bad); err == nil {
		t.Errorf("malformed /proc/7/stat: no error")
	}
	if _, _, err := cpuTotals(writeProc(t, "cpu  x y z\n", nil)); err == nil {
		t.Errorf("malformed /proc/stat: no error")
	}
}

func TestBlockCPUSeparatesSuite(t *testing.T) {
	const suite = 100
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	before := cpuSample{at: t0, busy: 1000, steal: 10, procs: map[int]procCPU{
		1:     {ppid: 0, comm: "init", start: 1, self: 50},
		suite: {ppid: 1, comm: "mazu-perf", start: 500, self: 20, children: 5},
		200:   {ppid: suite, comm: "mazu-perf", start: 600, self: 30},  // proxy
		300:   {ppid: suite, comm: "mazu-perf", start: 900, self: 1},   // load generator, exits during the block
		500:   {ppid: 1, comm: "cc1", start: 700, self: 10},            // outside
		600:   {ppid: 1, comm: "old", start: 100, self: 90},            // exits; its PID is reused
		700:   {ppid: 2, comm: "kworker/0:1", start: 2, self: 3},       // kernel thread
		800:   {ppid: 1, comm: "sshd", start: 3, self: 4, children: 1}, // idle
		// A test script whose test binary and its helper exit during the
		// block: the script's cutime gains all of their CPU time.
		900: {ppid: 1, comm: "run.sh", start: 800, self: 1},
		901: {ppid: 900, comm: "x.test", start: 810, self: 50},
		902: {ppid: 901, comm: "helper", start: 820, self: 5},
	}}
	after := cpuSample{at: t0.Add(4 * time.Second), busy: 1009.6, steal: 10.2, procs: map[int]procCPU{
		1: {ppid: 0, comm: "init", start: 1, self: 50},
		// The load generator used 2.5 s and was waited for: 1 s before the
		// block, 1.5 s during it.
		suite: {ppid: 1, comm: "mazu-perf", start: 500, self: 21, children: 7.5},
		200:   {ppid: suite, comm: "mazu-perf", start: 600, self: 33},
		400:   {ppid: suite, comm: "etcd", start: 1000, self: 0.5}, // started during the block
		500:   {ppid: 1, comm: "cc1", start: 700, self: 11.2},
		600:   {ppid: 1, comm: "new", start: 1100, self: 0.4},
		700:   {ppid: 2, comm: "kworker/0:1", start: 2, self: 3.2},
		800:   {ppid: 1, comm: "sshd", start: 3, self: 4, children: 1},
		// x.test used 1.2 s and its helper 0.4 s during the block.
		900: {ppid: 1, comm: "run.sh", start: 800, self: 1, children: 51.2 + 5.4},
	}}
	got, err := blockCPU(before, after, suite)
	if err != nil {
		t.Fatal(err)
	}
	// Suite: root 1 + 2.5 waited-for children − the load generator's 1
	// before the block + proxy 3 + etcd 0.5 = 6 s over 4 s.
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"seconds", got.Seconds, 4},
		{"busy vCPU", got.BusyVCPU, 2.4},
		{"suite vCPU", got.SuiteVCPU, 1.5},
		{"outside vCPU", got.OutsideVCPU, 0.9},
		{"steal vCPU", got.StealVCPU, 0.05},
	} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	// run.sh is charged 1.6 s, not the 56.6 s its cutime gained. PID 600
	// counts whole, because its start time shows a new process. The
	// kworker's 0.05 vCPU is fourth, and sshd and init used nothing.
	want := []OutsideProc{{900, "run.sh", 0.4}, {500, "cc1", 0.3}, {600, "new", 0.1}}
	if len(got.TopOutside) != len(want) {
		t.Fatalf("busiest outside processes %+v, want %+v", got.TopOutside, want)
	}
	for i := range want {
		g := got.TopOutside[i]
		if g.PID != want[i].PID || g.Comm != want[i].Comm || math.Abs(g.VCPU-want[i].VCPU) > 1e-9 {
			t.Errorf("busiest outside process %d: got %+v, want %+v", i, g, want[i])
		}
	}

	if _, err := blockCPU(after, before, suite); err == nil {
		t.Errorf("samples in reverse order: no error")
	}
}
