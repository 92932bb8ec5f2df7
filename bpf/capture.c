// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//go:build ignore

// Traffic capture for pods enrolled in mazu-ztunnel. It replaces the in-pod
// iptables rules of istio-cni:
//
//   outbound: cgroup/connect4 and connect6 rewrite TCP connects to the in-pod
//   outbound listener and keep the original destination in socket storage;
//   sockops copies it into a tuple map when the connection is established;
//   cgroup/getsockopt returns SO_ORIGINAL_DST from that map; getpeername4 and
//   getpeername6 show the application its real peer.
//
//   inbound: a tcx ingress program on the pod's eth0 assigns new TCP
//   connections to the in-pod inbound listener (15006), or to the HBONE
//   listener (15008), with bpf_sk_assign. It drops them when the listener is
//   missing, so an enrolled pod fails closed, and it drops TCP in IP
//   fragments, which it cannot assign. An sk_lookup program on the
//   pod's namespace covers SYNs that meet a TIME_WAIT socket (mzt_tw_steer).
//
// The cgroup programs look their pod up by network namespace cookie; a
// socket in a namespace without a mzt_pods entry passes untouched. The tc
// program looks the pod up by the SYN's destination address. Only UAPI
// headers are used, so the object does not depend on the kernel's BTF.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MZT_AF_INET 2
#define MZT_AF_INET6 10
#define MZT_SOCK_STREAM 1
#define MZT_PROTO_TCP 6
#define MZT_SOL_IP 0
#define MZT_SOL_IPV6 41
#define MZT_SO_ORIGINAL_DST 80

// ctx_load reads a context or socket field through a register barrier, so
// that clang cannot merge loads from two branches into one load through a
// computed pointer, which the verifier rejects ("dereference of modified
// ctx ptr").
#define ctx_load(field)                           \
	({                                        \
		__u32 __v = (field);              \
		asm volatile("" : "+r"(__v));     \
		__v;                              \
	})

#define DIR_OUTBOUND 0
#define DIR_INBOUND 1

// Set by the loader before the programs are loaded.
volatile const __u32 mark_value = 0x539;
volatile const __u32 mark_mask = 0xfff;
volatile const __u64 agent_cgroup_id = 0;

// Per-pod settings, keyed by network namespace cookie.
struct pod_config {
	__u16 outbound_port; // host byte order
	__u16 inbound_port;
	__u16 hbone_port;
	__u16 flags;
	__u32 probe4;    // network byte order; 0 means none
	__u32 probe6[4]; // network byte order; all zero means none
	__u32 pod4;      // the pod's IPv4 address shown by getsockname; 0 means none
	__u32 pod6[4];   // the pod's IPv6 address; all zero means none
};

// User-space bookkeeping: pod ID to namespace cookie, cgroup and ifindex.
struct pod_id {
	char id[64];
};

struct pod_meta {
	__u64 netns;
	__u64 cgroup_id;
	__u32 ifindex;
	__u32 pad;
};

// Excluded outbound destinations. IPv4 prefixes are stored IPv4-mapped, so
// prefixlen is 64 (namespace cookie) + 96 + the IPv4 prefix length.
struct cidr_key {
	__u32 prefixlen;
	__u32 netns[2];
	__u32 addr[4];
};

struct port_key {
	__u64 netns;
	__u16 port; // host byte order
	__u8 dir;
	__u8 pad[5];
};

// Key of an accepted proxy connection, seen from the proxy: its peer is the
// client. Addresses are IPv4-mapped for IPv4.
struct tuple_key {
	__u64 netns;
	__u32 client[4];
	__u32 proxy[4];
	__u16 client_port; // host byte order
	__u16 proxy_port;  // host byte order
	__u32 pad;
};

