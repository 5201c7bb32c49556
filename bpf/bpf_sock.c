// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level service load-balancing, on the cgroup v2 root: a connect()
 * or an unconnected sendmsg() to a service's virtual IP is rewritten to a
 * backend before any packet exists, so every packet carries the backend's
 * address from the first byte and policy judges the pod the connection
 * really reaches. recvmsg() and getpeername() translate back, so the
 * application only ever sees the address it asked for. A service without
 * ready backends fails connect() at once (EPERM) instead of hanging. */
#include "lib/common.h"
#include "lib/lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define SYS_REJECT 0
#define SYS_PROCEED 1

/* lb4_translate rewrites the socket address of a service to a backend.
 * Returns SYS_PROCEED or SYS_REJECT. */
static __always_inline int lb4_translate(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct lb4_key key = {
		.address = ctx->user_ip4,
		.dport = (__be16)ctx->user_port,
		.proto = proto,
	};
	const struct lb4_service *svc;
	const struct lb4_backend *be;
	__u32 backend_id = 0;

	svc = bpf_map_lookup_elem(&sigil_lb4_svc, &key);
	if (!svc)
		return SYS_PROCEED; /* not a service */
	if (!svc->count)
		return SYS_REJECT;  /* no ready backends: fail fast */
	be = lb4_select(svc, &key, bpf_get_netns_cookie(ctx), &backend_id);
	if (!be)
		return SYS_REJECT;

	{
		struct lb4_sock_key sk = {
			.cookie = bpf_get_socket_cookie(ctx),
			.address = be->address,
			.port = be->port,
		};
		struct lb4_reverse_nat orig = { .address = ctx->user_ip4, .port = (__be16)ctx->user_port };
		bpf_map_update_elem(&sigil_lb4_sknat, &sk, &orig, BPF_ANY);
	}
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return SYS_PROCEED;
}

/* lb4_reverse restores the service address the application asked for. */
static __always_inline int lb4_reverse(struct bpf_sock_addr *ctx)
{
	struct lb4_sock_key sk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_reverse_nat *orig = bpf_map_lookup_elem(&sigil_lb4_sknat, &sk);

	if (orig) {
		ctx->user_ip4 = orig->address;
		ctx->user_port = orig->port;
	}
	return SYS_PROCEED;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_UDP ? IPPROTO_UDP : IPPROTO_TCP;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	return lb4_translate(ctx, sock_proto(ctx));
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return lb4_translate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return lb4_reverse(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return lb4_reverse(ctx);
}
