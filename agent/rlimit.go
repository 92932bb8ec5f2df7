package agent

import (
	"fmt"
	"log/slog"
	"syscall"
)

// raiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit. Every
// proxied connection holds about two descriptors in the agent (the
// captured or upstream socket and its share of an HBONE connection), so a
// node's pods quickly exceed the common soft default of 1024. Go's os
// package already raises the limit when the program starts. Doing it here
// also covers a limit lowered since then, as when the agent runs inside
// another program, and puts the values in the log. A failure is logged, and
// the agent runs with the limit it has.
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("open file limit unknown", "error", fmt.Errorf("get RLIMIT_NOFILE: %w", err))
		return
	}
	old := lim.Cur
	if old >= lim.Max {
		log.Info("open file limit already at its maximum", "soft", old, "hard", lim.Max)
		return
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("open file limit not raised", "soft", old, "hard", lim.Max, "error", fmt.Errorf("set RLIMIT_NOFILE: %w", err))
		return
	}
	log.Info("raised open file limit", "old_soft", old, "new_soft", lim.Cur, "hard", lim.Max)
}