struct orig_dst {
	__u32 addr[4]; // IPv4-mapped for IPv4
	__u16 port;    // host byte order
	__u16 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct pod_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pod_id);
	__type(value, struct pod_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_pod_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_excl_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_excl_port SEC(".maps");

// The pod's own addresses, mapping to its namespace cookie. The tc program
// finds its pod this way: bpf_get_netns_cookie in tc reports the namespace
// of skb->sk, and an arriving SYN has no socket yet.
struct pod_addr {
	__u32 addr[4]; // IPv4-mapped for IPv4
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pod_addr);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_pod_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple_key);
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_tuples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_orig SEC(".maps");

// A SYN that meets a TIME_WAIT socket of an earlier proxied connection
// cannot be assigned in tc: the kernel rejects a request socket that
// duplicates the TIME_WAIT one. tc then stores the proxy listener here
// under the connection's tuple and lets the SYN pass; the kernel ends the
// TIME_WAIT socket and looks up a listener, and mzt_sk_lookup hands it this
// one instead of the application's.
// NOTE: an entry whose SYN never reaches the listener lookup stays until the
// listener closes or the pod is unenrolled; when the map is full, such SYNs
// are dropped.
struct steer_key {
	__u32 local[4];  // IPv4-mapped for IPv4
	__u32 remote[4];
	__u16 local_port; // host byte order
	__u16 remote_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct steer_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_tw_steer SEC(".maps");

enum stat {
	STAT_CONNECT_SEEN,
	STAT_CONNECT_REDIRECTED,
	STAT_CONNECT_EXCLUDED,
	STAT_STORAGE_FAILED,
	STAT_TUPLE_STORED,
	STAT_SOCKOPT_ANSWERED,
	STAT_PEERNAME_REWRITTEN,
	STAT_INBOUND_ASSIGNED,
	STAT_INBOUND_NO_LISTENER,
	STAT_INBOUND_PROBE,
	STAT_INBOUND_ASSIGN_FAILED,
	STAT_INBOUND_UNKNOWN_DST,
	STAT_INBOUND_TW_STEERED,
	STAT_INBOUND_TW_FAILED,
	STAT_SOCKNAME_REWRITTEN,
	STAT_AGENT_SOCKNAME_REWRITTEN,
	STAT_INBOUND_FRAGMENT,
	STAT_INBOUND_MALFORMED,
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 32);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mzt_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&mzt_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void map_v4(__u32 dst[4], __u32 ip4)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = ip4;
}

static __always_inline int is_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_loopback4(__u32 ip4)
{
	// 127.0.0.0/8, and 0.0.0.0, which Linux connects to locally.
	return (ip4 & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000) || ip4 == 0;
}

static __always_inline int is_excluded(__u64 netns, const __u32 addr[4], __u16 port)
{
	struct port_key pk;
	__builtin_memset(&pk, 0, sizeof(pk));
	pk.netns = netns;
	pk.port = port;
	pk.dir = DIR_OUTBOUND;
	if (bpf_map_lookup_elem(&mzt_excl_port, &pk))
		return 1;

	struct cidr_key ck;
	ck.prefixlen = 64 + 128;
	ck.netns[0] = (__u32)netns;
	ck.netns[1] = (__u32)(netns >> 32);
	ck.addr[0] = addr[0];
	ck.addr[1] = addr[1];
	ck.addr[2] = addr[2];
	ck.addr[3] = addr[3];
	return bpf_map_lookup_elem(&mzt_excl_cidr, &ck) != 0;
}

// pod_for_connect returns the pod config when ctx is a TCP connect that may
// be captured: an enrolled namespace, not the agent's mark or cgroup.
static __always_inline struct pod_config *pod_for_connect(struct bpf_sock_addr *ctx, __u64 *netns)
{
	if (ctx->type != MZT_SOCK_STREAM || ctx->protocol != MZT_PROTO_TCP)
		return 0;

	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	if ((sk->mark & mark_mask) == mark_value)
		return 0;
	if (agent_cgroup_id && bpf_get_current_cgroup_id() == agent_cgroup_id)
		return 0;

	*netns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&mzt_pods, netns);
}

