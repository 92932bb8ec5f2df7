package curatortest

import (
	"log/slog"
	"os"
	"testing"
)

func mkdir(p string) error { return os.MkdirAll(p, 0o700) }

// TestLogger returns a logger that writes to the test log.
func TestLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.F); ok {
		// A fuzz target may not call F.Log.
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tlogWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ tb testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p))
	return len(p), nil
}
