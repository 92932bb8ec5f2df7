package main

import (
	"context"
	"errors"
	"flag"
	"testing"
)

// TestHelpWithInvalidEnvironment checks that -h prints help even when an
// environment variable holds an invalid value.
func TestHelpWithInvalidEnvironment(t *testing.T) {
	getenv := func(name string) string {
		if name == "POOL_UNUSED_RELEASE_TIMEOUT" || name == "MAZU_ISTIOD_COMPAT" {
			return "invalid"
		}
		return ""
	}
	if err := run(context.Background(), []string{"-h"}, getenv); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run -h = %v, want flag.ErrHelp", err)
	}
}