// remember records the original destination on the socket. A failure is
// counted but the connect is still redirected: the proxy then finds no
// original destination and closes the connection, which fails closed.
static __always_inline void remember(struct bpf_sock_addr *ctx, const __u32 addr[4], __u16 port, __u16 family)
{
	struct orig_dst *o = bpf_sk_storage_get(&mzt_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o) {
		count(STAT_STORAGE_FAILED);
		return;
	}
	o->addr[0] = addr[0];
	o->addr[1] = addr[1];
	o->addr[2] = addr[2];
	o->addr[3] = addr[3];
	o->port = port;
	o->family = family;
}

SEC("cgroup/connect4")
int mzt_connect4(struct bpf_sock_addr *ctx)
{
	__u64 netns = 0;
	struct pod_config *cfg = pod_for_connect(ctx, &netns);
	if (!cfg)
		return 1;
	count(STAT_CONNECT_SEEN);

	__u32 ip4 = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (is_loopback4(ip4))
		return 1;

	__u32 addr[4];
	map_v4(addr, ip4);
	if (is_excluded(netns, addr, port)) {
		count(STAT_CONNECT_EXCLUDED);
		return 1;
	}

	remember(ctx, addr, port, MZT_AF_INET);
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->outbound_port);
	count(STAT_CONNECT_REDIRECTED);
	return 1;
}

SEC("cgroup/connect6")
int mzt_connect6(struct bpf_sock_addr *ctx)
{
	__u64 netns = 0;
	struct pod_config *cfg = pod_for_connect(ctx, &netns);
	if (!cfg)
		return 1;
	count(STAT_CONNECT_SEEN);

	__u32 addr[4];
	addr[0] = ctx_load(ctx->user_ip6[0]);
	addr[1] = ctx_load(ctx->user_ip6[1]);
	addr[2] = ctx_load(ctx->user_ip6[2]);
	addr[3] = ctx_load(ctx->user_ip6[3]);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	int mapped = is_mapped(addr);
	if (mapped && is_loopback4(addr[3]))
		return 1;
	// ::1 and ::, which Linux connects to locally.
	if (!mapped && addr[0] == 0 && addr[1] == 0 && addr[2] == 0 &&
	    (addr[3] == 0 || addr[3] == bpf_htonl(1)))
		return 1;

	if (is_excluded(netns, addr, port)) {
		count(STAT_CONNECT_EXCLUDED);
		return 1;
	}

	remember(ctx, addr, port, mapped ? MZT_AF_INET : MZT_AF_INET6);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	if (mapped) {
		// A dual-stack socket dialing IPv4 goes to the IPv4 listener.
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(cfg->outbound_port);
	count(STAT_CONNECT_REDIRECTED);
	return 1;
}

// mzt_sockops runs on the client socket in the pod's cgroup. When a
// redirected connect is established it publishes the original destination
// under the tuple that the proxy's accepted socket sees. The callback runs
// before the final ACK leaves, so the entry exists before accept() returns.
SEC("sockops")
int mzt_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;

	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&mzt_orig, sk, 0, 0);
	if (!o)
		return 1;

	struct tuple_key k;
	__builtin_memset(&k, 0, sizeof(k));
	k.netns = bpf_get_netns_cookie(skops);
	if (ctx_load(skops->family) == MZT_AF_INET) {
		map_v4(k.client, ctx_load(skops->local_ip4));
		map_v4(k.proxy, ctx_load(skops->remote_ip4));
	} else {
		k.client[0] = ctx_load(skops->local_ip6[0]);
		k.client[1] = ctx_load(skops->local_ip6[1]);
		k.client[2] = ctx_load(skops->local_ip6[2]);
		k.client[3] = ctx_load(skops->local_ip6[3]);
		k.proxy[0] = ctx_load(skops->remote_ip6[0]);
		k.proxy[1] = ctx_load(skops->remote_ip6[1]);
		k.proxy[2] = ctx_load(skops->remote_ip6[2]);
		k.proxy[3] = ctx_load(skops->remote_ip6[3]);
	}
	k.client_port = (__u16)ctx_load(skops->local_port);
	// remote_port contains the port in network byte order in its upper half.
	k.proxy_port = bpf_ntohs((__u16)(ctx_load(skops->remote_port) >> 16));

	struct orig_dst v = *o;
	if (bpf_map_update_elem(&mzt_tuples, &k, &v, BPF_ANY) == 0)
		count(STAT_TUPLE_STORED);
	return 1;
}

