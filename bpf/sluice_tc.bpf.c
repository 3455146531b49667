// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Sluice's node datapath: tc (clsact, direct-action) programs on the node's side of every
 * endpoint veth and on the uplink.
 *
 *   sluice_from_wire  (tc ingress): packets entering the node from an endpoint or the uplink.
 *       Known flow -> pass (or keep diverting to the proxy). New flow -> identities from the
 *       LPM identity map, the source endpoint's egress policy and the destination endpoint's
 *       ingress policy; deny wins; redirect -> bpf_sk_assign to the proxy listener, or drop
 *       when the listener is absent (fail closed).
 *   sluice_to_wire    (tc egress): packets leaving the node toward an endpoint or the uplink.
 *       Already decided at ingress, or a reply of a known flow -> pass. The proxy's own
 *       upstream packets (SLUICE_MARK_FROM_PROXY) -> pass and remember the flow so its replies
 *       pass. Anything else the node itself sends -> the destination's ingress policy with
 *       the host as the peer.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice_datapath.h"

#define LOCALHOST_BE 0x0100007f /* 127.0.0.1 in network byte order on little-endian hosts */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#ifndef TCP_LISTEN
#define TCP_LISTEN 10
#endif
#ifndef TCP_TIME_WAIT
#define TCP_TIME_WAIT 6
#endif
#ifndef BPF_F_CURRENT_NETNS
#define BPF_F_CURRENT_NETNS (-1L)
#endif

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, SLUICE_IPCACHE_ENTRIES);
    __type(key, struct sluice_ipcache_key);
    __type(value, struct sluice_ipcache_value);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ipcache SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, SLUICE_ENFORCE_ENTRIES);
    __type(key, __u32);
    __type(value, struct sluice_enforcement);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_enforce SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, SLUICE_POLICY_ENTRIES);
    __type(key, struct sluice_policy_key);
    __type(value, struct sluice_policy_value);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy SEC(".maps");

/* Addresses learned from allowed DNS answers (toFQDNs), written by the proxy before it
 * releases the answer. Bounded: userspace caps and evicts, and expired entries are ignored. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, SLUICE_FQDN_ENTRIES);
    __type(key, struct sluice_fqdn_key);
    __type(value, struct sluice_fqdn_value);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_fqdn SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, SLUICE_CT_ENTRIES);
    __type(key, struct sluice_ct_key);
    __type(value, struct sluice_ct_value);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SLUICE_COUNTER_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, SLUICE_EVENTS_BYTES);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_events SEC(".maps");

/* Sluice's transparent TCP listeners by port, for the sk_lookup program below. */
struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_listeners SEC(".maps");

/* Never read or written: declared so the event layout is recorded in the object's BTF,
 * where the layout test (and `bpftool btf dump`) can check it against Swift's view. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct sluice_event);
} sluice_event_layout SEC(".maps");

struct packet {
    struct sluice_ct_key tuple;
    __u8 first_fragment;
    __u8 later_fragment;
    __u8 tcp_flags_syn;
};

static __always_inline void count(__u32 slot)
{
    __u64 *value = bpf_map_lookup_elem(&sluice_counters, &slot);
    if (value)
        *value += 1;
}

static __always_inline void emit(struct __sk_buff *skb, const struct packet *packet, __u8 kind, __u8 reason,
                                 __u8 direction, __u32 source, __u32 destination, __u16 proxy_port, __u32 rule)
{
    struct sluice_event *event = bpf_ringbuf_reserve(&sluice_events, sizeof(*event), 0);
    if (!event)
        return; /* a full ring loses the event, never the verdict; the counter still counts */
    event->timestamp_ns = bpf_ktime_get_ns();
    event->saddr_be = packet->tuple.saddr_be;
    event->daddr_be = packet->tuple.daddr_be;
    event->sport_be = packet->tuple.sport_be;
    event->dport_be = packet->tuple.dport_be;
    event->protocol = packet->tuple.protocol;
    event->kind = kind;
    event->reason = reason;
    event->direction = direction;
    event->source_identity = source;
    event->destination_identity = destination;
    event->ifindex = skb->ifindex;
    event->proxy_port = proxy_port;
    event->pad = 0;
    event->rule = rule;
    bpf_ringbuf_submit(event, 0);
}

