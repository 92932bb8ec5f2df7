package bpf

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on a locked OS thread that has joined the network
// namespace behind nsFD, then returns the thread to its own namespace.
// Sockets that fn creates stay in nsFD's namespace, and interface indexes
// resolve there. When the thread cannot return, it stays locked, so the Go
// runtime discards it when the goroutine exits.
func inNetns(nsFD int, fn func() error) error {
	runtime.LockOSThread()

	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer self.Close()

	if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	fnErr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("return to own network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// netnsCookie returns the cookie of the calling thread's network namespace,
// the value bpf_get_netns_cookie reports there.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	return c, nil
}
