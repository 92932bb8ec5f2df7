// Package bpf captures pod traffic for mazu-ztunnel with eBPF, in place of
// istio-cni's in-pod iptables rules.
//
// # Outbound
//
// cgroup/connect4 and cgroup/connect6 programs on the pod's cgroup rewrite
// TCP connects to the in-pod outbound listener (127.0.0.1:15001, [::1]:15001;
// ::ffff:127.0.0.1 for IPv4 on dual-stack sockets) and keep the original
// destination in socket storage. The listener must live in the pod's network
// namespace, because the rewritten connect is routed there. A sockops
// program publishes the original destination under the connection's
// namespace cookie and 4-tuple when the connection is established, which
// happens before the proxy's accept returns. The proxy reads it with
// Capture.OriginalDst, or with getsockopt(SO_ORIGINAL_DST) through
// SockoptOriginalDst when Options.AgentCgroup is set. The cheapest way is
// Options.OriginalDstAsLocalAddr: a getsockname program on the agent's
// cgroup then returns the original destination in the getsockname call
// that Go makes on every accept, so conn.LocalAddr() holds it, and
// Capture.OriginalDst returns it with no system call. getpeername4 and
// getpeername6 programs show the application its real peer, and
// getsockname4 and getsockname6 the pod's address instead of a loopback
// one (the port stays the loopback connection's).
//
// Never captured: sockets carrying the agent's mark (SO_MARK 0x539/0xfff by
// default), connects from the agent's cgroup, loopback and the pod's own
// addresses, and the excluded CIDRs and ports of the pod's Settings.
//
// # Inbound
//
// A tcx ingress program on the pod's interface assigns every new TCP
// connection to the inbound listener (15006), and connections to port 15008
// to the HBONE listener, with bpf_sk_assign. Packets are not rewritten, so
// the listener gets the client's address as the peer and the original
// destination as its local address. When the listener is missing, the SYN
// is dropped: an enrolled pod fails closed. Connections from the kubelet
// probe address (169.254.7.127 and its IPv6 counterpart by default) reach
// the application directly.
//
// TCP in IP fragments is dropped. The kernel reassembles fragments after tc,
// and an assignment made on a fragment is lost in reassembly, so a
// fragmented SYN would reach the application. The program drops every IPv4
// fragment with protocol TCP, every IPv6 fragment whose fragment header
// names TCP, and every first IPv6 fragment whose header chain ends in TCP.
// A later IPv6 fragment that names another protocol passes, because the
// reassembled packet takes the protocol of its first fragment. Packets
// whose IP, IPv6 extension or TCP header is truncated are dropped too, as
// are IPv6 packets with more than four extension headers before TCP.
//
// A client that reuses its port while the pod still holds the TIME_WAIT
// socket of an earlier proxied connection cannot be assigned in tc, because
// the kernel rejects the duplicate request socket. The tc program then
// stores the proxy listener in a sockhash under the connection's tuple, and
// an sk_lookup program on the pod's namespace hands it to the kernel when
// the TIME_WAIT socket ends. The kernel refuses MPTCP listeners in a
// sockhash, so the inbound listeners must be plain TCP
// (net.ListenConfig.SetMultipathTCP(false); Go creates MPTCP listeners by
// default). With an MPTCP listener such SYNs are dropped until the TIME_WAIT
// socket expires.
//
// # Lifecycle and pinning
//
// Open loads the programs once per agent. Maps and per-pod links are pinned
// under Options.PinDir (default /sys/fs/bpf/mazu-ztunnel). When that
// directory is not on bpffs, Open mounts bpffs on /sys/fs/bpf if the
// directory lies below it, and otherwise on the directory itself (tests use
// this for a private bpffs). For pins to outlive the agent's container,
// mount the host's /sys/fs/bpf into it.
// Close leaves the pins, so capture continues (failing closed while no
// listener exists); the next Open reuses the pinned maps and swaps its
// programs into the pinned links with an atomic link update. Two agents may
// share the pins during a handover (see Options.PinDir). Remove deletes
// everything. Cgroup paths are absolute or relative to the cgroup v2 mount,
// which Cgroup2Root finds in /proc/self/mountinfo (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on hybrid hosts).
//
// # Limits
//
//   - Only TCP is captured; UDP and DNS (port 15053) are not.
//   - An MPTCP client is captured through its first subflow, but its
//     getpeername shows the proxy (127.0.0.1:15001) and its getsockname a
//     loopback address, because the socket storage sits on the subflow.
//   - Inbound capture finds the pod by the SYN's destination address, from
//     the addresses the pod had at Enroll; SYNs to addresses added later are
//     dropped until the pod is enrolled again.
//   - Socket-storage entries of a departed pod's still-open sockets go away
//     with those sockets, not at Unenroll.
//   - Open migrates a pinned map whose max_entries or flags changed in an
//     upgrade. It creates the map anew and copies the entries. Then it gives
//     every pinned link the new programs with an atomic link update, and
//     only then pins the new map in place of the old one. A migrated socket
//     storage or TIME_WAIT steering map starts empty, because user space
//     cannot copy sockets. A connection whose connect and establishment
//     straddle the switch then has no original destination, and the proxy
//     closes it. A SYN that meets a TIME_WAIT socket while the tc and
//     sk_lookup links run different versions can reach the application.
//   - An upgrade that changes a pinned map's type, key size or value size
//     cannot be migrated: Open fails with ErrMapIncompatible and changes
//     nothing, so the previous version's programs keep capturing. Starting
//     over takes Capture.Remove and enrolling every pod again, and pods are
//     not captured in between.
//
// # Requirements
//
// Linux 6.6 or later (tcx; bpf_get_netns_cookie in tc programs), cgroup v2,
// and root: CAP_BPF, CAP_NET_ADMIN, and CAP_SYS_ADMIN for setns and mounting
// bpffs. The generated capture_bpfel.go and capture_bpfel.o are committed;
// regenerating them (go generate) needs Debian 12's clang 14, llvm,
// libbpf-dev and gcc-multilib.
package bpf