static __always_inline int drop(struct __sk_buff *skb, const struct packet *packet, __u8 reason, __u8 direction,
                                __u32 source, __u32 destination, __u32 rule)
{
    count(reason);
    emit(skb, packet, SLUICE_EVENT_DROP, reason, direction, source, destination, 0, rule);
    return TC_ACT_SHOT;
}

/* Parses IPv4 and the ports of TCP/UDP/SCTP. Returns 0 on success, 1 for non-IP frames
 * (passed), 2 for IPv6, -1 for truncated headers. */
static __always_inline int parse(struct __sk_buff *skb, struct packet *packet)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return -1;
    if (eth->h_proto == bpf_htons(ETH_P_IPV6))
        return 2;
    if (eth->h_proto != bpf_htons(ETH_P_IP))
        return 1;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || ip->ihl < 5)
        return -1;
    __builtin_memset(packet, 0, sizeof(*packet));
    packet->tuple.saddr_be = ip->saddr;
    packet->tuple.daddr_be = ip->daddr;
    packet->tuple.protocol = ip->protocol;
    __u16 fragment = bpf_ntohs(ip->frag_off);
    if (fragment & IP_OFFSET) {
        packet->later_fragment = 1; /* no L4 header here */
        return 0;
    }
    packet->first_fragment = (fragment & IP_MF) != 0;
    void *l4 = (void *)ip + ip->ihl * 4;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end)
            return -1;
        packet->tuple.sport_be = tcp->source;
        packet->tuple.dport_be = tcp->dest;
        packet->tcp_flags_syn = tcp->syn && !tcp->ack;
    } else if (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_SCTP) {
        /* SCTP's common header starts with the same two ports as UDP. */
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end)
            return -1;
        packet->tuple.sport_be = udp->source;
        packet->tuple.dport_be = udp->dest;
    }
    return 0;
}

static __always_inline struct sluice_ipcache_value identify(__u32 addr_be)
{
    struct sluice_ipcache_key key = { .prefixlen = 32, .addr_be = addr_be };
    struct sluice_ipcache_value *found = bpf_map_lookup_elem(&sluice_ipcache, &key);
    struct sluice_ipcache_value result = { .identity = SLUICE_IDENTITY_WORLD, .flags = 0 };
    if (found)
        result = *found;
    return result;
}

struct decision {
    __u8 action;
    __u8 reason;      /* for drops */
    __u8 direction;
    __u16 proxy_port;
    __u32 rule;
};

/* One endpoint's policy in one direction for a peer, port and protocol. Deny at any level
 * of specificity wins; otherwise the most specific entry decides; nothing matched means
 * default deny for an endpoint selected in that direction, allow otherwise. */
static __always_inline struct decision policy_for(__u32 endpoint, __u8 direction, __u32 peer, __u16 port, __u8 protocol)
{
    struct decision decision = { .action = SLUICE_ACTION_ALLOW, .direction = direction };
    struct sluice_enforcement *enforcement = bpf_map_lookup_elem(&sluice_enforce, &endpoint);
    int enforced = enforcement && (direction == SLUICE_DIRECTION_INGRESS ? enforcement->ingress : enforcement->egress);

    struct sluice_policy_value *levels[4];
    struct sluice_policy_key key = { .endpoint_identity = endpoint, .peer_identity = peer, .port = port,
                                     .protocol = protocol, .direction = direction };
    levels[0] = bpf_map_lookup_elem(&sluice_policy, &key);
    key.port = 0;
    levels[1] = bpf_map_lookup_elem(&sluice_policy, &key);
    key.peer_identity = SLUICE_IDENTITY_ANY;
    key.port = port;
    levels[2] = bpf_map_lookup_elem(&sluice_policy, &key);
    key.port = 0;
    levels[3] = bpf_map_lookup_elem(&sluice_policy, &key);

    struct sluice_policy_value *chosen = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        struct sluice_policy_value *level = levels[i];
        if (!level)
            continue;
        if (level->action == SLUICE_ACTION_DENY) {
            decision.action = SLUICE_ACTION_DENY;
            decision.reason = SLUICE_DROP_POLICY_DENY;
            decision.rule = level->rule;
            return decision;
        }
        if (!chosen)
            chosen = level;
    }
    if (chosen) {
        decision.action = chosen->action;
        decision.proxy_port = chosen->proxy_port;
        decision.rule = chosen->rule;
    } else if (enforced) {
        /* Selected by a policy in this direction: what is not allowed is denied. */
        decision.action = SLUICE_ACTION_DENY;
        decision.reason = SLUICE_DROP_POLICY_DEFAULT;
    }
    /* Not selected: unrestricted, but deny rules (above) still apply. */
    return decision;
}

