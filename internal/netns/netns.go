// Package netns runs code inside a Linux network namespace from a process
// that lives in another one, such as a node agent opening listeners in pods.
//
// A network namespace belongs to an OS thread, not to a process. Do locks a
// fresh goroutine to its thread, switches that thread into the target
// namespace, runs the function and switches back. Sockets keep the namespace
// they were created in, so a listener or connection made inside Do can be used
// from any goroutine afterwards.
//
// Switching needs CAP_SYS_ADMIN (setns(2) with CLONE_NEWNET).
package netns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// NS is an open handle on a network namespace. Close releases it.
type NS struct {
	f *os.File
}

// Open opens the namespace at path, such as /var/run/netns/<name> or
// /proc/<pid>/ns/net.
func Open(path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return &NS{f: f}, nil
}

// FromFile wraps an already open namespace file, such as one received over
// a Unix socket. NS takes ownership of f.
func FromFile(f *os.File) *NS { return &NS{f: f} }

// Close releases the handle.
func (ns *NS) Close() error { return ns.f.Close() }

// String returns the namespace's path.
func (ns *NS) String() string { return ns.f.Name() }

// Do runs fn on an OS thread switched into ns and returns fn's error. The
// calling goroutine's own thread is never switched. If the thread cannot be
// switched back, it is discarded rather than returned to the scheduler.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", ns.f.Name(), err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked; it exits with this goroutine.
			errc <- fmt.Errorf("return from network namespace %s: %w", ns.f.Name(), err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Do runs fn inside the namespace at path; see NS.Do.
func Do(path string, fn func() error) error {
	ns, err := Open(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}
