// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// The kernel relay (src/sockmap): every segment that arrives on a relayed socket is redirected to
// the socket of the other end of its session, inside the kernel, without waking the proxy.
//
// `socks` holds the sockets of relaying sessions, keyed by their socket cookie, and `targets` the same
// sockets without the program. `links` holds, per
// socket cookie, the cookie of its peer and what user space needs to keep its counters and
// timers: the bytes redirected from this socket and the time of the last segment
// (bpf_ktime_get_ns, CLOCK_MONOTONIC, the clock of tokio's Instant). The proxy writes `links`
// before it puts a socket into `socks`, and deletes both entries when the session ends.
//
// GPL-compatible licence: bpf_sk_redirect_hash is only offered to GPL-compatible programs.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct link {
	__u64 peer;
	__u64 bytes;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} socks SEC(".maps");

// The same sockets, without a program: where the verdict finds a peer (src/sockmap says why).
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	// Allocated as sessions start: a preallocated map would take its whole size (several MiB
	// of locked kernel memory) for every proxy, whatever its number of sessions.
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct link);
} links SEC(".maps");

SEC("sk_skb/stream_verdict")
int relay(struct __sk_buff *skb)
{
	// A FIN without data arrives as an empty segment. TCP has already noted the end of the
	// stream (the proxy sees EPOLLRDHUP and passes the half-close on); redirected, the kernel's
	// psock worker would "send" zero bytes, take that for a broken pipe, report EPIPE on the
	// peer and stop sending to it.
	if (skb->len == 0)
		return SK_DROP;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct link *l = bpf_map_lookup_elem(&links, &cookie);
	if (!l)
		// Not a relayed socket (cannot happen: links is written first); SK_DROP would lose
		// bytes, SK_PASS leaves them in the socket's receive queue where the proxy's end of
		// session still sees them.
		return SK_PASS;
	__sync_fetch_and_add(&l->bytes, skb->len);
	l->last_ns = bpf_ktime_get_ns();
	__u64 peer = l->peer;
	// Without BPF_F_INGRESS: sent out of the peer socket, as a write(2) on it would.
	return bpf_sk_redirect_hash(skb, &targets, &peer, 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