/* An egress flow the policy drops by default may go to an address the endpoint learned from
 * an allowed DNS answer (toFQDNs): the exact port's entry, else the every-port one, while
 * it has not expired. */
static __always_inline void learned(struct decision *egress, const struct packet *packet, __u32 endpoint, __u16 port)
{
    struct sluice_fqdn_key key = { .endpoint_identity = endpoint, .addr_be = packet->tuple.daddr_be, .port = port,
                                   .protocol = packet->tuple.protocol };
    struct sluice_fqdn_value *found = bpf_map_lookup_elem(&sluice_fqdn, &key);
    if (!found) {
        key.port = 0;
        found = bpf_map_lookup_elem(&sluice_fqdn, &key);
    }
    if (!found || found->action == SLUICE_ACTION_DENY)
        return;
    if (found->expires_ns && bpf_ktime_get_ns() >= found->expires_ns) {
        count(SLUICE_COUNT_FQDN_EXPIRED);
        return;
    }
    count(SLUICE_COUNT_FQDN_ALLOWED);
    egress->action = found->action;
    egress->proxy_port = found->proxy_port;
    egress->rule = found->rule;
    egress->reason = 0;
}

/* Egress policy of a local source and ingress policy of a local destination, combined:
 * a deny from either side wins, then a redirect (egress first), then allow. */
static __always_inline struct decision decide(const struct packet *packet, struct sluice_ipcache_value source,
                                              struct sluice_ipcache_value destination)
{
    __u16 port = bpf_ntohs(packet->tuple.dport_be);
    struct decision egress = { .action = SLUICE_ACTION_ALLOW, .direction = SLUICE_DIRECTION_EGRESS };
    struct decision ingress = { .action = SLUICE_ACTION_ALLOW, .direction = SLUICE_DIRECTION_INGRESS };
    if (source.flags & SLUICE_ADDRESS_LOCAL_ENDPOINT) {
        egress = policy_for(source.identity, SLUICE_DIRECTION_EGRESS, destination.identity, port, packet->tuple.protocol);
        if (egress.action == SLUICE_ACTION_DENY && egress.reason == SLUICE_DROP_POLICY_DEFAULT)
            learned(&egress, packet, source.identity, port);
    }
    if (destination.flags & SLUICE_ADDRESS_LOCAL_ENDPOINT)
        ingress = policy_for(destination.identity, SLUICE_DIRECTION_INGRESS, source.identity, port, packet->tuple.protocol);
    if (egress.action == SLUICE_ACTION_DENY)
        return egress;
    if (ingress.action == SLUICE_ACTION_DENY)
        return ingress;
    if (egress.action == SLUICE_ACTION_REDIRECT)
        return egress;
    return ingress;
}

static __always_inline void remember(const struct packet *packet, __u16 proxy_port)
{
    struct sluice_ct_value value = { .created_ns = bpf_ktime_get_ns(), .proxy_port = proxy_port };
    bpf_map_update_elem(&sluice_ct, &packet->tuple, &value, BPF_ANY);
}

static __always_inline struct sluice_ct_key reversed(const struct sluice_ct_key *tuple)
{
    struct sluice_ct_key reply = { .saddr_be = tuple->daddr_be, .daddr_be = tuple->saddr_be,
                                   .sport_be = tuple->dport_be, .dport_be = tuple->sport_be,
                                   .protocol = tuple->protocol };
    return reply;
}

/* Hands the packet to the proxy: first a socket already serving this 4-tuple (the accepted
 * connection), else the listener on 127.0.0.1:proxy_port. Returns 0 when assigned. */