// accepted_orig_dst returns the original destination of a socket that the
// proxy accepted on its outbound listener, or NULL for any other socket.
static __always_inline struct orig_dst *accepted_orig_dst(struct bpf_sock *sk, __u64 netns)
{
	struct tuple_key k;
	__builtin_memset(&k, 0, sizeof(k));
	k.netns = netns;
	__u32 family = ctx_load(sk->family);
	if (family == MZT_AF_INET) {
		map_v4(k.client, ctx_load(sk->dst_ip4));
		map_v4(k.proxy, ctx_load(sk->src_ip4));
	} else if (family == MZT_AF_INET6) {
		k.client[0] = ctx_load(sk->dst_ip6[0]);
		k.client[1] = ctx_load(sk->dst_ip6[1]);
		k.client[2] = ctx_load(sk->dst_ip6[2]);
		k.client[3] = ctx_load(sk->dst_ip6[3]);
		k.proxy[0] = ctx_load(sk->src_ip6[0]);
		k.proxy[1] = ctx_load(sk->src_ip6[1]);
		k.proxy[2] = ctx_load(sk->src_ip6[2]);
		k.proxy[3] = ctx_load(sk->src_ip6[3]);
	} else {
		return 0;
	}
	k.client_port = bpf_ntohs((__u16)ctx_load(sk->dst_port));
	k.proxy_port = (__u16)ctx_load(sk->src_port);
	return bpf_map_lookup_elem(&mzt_tuples, &k);
}

// mzt_getsockopt handles getsockopt(SOL_IP, SO_ORIGINAL_DST) and
// getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) on the proxy's accepted socket.
// It is attached to the agent's cgroup.
SEC("cgroup/getsockopt")
int mzt_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != MZT_SO_ORIGINAL_DST)
		return 1;
	if (ctx->level != MZT_SOL_IP && ctx->level != MZT_SOL_IPV6)
		return 1;

	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = accepted_orig_dst(sk, bpf_get_netns_cookie(ctx));
	if (!o)
		return 1;

	__u8 *p = ctx->optval;
	if (ctx->level == MZT_SOL_IP) {
		if (!is_mapped(o->addr))
			return 1;
		if (p + 16 > (__u8 *)ctx->optval_end)
			return 1;
		__builtin_memset(p, 0, 16);
		*(__u16 *)p = MZT_AF_INET;
		*(__u16 *)(p + 2) = bpf_htons(o->port);
		*(__u32 *)(p + 4) = o->addr[3];
		// Separate volatile stores: clang would merge them into one 8-byte
		// store, which the verifier rejects for this context.
		*(volatile __s32 *)&ctx->optlen = 16;
	} else {
		if (p + 28 > (__u8 *)ctx->optval_end)
			return 1;
		__builtin_memset(p, 0, 28);
		*(__u16 *)p = MZT_AF_INET6;
		*(__u16 *)(p + 2) = bpf_htons(o->port);
		*(__u32 *)(p + 8) = o->addr[0];
		*(__u32 *)(p + 12) = o->addr[1];
		*(__u32 *)(p + 16) = o->addr[2];
		*(__u32 *)(p + 20) = o->addr[3];
		*(volatile __s32 *)&ctx->optlen = 28;
	}
	*(volatile __s32 *)&ctx->retval = 0;
	count(STAT_SOCKOPT_ANSWERED);
	return 1;
}

