package netns

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/internal/privtest"
	"golang.org/x/sys/unix"
)

func inode(tb testing.TB, path string) uint64 {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		tb.Fatal(err)
	}
	return st.Ino
}

func TestDo(t *testing.T) {
	privtest.Require(t)
	var r [3]byte
	_, _ = rand.Read(r[:])
	name := "mzt-tun-" + hex.EncodeToString(r[:]) + "n"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns, err := Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	hostIno := inode(t, "/proc/thread-self/ns/net")
	var inside uint64
	var ln net.Listener
	err = ns.Do(func() error {
		inside = inode(t, "/proc/thread-self/ns/net")
		var err error
		// Loopback is down in a new namespace; listening still works.
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	defer ln.Close()
	if inside != inode(t, "/run/netns/"+name) {
		t.Fatalf("fn ran in namespace inode %d, want %d", inside, inode(t, "/run/netns/"+name))
	}
	if got := inode(t, "/proc/thread-self/ns/net"); got != hostIno {
		t.Fatalf("caller's namespace changed to %d, want %d", got, hostIno)
	}
	// Many calls must leave every scheduler thread in the host namespace.
	for i := 0; i < 50; i++ {
		if err := ns.Do(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
		if got := inode(t, "/proc/thread-self/ns/net"); got != hostIno {
			t.Fatalf("after %d calls this thread is in namespace %d, want %d", i+1, got, hostIno)
		}
	}
	if _, err := Open("/run/netns/mzt-tun-missing"); !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("Open(missing) error = %v, want not-exist", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