static __always_inline int assign_to_proxy(struct __sk_buff *skb, const struct packet *packet, __u16 proxy_port)
{
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock *sk = 0;
    long result;
    if (packet->tuple.protocol == IPPROTO_TCP) {
        tuple.ipv4.saddr = packet->tuple.saddr_be;
        tuple.ipv4.daddr = packet->tuple.daddr_be;
        tuple.ipv4.sport = packet->tuple.sport_be;
        tuple.ipv4.dport = packet->tuple.dport_be;
        sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
        if (sk) {
            if (sk->state != TCP_LISTEN && sk->state != TCP_TIME_WAIT)
                goto assign;
            /* A new SYN on the tuple of a connection the proxy closed first meets that
             * connection's TIME_WAIT socket. Handing the SYN to the listener would fail
             * (the tuple is taken) and cost the client a 1 s retransmit; handing it to the
             * TIME_WAIT socket lets the kernel retire it and look for a listener, which
             * sluice_listener_lookup answers with the proxy's. */
            if (sk->state == TCP_TIME_WAIT && packet->tcp_flags_syn)
                goto assign;
            bpf_sk_release(sk);
            sk = 0;
        }
        tuple.ipv4.daddr = LOCALHOST_BE;
        tuple.ipv4.dport = bpf_htons(proxy_port);
        sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
    } else if (packet->tuple.protocol == IPPROTO_UDP) {
        tuple.ipv4.saddr = packet->tuple.saddr_be;
        tuple.ipv4.sport = packet->tuple.sport_be;
        tuple.ipv4.daddr = LOCALHOST_BE;
        tuple.ipv4.dport = bpf_htons(proxy_port);
        sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
    }
    if (!sk)
        return -1;
assign:
    result = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (result != 0)
        return -1;
    skb->mark = SLUICE_MARK_TO_PROXY | ((__u32)proxy_port << 16);
    return 0;
}

static __always_inline int redirect(struct __sk_buff *skb, const struct packet *packet, struct decision decision,
                                    struct sluice_ipcache_value source, struct sluice_ipcache_value destination,
                                    int new_flow)
{
    if (assign_to_proxy(skb, packet, decision.proxy_port) != 0)
        return drop(skb, packet, SLUICE_DROP_PROXY_UNAVAILABLE, decision.direction, source.identity,
                    destination.identity, decision.rule);
    count(SLUICE_COUNT_REDIRECTED);
    if (new_flow) {
        remember(packet, decision.proxy_port);
        emit(skb, packet, SLUICE_EVENT_REDIRECT, 0, decision.direction, source.identity, destination.identity,
             decision.proxy_port, decision.rule);
    }
    return TC_ACT_OK;
}