// mzt_agent_sock4 and mzt_agent_sock6 run on the agent's cgroup when
// Options.OriginalDstAsLocalAddr is set. getsockname on a socket accepted
// on the outbound listener then returns the original destination, so the
// proxy gets it from the getsockname call that Go makes on every accept,
// with no extra system call, and reads it from LocalAddr as for inbound
// connections.
SEC("cgroup/getsockname4")
int mzt_agent_sock4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = accepted_orig_dst(sk, bpf_get_netns_cookie(ctx));
	if (!o || !is_mapped(o->addr))
		return 1;

	ctx->user_ip4 = o->addr[3];
	ctx->user_port = bpf_htons(o->port);
	count(STAT_AGENT_SOCKNAME_REWRITTEN);
	return 1;
}

SEC("cgroup/getsockname6")
int mzt_agent_sock6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = accepted_orig_dst(sk, bpf_get_netns_cookie(ctx));
	if (!o)
		return 1;

	ctx->user_ip6[0] = o->addr[0];
	ctx->user_ip6[1] = o->addr[1];
	ctx->user_ip6[2] = o->addr[2];
	ctx->user_ip6[3] = o->addr[3];
	ctx->user_port = bpf_htons(o->port);
	count(STAT_AGENT_SOCKNAME_REWRITTEN);
	return 1;
}

SEC("cgroup/getpeername4")
int mzt_getpeer4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&mzt_orig, sk, 0, 0);
	if (!o || !is_mapped(o->addr))
		return 1;

	ctx->user_ip4 = o->addr[3];
	ctx->user_port = bpf_htons(o->port);
	count(STAT_PEERNAME_REWRITTEN);
	return 1;
}

SEC("cgroup/getpeername6")
int mzt_getpeer6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&mzt_orig, sk, 0, 0);
	if (!o)
		return 1;

	ctx->user_ip6[0] = o->addr[0];
	ctx->user_ip6[1] = o->addr[1];
	ctx->user_ip6[2] = o->addr[2];
	ctx->user_ip6[3] = o->addr[3];
	ctx->user_port = bpf_htons(o->port);
	count(STAT_PEERNAME_REWRITTEN);
	return 1;
}

// getsockname on a redirected socket would show a loopback address. The
// programs below show the pod's address instead, as with iptables, where
// the client's socket keeps its route's source address. The port stays the
// loopback connection's.
static __always_inline struct pod_config *pod_of_redirected(struct bpf_sock_addr *ctx, struct orig_dst **o)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	*o = bpf_sk_storage_get(&mzt_orig, sk, 0, 0);
	if (!*o)
		return 0;
	__u64 netns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&mzt_pods, &netns);
}

SEC("cgroup/getsockname4")
int mzt_getsock4(struct bpf_sock_addr *ctx)
{
	struct orig_dst *o = 0;
	struct pod_config *cfg = pod_of_redirected(ctx, &o);
	if (!cfg || !cfg->pod4)
		return 1;

	ctx->user_ip4 = cfg->pod4;
	count(STAT_SOCKNAME_REWRITTEN);
	return 1;
}

SEC("cgroup/getsockname6")
int mzt_getsock6(struct bpf_sock_addr *ctx)
{
	struct orig_dst *o = 0;
	struct pod_config *cfg = pod_of_redirected(ctx, &o);
	if (!cfg || !o)
		return 1;

	if (is_mapped(o->addr)) {
		if (!cfg->pod4)
			return 1;
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = cfg->pod4;
	} else {
		if (!(cfg->pod6[0] | cfg->pod6[1] | cfg->pod6[2] | cfg->pod6[3]))
			return 1;
		ctx->user_ip6[0] = cfg->pod6[0];
		ctx->user_ip6[1] = cfg->pod6[1];
		ctx->user_ip6[2] = cfg->pod6[2];
		ctx->user_ip6[3] = cfg->pod6[3];
	}
	count(STAT_SOCKNAME_REWRITTEN);
	return 1;
}

// Inbound.

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60

