package perf

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// renderNoise writes the noise rows of the machine and run table, the
// notes, and the table of CPU use and load by round.
func (res *Results) renderNoise(w func(string, ...any)) {
	c := res.Config
	nproc := max(res.Machine.NProc, 1)
	loadLo, loadHi := math.Inf(1), math.Inf(-1)
	var outside, steal []float64
	for _, bl := range res.Blocks {
		loadLo = math.Min(loadLo, math.Min(bl.LoadBefore[0], bl.LoadAfter[0]))
		loadHi = math.Max(loadHi, math.Max(bl.LoadBefore[0], bl.LoadAfter[0]))
		if bl.CPU != nil {
			outside = append(outside, bl.CPU.OutsideVCPU)
			steal = append(steal, bl.CPU.StealVCPU)
		}
	}
	if len(res.Blocks) > 0 {
		w("| load average (1 min) | %.2f–%.2f over all blocks, recorded before and after each block but not gated: the suite's own processes drive it, and it averages over the last minute |\n", loadLo, loadHi)
	}
	if len(outside) > 0 {
		slices.Sort(outside)
		w("| CPU outside the suite | median %.2f vCPU per block, max %.2f; steal max %.2f vCPU (busy, suite, outside and steal vCPU and the %d busiest outside processes of each block are in the JSON) |\n",
			quantileSorted(outside, 0.5), outside[len(outside)-1], slices.Max(steal), topOutsideCount)
	}
	if busiest := busiestOutside(res.Blocks, topOutsideCount); busiest != "" {
		w("| busiest outside processes | %s, over all blocks |\n", busiest)
	}
	if c.MaxOutsideVCPU > 0 || c.MaxStealShare > 0 {
		w("| noise gate | a block is dropped when the CPU time used outside the suite's processes during it (busy time from /proc/stat minus the /proc/<pid>/stat times of the suite and its descendants, so other processes, kernel threads and steal) averages more than %.2f vCPU (%.1f%% of these %d CPUs), or steal alone more than %.0f%% of the machine (%.2f vCPU); ratios then skip that round for that variant |\n",
			c.MaxOutsideVCPU, 100*c.MaxOutsideVCPU/float64(nproc), nproc, 100*c.MaxStealShare, c.MaxStealShare*float64(nproc))
	} else {
		w("| noise gate | off |\n")
	}

	reasons := map[string]int{}
	var dropped int
	for _, bl := range res.Blocks {
		if bl.Dropped {
			dropped++
			reasons[bl.DropReason]++
		}
	}
	w("| dropped blocks | %d of %d", dropped, len(res.Blocks))
	if dropped > 0 {
		w(": %d for outside CPU, %d for steal, %d with CPU not measured", reasons[dropOutside], reasons[dropSteal], reasons[dropUnmeasured])
		if n := dropped - reasons[dropOutside] - reasons[dropSteal] - reasons[dropUnmeasured]; n > 0 {
			w(", %d by an earlier gate rule (see drop_reason in the JSON)", n)
		}
		w("; by variant: %s", droppedByVariant(res.Blocks, c.Rounds))
	}
	w(" |\n")
	var errBlocks int
	for _, bl := range res.Blocks {
		if len(bl.Errors) > 0 {
			errBlocks++
		}
	}
	w("| blocks with errors | %d of %d |\n", errBlocks, len(res.Blocks))

	notes := res.Notes
	if dropped > 0 && 2*dropped >= len(res.Blocks) {
		note := fmt.Sprintf("the noise gate dropped %d of %d blocks", dropped, len(res.Blocks))
		if lo, hi, ok := droppedOutsideRange(res.Blocks); ok {
			note += fmt.Sprintf(", in which CPU use outside the suite was %.2f–%.2f vCPU", lo, hi)
		}
		notes = append(notes, note+". Most figures below are therefore missing, and goals without kept rounds read inconclusive; rerun on a quieter machine for verdicts.")
	}
	for _, n := range notes {
		w("\nNote: %s\n", n)
	}

	w("\n### CPU use and load by round\n\n")
	w("| round | outside vCPU per block (min–max) | steal vCPU per block (max) | 1-min load before/after blocks (min–max) | blocks with errors | dropped blocks |\n|---|---|---|---|---|---|\n")
	for r := range c.Rounds {
		res.renderNoiseRound(w, r)
	}
}

// renderNoiseRound writes round r's row of the CPU use and load table.
func (res *Results) renderNoiseRound(w func(string, ...any), r int) {
	loadLo, loadHi := math.Inf(1), math.Inf(-1)
	outLo, outHi, stealHi := math.Inf(1), math.Inf(-1), math.Inf(-1)
	var errs, drops int
	seen := false
	for _, bl := range res.Blocks {
		if bl.Round != r {
			continue
		}
		seen = true
		loadLo = math.Min(loadLo, math.Min(bl.LoadBefore[0], bl.LoadAfter[0]))
		loadHi = math.Max(loadHi, math.Max(bl.LoadBefore[0], bl.LoadAfter[0]))
		if bl.CPU != nil {
			outLo, outHi = math.Min(outLo, bl.CPU.OutsideVCPU), math.Max(outHi, bl.CPU.OutsideVCPU)
			stealHi = math.Max(stealHi, bl.CPU.StealVCPU)
		}
		if len(bl.Errors) > 0 {
			errs++
		}
		if bl.Dropped {
			drops++
		}
	}
	if !seen {
		return
	}
	outside, steal := "–", "–"
	if !math.IsInf(outHi, -1) {
		outside, steal = fmt.Sprintf("%.2f–%.2f", outLo, outHi), fmt.Sprintf("%.2f", stealHi)
	}
	w("| %d | %s | %s | %.2f–%.2f | %d | %d |\n", r, outside, steal, loadLo, loadHi, errs, drops)
}

// droppedOutsideRange returns the lowest and highest outside CPU of the
// dropped blocks that have a CPU measurement.
func droppedOutsideRange(blocks []Block) (lo, hi float64, ok bool) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, bl := range blocks {
		if bl.Dropped && bl.CPU != nil {
			lo, hi, ok = math.Min(lo, bl.CPU.OutsideVCPU), math.Max(hi, bl.CPU.OutsideVCPU), true
		}
	}
	return lo, hi, ok
}

// busiestOutside names the n outside processes with the most CPU time over
// all blocks, by command name, from each block's busiest list.
func busiestOutside(blocks []Block, n int) string {
	cpu := map[string]float64{}
	count := map[string]int{}
	for _, bl := range blocks {
		if bl.CPU == nil {
			continue
		}
		for _, p := range bl.CPU.TopOutside {
			cpu[p.Comm] += p.VCPU * bl.CPU.Seconds
			count[p.Comm]++
		}
	}
	names := sortedKeys(cpu)
	slices.SortStableFunc(names, func(a, b string) int {
		switch {
		case cpu[a] > cpu[b]:
			return -1
		case cpu[a] < cpu[b]:
			return 1
		}
		return 0
	})
	var parts []string
	for _, name := range names[:min(n, len(names))] {
		blocks := "blocks"
		if count[name] == 1 {
			blocks = "block"
		}
		parts = append(parts, fmt.Sprintf("%s %.2f CPU-s in %d %s", name, cpu[name], count[name], blocks))
	}
	return strings.Join(parts, "; ")
}