SEC("tc")
int sluice_from_wire(struct __sk_buff *skb)
{
    struct packet packet;
    int parsed = parse(skb, &packet);
    if (parsed == 1) {
        count(SLUICE_COUNT_NOT_IP);
        return TC_ACT_OK;
    }
    if (parsed == 2) {
        /* IPv6 neighbour discovery keeps links alive; other IPv6 is not enforced yet. */
        return TC_ACT_OK;
    }
    if (parsed < 0) {
        __builtin_memset(&packet, 0, sizeof(packet));
        return drop(skb, &packet, SLUICE_DROP_MALFORMED, 0, 0, 0, 0);
    }
    if ((skb->mark & SLUICE_MARK_MASK) == SLUICE_MARK_FROM_PROXY) {
        count(SLUICE_COUNT_PROXY_PASS);
        return TC_ACT_OK;
    }

    struct sluice_ct_value *known = bpf_map_lookup_elem(&sluice_ct, &packet.tuple);
    struct sluice_ipcache_value source = identify(packet.tuple.saddr_be);
    struct sluice_ipcache_value destination = identify(packet.tuple.daddr_be);
    if (known) {
        count(SLUICE_COUNT_ESTABLISHED);
        if (known->proxy_port) {
            struct decision decision = { .action = SLUICE_ACTION_REDIRECT, .proxy_port = known->proxy_port };
            return redirect(skb, &packet, decision, source, destination, 0);
        }
        skb->mark = (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_ALLOWED;
        return TC_ACT_OK;
    }
    struct sluice_ct_key reply = reversed(&packet.tuple);
    if (bpf_map_lookup_elem(&sluice_ct, &reply)) {
        count(SLUICE_COUNT_ESTABLISHED);
        skb->mark = (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_ALLOWED;
        return TC_ACT_OK;
    }
    if (packet.later_fragment) {
        if (!(source.flags & SLUICE_ADDRESS_LOCAL_ENDPOINT) && !(destination.flags & SLUICE_ADDRESS_LOCAL_ENDPOINT))
            return TC_ACT_OK;
        return drop(skb, &packet, SLUICE_DROP_FRAGMENT, 0, source.identity, destination.identity, 0);
    }

    struct decision decision = decide(&packet, source, destination);
    if (decision.action == SLUICE_ACTION_DENY)
        return drop(skb, &packet, decision.reason, decision.direction, source.identity, destination.identity,
                    decision.rule);
    if (decision.action == SLUICE_ACTION_REDIRECT)
        return redirect(skb, &packet, decision, source, destination, 1);
    count(SLUICE_COUNT_ALLOWED);
    remember(&packet, 0);
    skb->mark = (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_ALLOWED;
    return TC_ACT_OK;
}

SEC("tc")
int sluice_to_wire(struct __sk_buff *skb)
{
    struct packet packet;
    int parsed = parse(skb, &packet);
    if (parsed == 1 || parsed == 2)
        return TC_ACT_OK;
    if (parsed < 0) {
        __builtin_memset(&packet, 0, sizeof(packet));
        return drop(skb, &packet, SLUICE_DROP_MALFORMED, 0, 0, 0, 0);
    }
    __u32 mark = skb->mark & SLUICE_MARK_MASK;
    if (mark == SLUICE_MARK_ALLOWED)
        return TC_ACT_OK;
    if (mark == SLUICE_MARK_FROM_PROXY) {
        /* The proxy's upstream leg: already decided when the client's flow was diverted. */
        count(SLUICE_COUNT_PROXY_PASS);
        if (!bpf_map_lookup_elem(&sluice_ct, &packet.tuple))
            remember(&packet, 0);
        return TC_ACT_OK;
    }
    if (bpf_map_lookup_elem(&sluice_ct, &packet.tuple)) {
        count(SLUICE_COUNT_ESTABLISHED);
        return TC_ACT_OK;
    }
    struct sluice_ct_key reply = reversed(&packet.tuple);
    if (bpf_map_lookup_elem(&sluice_ct, &reply)) {
        /* A reply of a known flow, including the proxy answering a diverted client. */
        count(SLUICE_COUNT_ESTABLISHED);
        return TC_ACT_OK;
    }
    if (packet.later_fragment)
        return TC_ACT_OK;
    /* The node itself starts a flow toward an endpoint: the host is the peer. */
    struct sluice_ipcache_value source = identify(packet.tuple.saddr_be);
    struct sluice_ipcache_value destination = identify(packet.tuple.daddr_be);
    source.flags = 0; /* the node's own egress is not an endpoint's */
    struct decision decision = decide(&packet, source, destination);
    if (decision.action == SLUICE_ACTION_DENY)
        return drop(skb, &packet, decision.reason, decision.direction, source.identity, destination.identity,
                    decision.rule);
    count(SLUICE_COUNT_ALLOWED);
    remember(&packet, 0);
    return TC_ACT_OK;
}

/* sk_lookup, attached to the node's network namespace: when the kernel looks for a
 * listener for a flow the datapath diverts (it does so after retiring a TIME_WAIT socket
 * for a new SYN), answer with the proxy's listener for that flow. */
SEC("sk_lookup")
int sluice_listener_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->family != 2 /* AF_INET */ || ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    struct sluice_ct_key key = {
        .saddr_be = ctx->remote_ip4,
        .daddr_be = ctx->local_ip4,
        .sport_be = (__u16)ctx->remote_port,
        .dport_be = bpf_htons((__u16)ctx->local_port),
        .protocol = IPPROTO_TCP,
    };
    struct sluice_ct_value *flow = bpf_map_lookup_elem(&sluice_ct, &key);
    if (!flow || !flow->proxy_port)
        return SK_PASS;
    __u32 port = flow->proxy_port;
    struct bpf_sock *listener = bpf_map_lookup_elem(&sluice_listeners, &port);
    if (!listener)
        return SK_PASS;
    bpf_sk_assign(ctx, listener, 0);
    bpf_sk_release(listener);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