struct syn {
	struct bpf_sock_tuple tuple;
	int v6;
};

// tcx verdict that runs the next program on the interface, or passes the
// packet when there is none (TC_ACT_UNSPEC; the 6.1 UAPI headers of Debian
// 12 have no TCX_NEXT). Other programs, such as a CNI's, keep seeing the
// packets this one lets through.
#define TCX_NEXT TC_ACT_UNSPEC

#define PARSE_PASS 0
#define PARSE_SYN 1
#define PARSE_DROP 2     // truncated or too deep to parse
#define PARSE_FRAGMENT 3 // TCP in an IP fragment

#define MZT_IP_MF 0x2000
#define MZT_IP_OFFSET 0x1fff

// parse_syn fills s for a TCP SYN without ACK and returns PARSE_SYN.
//
// The kernel reassembles IP fragments only after tc, and an assignment made
// on a fragment is lost in reassembly, so a fragmented SYN would reach the
// application. parse_syn therefore returns PARSE_FRAGMENT for:
//   - every IPv4 fragment with protocol TCP (the kernel reassembles only
//     fragments of one protocol, so this covers every piece of a TCP
//     datagram);
//   - every IPv6 fragment whose fragment header names TCP, and every first
//     fragment whose header chain ends in TCP. The protocol of a reassembled
//     IPv6 packet is that of its first fragment, so later fragments that
//     name another protocol can pass: without the first they never complete.
// It returns PARSE_DROP for a packet whose IP, extension or TCP header is
// truncated, or whose IPv6 extension headers it cannot walk to the end, since
// either could hide a SYN. It returns PARSE_PASS for anything else.
static __always_inline int parse_syn(struct __sk_buff *skb, struct syn *s)
{
	__u32 off = ETH_HLEN;
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return PARSE_DROP;
		if (ip.protocol != MZT_PROTO_TCP)
			return PARSE_PASS;
		if (ip.frag_off & bpf_htons(MZT_IP_MF | MZT_IP_OFFSET))
			return PARSE_FRAGMENT;
		if (ip.ihl < 5)
			return PARSE_DROP;
		s->tuple.ipv4.saddr = ip.saddr;
		s->tuple.ipv4.daddr = ip.daddr;
		s->v6 = 0;
		off += ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return PARSE_DROP;
		__builtin_memcpy(s->tuple.ipv6.saddr, &ip6.saddr, 16);
		__builtin_memcpy(s->tuple.ipv6.daddr, &ip6.daddr, 16);
		s->v6 = 1;
		off += sizeof(ip6);
		proto = ip6.nexthdr;
		int fragment = 0;

#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (proto != NEXTHDR_HOP && proto != NEXTHDR_ROUTING &&
			    proto != NEXTHDR_DEST && proto != NEXTHDR_AUTH &&
			    proto != NEXTHDR_FRAGMENT)
				break;
			__u8 ext[4];
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return PARSE_DROP;
			if (proto == NEXTHDR_FRAGMENT) {
				if (ext[0] == MZT_PROTO_TCP)
					return PARSE_FRAGMENT;
				// A later fragment: its first fragment decides the
				// protocol and is checked on its own.
				if ((ext[2] << 8 | ext[3]) & 0xfff8)
					return PARSE_PASS;
				fragment = 1;
				off += 8;
			} else if (proto == NEXTHDR_AUTH) {
				off += (ext[1] + 2) * 4;
			} else {
				off += (ext[1] + 1) * 8;
			}
			proto = ext[0];
		}
		if (proto == NEXTHDR_HOP || proto == NEXTHDR_ROUTING || proto == NEXTHDR_DEST ||
		    proto == NEXTHDR_AUTH || proto == NEXTHDR_FRAGMENT)
			return PARSE_DROP;
		if (proto != MZT_PROTO_TCP)
			return PARSE_PASS;
		if (fragment)
			return PARSE_FRAGMENT;
	} else {
		return PARSE_PASS;
	}

	struct tcphdr th;
	if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)))
		return PARSE_DROP;
	if (!th.syn || th.ack)
		return PARSE_PASS;
	if (s->v6) {
		s->tuple.ipv6.sport = th.source;
		s->tuple.ipv6.dport = th.dest;
	} else {
		s->tuple.ipv4.sport = th.source;
		s->tuple.ipv4.dport = th.dest;
	}
	return PARSE_SYN;
}

static __always_inline int is_probe(const struct pod_config *cfg, const struct syn *s)
{
	if (!s->v6)
		return cfg->probe4 != 0 && s->tuple.ipv4.saddr == cfg->probe4;

	if (!(cfg->probe6[0] | cfg->probe6[1] | cfg->probe6[2] | cfg->probe6[3]))
		return 0;
	return s->tuple.ipv6.saddr[0] == cfg->probe6[0] &&
	       s->tuple.ipv6.saddr[1] == cfg->probe6[1] &&
	       s->tuple.ipv6.saddr[2] == cfg->probe6[2] &&
	       s->tuple.ipv6.saddr[3] == cfg->probe6[3];
}

// The tuple size must be a constant for the verifier, hence one call per
// family.
static __always_inline struct bpf_sock *skc_lookup(struct __sk_buff *skb, struct syn *s)
{
	if (s->v6)
		return bpf_skc_lookup_tcp(skb, &s->tuple, sizeof(s->tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	return bpf_skc_lookup_tcp(skb, &s->tuple, sizeof(s->tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
}

static __always_inline struct bpf_sock *sk_lookup(struct __sk_buff *skb, struct syn *s)
{
	if (s->v6)
		return bpf_sk_lookup_tcp(skb, &s->tuple, sizeof(s->tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	return bpf_sk_lookup_tcp(skb, &s->tuple, sizeof(s->tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
}

SEC("tc")
int mzt_tc_ingress(struct __sk_buff *skb)
{
	struct syn s;
	__builtin_memset(&s, 0, sizeof(s));
	int parsed = parse_syn(skb, &s);
	if (parsed == PARSE_FRAGMENT) {
		count(STAT_INBOUND_FRAGMENT);
		return TC_ACT_SHOT;
	}
	if (parsed == PARSE_DROP) {
		count(STAT_INBOUND_MALFORMED);
		return TC_ACT_SHOT;
	}
	if (parsed != PARSE_SYN)
		return TCX_NEXT;

	// The program runs only on enrolled pods' interfaces, so a SYN to an
	// address the pod did not have at enrollment is dropped rather than
	// delivered past the proxy.
	struct pod_addr pa;
	if (s.v6) {
		__builtin_memcpy(pa.addr, s.tuple.ipv6.daddr, 16);
	} else {
		map_v4(pa.addr, s.tuple.ipv4.daddr);
	}
	__u64 *netnsp = bpf_map_lookup_elem(&mzt_pod_addrs, &pa);
	if (!netnsp) {
		count(STAT_INBOUND_UNKNOWN_DST);
		return TC_ACT_SHOT;
	}
	__u64 netns = *netnsp;
	struct pod_config *cfg = bpf_map_lookup_elem(&mzt_pods, &netns);
	if (!cfg) {
		count(STAT_INBOUND_UNKNOWN_DST);
		return TC_ACT_SHOT;
	}

	// Kubelet probes arrive from the node with a fixed source address and
	// reach the application directly, as with istio-cni's rules.
	if (is_probe(cfg, &s)) {
		count(STAT_INBOUND_PROBE);
		return TCX_NEXT;
	}

	__u16 dport = bpf_ntohs(s.v6 ? s.tuple.ipv6.dport : s.tuple.ipv4.dport);
	struct port_key pk;
	__builtin_memset(&pk, 0, sizeof(pk));
	pk.netns = netns;
	pk.port = dport;
	pk.dir = DIR_INBOUND;
	if (bpf_map_lookup_elem(&mzt_excl_port, &pk))
		return TCX_NEXT;

	// A SYN that matches a request socket (a retransmitted SYN) or an
	// established one follows the normal path. A TIME_WAIT match is steered
	// through mzt_tw_steer, below.
	int time_wait = 0;
	struct bpf_sock *sk = skc_lookup(skb, &s);
	if (sk) {
		__u32 state = sk->state;
		bpf_sk_release(sk);
		if (state == BPF_TCP_TIME_WAIT)
			time_wait = 1;
		else if (state != BPF_TCP_LISTEN)
			return TCX_NEXT;
	}

	__u16 target = dport == cfg->hbone_port ? cfg->hbone_port : cfg->inbound_port;
	if (s.v6)
		s.tuple.ipv6.dport = bpf_htons(target);
	else
		s.tuple.ipv4.dport = bpf_htons(target);

	sk = sk_lookup(skb, &s);
	if (!sk) {
		count(STAT_INBOUND_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		count(STAT_INBOUND_NO_LISTENER);
		return TC_ACT_SHOT;
	}

	if (time_wait) {
		struct steer_key k;
		__builtin_memset(&k, 0, sizeof(k));
		if (s.v6) {
			__builtin_memcpy(k.local, s.tuple.ipv6.daddr, 16);
			__builtin_memcpy(k.remote, s.tuple.ipv6.saddr, 16);
			k.remote_port = bpf_ntohs(s.tuple.ipv6.sport);
		} else {
			map_v4(k.local, s.tuple.ipv4.daddr);
			map_v4(k.remote, s.tuple.ipv4.saddr);
			k.remote_port = bpf_ntohs(s.tuple.ipv4.sport);
		}
		k.local_port = dport;
		long err = bpf_map_update_elem(&mzt_tw_steer, &k, sk, BPF_ANY);
		bpf_sk_release(sk);
		if (err) {
			count(STAT_INBOUND_TW_FAILED);
			return TC_ACT_SHOT;
		}
		count(STAT_INBOUND_TW_STEERED);
		return TCX_NEXT;
	}

	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(STAT_INBOUND_ASSIGN_FAILED);
		return TC_ACT_SHOT;
	}
	count(STAT_INBOUND_ASSIGNED);
	return TCX_NEXT;
}

// mzt_sk_lookup runs in the pod's namespace whenever the kernel looks up a
// listener. It acts only on tuples that the tc program stored in
// mzt_tw_steer, so local connections, such as the proxy's own dials to the
// application, are never affected.
SEC("sk_lookup")
int mzt_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx_load(ctx->protocol) != MZT_PROTO_TCP)
		return SK_PASS;

	struct steer_key k;
	__builtin_memset(&k, 0, sizeof(k));
	if (ctx_load(ctx->family) == MZT_AF_INET) {
		map_v4(k.local, ctx_load(ctx->local_ip4));
		map_v4(k.remote, ctx_load(ctx->remote_ip4));
	} else {
		k.local[0] = ctx_load(ctx->local_ip6[0]);
		k.local[1] = ctx_load(ctx->local_ip6[1]);
		k.local[2] = ctx_load(ctx->local_ip6[2]);
		k.local[3] = ctx_load(ctx->local_ip6[3]);
		k.remote[0] = ctx_load(ctx->remote_ip6[0]);
		k.remote[1] = ctx_load(ctx->remote_ip6[1]);
		k.remote[2] = ctx_load(ctx->remote_ip6[2]);
		k.remote[3] = ctx_load(ctx->remote_ip6[3]);
	}
	k.local_port = (__u16)ctx_load(ctx->local_port);
	k.remote_port = bpf_ntohs((__u16)ctx_load(ctx->remote_port));

	struct bpf_sock *sk = bpf_map_lookup_elem(&mzt_tw_steer, &k);
	if (!sk)
		return SK_PASS;
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	bpf_map_delete_elem(&mzt_tw_steer, &k);
	return SK_PASS;
}

char __license[] SEC("license") = "Dual MIT/GPL";
