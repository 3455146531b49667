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
 *       the host as the peer; a redirect turns the packet back into the node's ingress on
 *       the same interface (bpf_redirect with BPF_F_INGRESS, the Ethernet addresses
 *       swapped so it is addressed to the node), where sluice_from_wire hands it to the
 *       proxy like an endpoint's: the node's own flows to L7 ports go through sluice too.
 *       (IPv4 needs accept_local on the interface: the source is the node's own address.)
 *
 * IPv6 is judged like IPv4, with its own identity map (sluice_ipcache6) and connection
 * table (sluice_ct6); policy keys are by identity and shared. The IPv6 header chain is
 * walked (hop-by-hop, destination options, routing, fragment, AH) up to
 * SLUICE_IPV6_MAX_EXTENSION_HEADERS; what cannot be judged is dropped: too many headers, a
 * routing header with segments left, a first fragment without its L4 header (truncated),
 * later fragments of flows under policy, IPv4-mapped addresses. Neighbour discovery and
 * router messages (hop limit 255) and multicast listener messages (hop limit 1) pass
 * unjudged: they cannot leave the link. Every other ICMPv6 type meets the policy.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
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
#define IP6_OFFSET 0xfff8
#define IP6_MF 0x0001
#define LOCALHOST6_LAST_BE 0x01000000 /* the last word of ::1 in network byte order, little-endian host */
#define IPPROTO_ICMPV6_NUMBER 58
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
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, SLUICE_IPCACHE_ENTRIES);
    __type(key, struct sluice_ipcache6_key);
    __type(value, struct sluice_ipcache_value);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ipcache6 SEC(".maps");

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
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, SLUICE_FQDN_ENTRIES);
    __type(key, struct sluice_fqdn6_key);
    __type(value, struct sluice_fqdn_value);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_fqdn6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, SLUICE_CT_ENTRIES);
    __type(key, struct sluice_ct_key);
    __type(value, struct sluice_ct_value);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, SLUICE_CT_ENTRIES);
    __type(key, struct sluice_ct6_key);
    __type(value, struct sluice_ct_value);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct6 SEC(".maps");

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

/* One packet's flow in its family's shape (tuple for IPv4, tuple6 for IPv6), with the
 * family-neutral facts the policy needs copied out. */
struct packet {
    __u8 family;              /* 4 or 6 */
    __u8 first_fragment;
    __u8 later_fragment;
    __u8 tcp_flags_syn;
    __u8 protocol;            /* the L4 protocol (IPv6: after the extension headers) */
    __u8 icmp_type;           /* ICMPv6 type */
    __u8 hop_limit;           /* IPv6 */
    __u8 pad;
    __u16 dport_be;
    __u16 pad2;
    struct sluice_ct_key tuple;
    struct sluice_ct6_key tuple6;
};

/* parse() results. */
#define PARSE_OK         0
#define PARSE_NOT_IP     1
#define PARSE_TRUNCATED  2 /* -> SLUICE_DROP_MALFORMED */
#define PARSE_EXTENSION  3 /* -> SLUICE_DROP_EXTENSION_HEADER */
#define PARSE_MAPPED     4 /* -> SLUICE_DROP_MAPPED_ADDRESS */

/* Writes skb->mark. The barrier keeps the compiler from precomputing &skb->mark and
 * spilling it: the verifier refuses a store through a modified context pointer. */
static __always_inline void set_mark(struct __sk_buff *skb, __u32 mark)
{
    asm volatile("" : "+r"(skb));
    skb->mark = mark;
}

static __always_inline __u32 get_mark(struct __sk_buff *skb)
{
    asm volatile("" : "+r"(skb));
    return skb->mark;
}

static __always_inline void count_slot(__u32 slot)
{
    __u64 *value = bpf_map_lookup_elem(&sluice_counters, &slot);
    if (value)
        *value += 1;
}

/* Counts under the packet's family (IPv6 counters sit SLUICE_COUNTER_IPV6 further on). */
static __always_inline void count(const struct packet *packet, __u32 slot)
{
    count_slot(packet->family == 6 ? slot + SLUICE_COUNTER_IPV6 : slot);
}

static __always_inline void emit(struct __sk_buff *skb, const struct packet *packet, __u8 kind, __u8 reason,
                                 __u8 direction, __u32 source, __u32 destination, __u16 proxy_port, __u32 rule)
{
    struct sluice_event *event = bpf_ringbuf_reserve(&sluice_events, sizeof(*event), 0);
    if (!event)
        return; /* a full ring loses the event, never the verdict; the counter still counts */
    event->timestamp_ns = bpf_ktime_get_ns();
    if (packet->family == 6) {
        __builtin_memcpy(event->saddr_be, packet->tuple6.saddr_be, 16);
        __builtin_memcpy(event->daddr_be, packet->tuple6.daddr_be, 16);
        event->sport_be = packet->tuple6.sport_be;
        event->dport_be = packet->tuple6.dport_be;
        event->family = 6;
    } else {
        __builtin_memset(event->saddr_be, 0, 16);
        __builtin_memset(event->daddr_be, 0, 16);
        event->saddr_be[0] = packet->tuple.saddr_be;
        event->daddr_be[0] = packet->tuple.daddr_be;
        event->sport_be = packet->tuple.sport_be;
        event->dport_be = packet->tuple.dport_be;
        event->family = 4;
    }
    event->protocol = packet->protocol;
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
    count(packet, reason);
    emit(skb, packet, SLUICE_EVENT_DROP, reason, direction, source, destination, 0, rule);
    return TC_ACT_SHOT;
}

/* A packet parse() would not judge: dropped with the matching reason. */
static __always_inline int reject(struct __sk_buff *skb, const struct packet *packet, int parsed)
{
    __u8 reason = parsed == PARSE_EXTENSION ? SLUICE_DROP_EXTENSION_HEADER
                : parsed == PARSE_MAPPED ? SLUICE_DROP_MAPPED_ADDRESS : SLUICE_DROP_MALFORMED;
    return drop(skb, packet, reason, 0, 0, 0, 0);
}

/* IPv4 and the ports of TCP/UDP/SCTP, from the linear data. */
static __always_inline int parse4(struct __sk_buff *skb, struct packet *packet)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    if ((void *)(ip + 1) > data_end || ip->ihl < 5)
        return PARSE_TRUNCATED;
    packet->tuple.saddr_be = ip->saddr;
    packet->tuple.daddr_be = ip->daddr;
    packet->tuple.protocol = ip->protocol;
    packet->protocol = ip->protocol;
    __u16 fragment = bpf_ntohs(ip->frag_off);
    if (fragment & IP_OFFSET) {
        packet->later_fragment = 1; /* no L4 header here */
        return PARSE_OK;
    }
    packet->first_fragment = (fragment & IP_MF) != 0;
    void *l4 = (void *)ip + ip->ihl * 4;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end)
            return PARSE_TRUNCATED;
        packet->tuple.sport_be = tcp->source;
        packet->tuple.dport_be = tcp->dest;
        packet->tcp_flags_syn = tcp->syn && !tcp->ack;
    } else if (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_SCTP) {
        /* SCTP's common header starts with the same two ports as UDP. */
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end)
            return PARSE_TRUNCATED;
        packet->tuple.sport_be = udp->source;
        packet->tuple.dport_be = udp->dest;
    }
    packet->dport_be = packet->tuple.dport_be;
    return PARSE_OK;
}

static __always_inline int ipv4_mapped(const __u32 *address_be)
{
    return address_be[0] == 0 && address_be[1] == 0 && address_be[2] == bpf_htonl(0xffff);
}

/* Headers that may stand between the IPv6 header and the L4 header (RFC 8200 4.1). ESP is
 * not one: what follows it is encrypted, so ESP is judged as the L4 protocol. */
static __always_inline int ipv6_extension(__u8 next)
{
    return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_FRAGMENT ||
           next == IPPROTO_DSTOPTS || next == IPPROTO_AH;
}

/* IPv6: walks the extension headers and reads the L4 ports, through bpf_skb_load_bytes
 * (headers may lie beyond the linear data). */
static __always_inline int parse6(struct __sk_buff *skb, struct packet *packet)
{
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)) != 0)
        return PARSE_TRUNCATED;
    __builtin_memcpy(packet->tuple6.saddr_be, &ip6.saddr, 16);
    __builtin_memcpy(packet->tuple6.daddr_be, &ip6.daddr, 16);
    packet->hop_limit = ip6.hop_limit;
    if (ipv4_mapped(packet->tuple6.saddr_be) || ipv4_mapped(packet->tuple6.daddr_be))
        return PARSE_MAPPED;
    __u8 next = ip6.nexthdr;
    __u32 offset = sizeof(struct ethhdr) + sizeof(ip6);
#pragma unroll
    for (int i = 0; i < SLUICE_IPV6_MAX_EXTENSION_HEADERS; i++) {
        if (next == IPPROTO_FRAGMENT) {
            __u8 header[8]; /* next header, reserved, offset and flags, identification */
            if (bpf_skb_load_bytes(skb, offset, header, sizeof(header)) != 0)
                return PARSE_TRUNCATED;
            __u16 fragment = ((__u16)header[2] << 8) | header[3];
            next = header[0];
            offset += sizeof(header);
            if (fragment & IP6_OFFSET) {
                packet->later_fragment = 1; /* no L4 header here */
                packet->protocol = next;
                packet->tuple6.protocol = next;
                return PARSE_OK;
            }
            packet->first_fragment = (fragment & IP6_MF) != 0;
        } else if (ipv6_extension(next)) {
            __u8 header[4]; /* next header, length, and for routing: type, segments left */
            if (bpf_skb_load_bytes(skb, offset, header, sizeof(header)) != 0)
                return PARSE_TRUNCATED;
            /* Segments left: the packet is bound further than its destination address says. */
            if (next == IPPROTO_ROUTING && header[3] != 0)
                return PARSE_EXTENSION;
            /* AH counts its length in 4-byte units less 2 (RFC 4302), the others in 8-byte
             * units less 1 (RFC 8200). */
            offset += next == IPPROTO_AH ? ((__u32)header[1] + 2) * 4 : ((__u32)header[1] + 1) * 8;
            next = header[0];
        } else {
            break;
        }
    }
    if (ipv6_extension(next))
        return PARSE_EXTENSION;
    packet->protocol = next;
    packet->tuple6.protocol = next;
    if (next == IPPROTO_TCP) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, offset, &tcp, sizeof(tcp)) != 0)
            return PARSE_TRUNCATED; /* also a first fragment that hides the TCP header */
        packet->tuple6.sport_be = tcp.source;
        packet->tuple6.dport_be = tcp.dest;
        packet->tcp_flags_syn = tcp.syn && !tcp.ack;
    } else if (next == IPPROTO_UDP || next == IPPROTO_SCTP) {
        __u16 ports[2];
        if (bpf_skb_load_bytes(skb, offset, ports, sizeof(ports)) != 0)
            return PARSE_TRUNCATED;
        packet->tuple6.sport_be = ports[0];
        packet->tuple6.dport_be = ports[1];
    } else if (next == IPPROTO_ICMPV6_NUMBER) {
        __u8 type;
        if (bpf_skb_load_bytes(skb, offset, &type, 1) != 0)
            return PARSE_TRUNCATED;
        packet->icmp_type = type;
    }
    packet->dport_be = packet->tuple6.dport_be;
    return PARSE_OK;
}

static __always_inline int parse(struct __sk_buff *skb, struct packet *packet)
{
    __builtin_memset(packet, 0, sizeof(*packet));
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return PARSE_TRUNCATED;
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        packet->family = 6;
        return parse6(skb, packet);
    }
    if (eth->h_proto != bpf_htons(ETH_P_IP))
        return PARSE_NOT_IP;
    packet->family = 4;
    return parse4(skb, packet);
}

/* Neighbour discovery and router messages (RFC 4861: hop limit 255 on receipt, so never
 * forwarded) and multicast listener messages (RFC 2710/3810: hop limit 1): what endpoints
 * need to keep their link, and nothing that can reach past it. */
static __always_inline int link_control(const struct packet *packet)
{
    if (packet->family != 6 || packet->protocol != IPPROTO_ICMPV6_NUMBER || packet->later_fragment)
        return 0;
    __u8 type = packet->icmp_type;
    if (type >= 133 && type <= 137)
        return packet->hop_limit == 255;
    if (type == 130 || type == 131 || type == 132 || type == 143)
        return packet->hop_limit == 1;
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

static __always_inline struct sluice_ipcache_value identify6(const __u32 *addr_be)
{
    struct sluice_ipcache6_key key = { .prefixlen = 128 };
    __builtin_memcpy(key.addr_be, addr_be, 16);
    struct sluice_ipcache_value *found = bpf_map_lookup_elem(&sluice_ipcache6, &key);
    struct sluice_ipcache_value result = { .identity = SLUICE_IDENTITY_WORLD_IPV6, .flags = 0 };
    if (found)
        result = *found;
    return result;
}

static __always_inline struct sluice_ipcache_value identify_source(const struct packet *packet)
{
    return packet->family == 6 ? identify6(packet->tuple6.saddr_be) : identify(packet->tuple.saddr_be);
}

static __always_inline struct sluice_ipcache_value identify_destination(const struct packet *packet)
{
    return packet->family == 6 ? identify6(packet->tuple6.daddr_be) : identify(packet->tuple.daddr_be);
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

static __always_inline struct sluice_fqdn_value *learned_entry(const struct packet *packet, __u32 endpoint, __u16 port)
{
    if (packet->family == 6) {
        struct sluice_fqdn6_key key = { .endpoint_identity = endpoint, .port = port, .protocol = packet->protocol };
        __builtin_memcpy(key.addr_be, packet->tuple6.daddr_be, 16);
        return bpf_map_lookup_elem(&sluice_fqdn6, &key);
    }
    struct sluice_fqdn_key key = { .endpoint_identity = endpoint, .addr_be = packet->tuple.daddr_be, .port = port,
                                   .protocol = packet->protocol };
    return bpf_map_lookup_elem(&sluice_fqdn, &key);
}

/* An egress flow the policy drops by default may go to an address the endpoint learned from
 * an allowed DNS answer (toFQDNs, A records into sluice_fqdn, AAAA into sluice_fqdn6): the
 * exact port's entry, else the every-port one, while it has not expired. */
static __always_inline void learned(struct decision *egress, const struct packet *packet, __u32 endpoint, __u16 port)
{
    struct sluice_fqdn_value *found = learned_entry(packet, endpoint, port);
    if (!found)
        found = learned_entry(packet, endpoint, 0);
    if (!found || found->action == SLUICE_ACTION_DENY)
        return;
    if (found->expires_ns && bpf_ktime_get_ns() >= found->expires_ns) {
        count(packet, SLUICE_COUNT_FQDN_EXPIRED);
        return;
    }
    count(packet, SLUICE_COUNT_FQDN_ALLOWED);
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
    __u16 port = bpf_ntohs(packet->dport_be);
    struct decision egress = { .action = SLUICE_ACTION_ALLOW, .direction = SLUICE_DIRECTION_EGRESS };
    struct decision ingress = { .action = SLUICE_ACTION_ALLOW, .direction = SLUICE_DIRECTION_INGRESS };
    if (source.flags & SLUICE_ADDRESS_LOCAL_ENDPOINT) {
        egress = policy_for(source.identity, SLUICE_DIRECTION_EGRESS, destination.identity, port, packet->protocol);
        if (egress.action == SLUICE_ACTION_DENY && egress.reason == SLUICE_DROP_POLICY_DEFAULT)
            learned(&egress, packet, source.identity, port);
    }
    if (destination.flags & SLUICE_ADDRESS_LOCAL_ENDPOINT)
        ingress = policy_for(destination.identity, SLUICE_DIRECTION_INGRESS, source.identity, port, packet->protocol);
    if (egress.action == SLUICE_ACTION_DENY)
        return egress;
    if (ingress.action == SLUICE_ACTION_DENY)
        return ingress;
    if (egress.action == SLUICE_ACTION_REDIRECT)
        return egress;
    return ingress;
}

/* Connection tracking, in the packet's family's table. */
static __always_inline struct sluice_ct_value *tracked(const struct packet *packet)
{
    if (packet->family == 6)
        return bpf_map_lookup_elem(&sluice_ct6, &packet->tuple6);
    return bpf_map_lookup_elem(&sluice_ct, &packet->tuple);
}

/* The flow this packet answers, if tracked. */
static __always_inline struct sluice_ct_value *tracked_reply(const struct packet *packet)
{
    if (packet->family == 6) {
        struct sluice_ct6_key reply = { .sport_be = packet->tuple6.dport_be, .dport_be = packet->tuple6.sport_be,
                                        .protocol = packet->tuple6.protocol };
        __builtin_memcpy(reply.saddr_be, packet->tuple6.daddr_be, 16);
        __builtin_memcpy(reply.daddr_be, packet->tuple6.saddr_be, 16);
        return bpf_map_lookup_elem(&sluice_ct6, &reply);
    }
    struct sluice_ct_key reply = { .saddr_be = packet->tuple.daddr_be, .daddr_be = packet->tuple.saddr_be,
                                   .sport_be = packet->tuple.dport_be, .dport_be = packet->tuple.sport_be,
                                   .protocol = packet->tuple.protocol };
    return bpf_map_lookup_elem(&sluice_ct, &reply);
}

static __always_inline void remember_flow(const struct packet *packet, __u16 proxy_port, __u8 flags)
{
    struct sluice_ct_value value = { .created_ns = bpf_ktime_get_ns(), .proxy_port = proxy_port, .flags = flags };
    if (packet->family == 6)
        bpf_map_update_elem(&sluice_ct6, &packet->tuple6, &value, BPF_ANY);
    else
        bpf_map_update_elem(&sluice_ct, &packet->tuple, &value, BPF_ANY);
}

static __always_inline void remember(const struct packet *packet, __u16 proxy_port)
{
    remember_flow(packet, proxy_port, 0);
}

static __always_inline struct bpf_sock *lookup_tcp(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u8 family)
{
    if (family == 6)
        return bpf_skc_lookup_tcp(skb, tuple, sizeof(tuple->ipv6), BPF_F_CURRENT_NETNS, 0);
    return bpf_skc_lookup_tcp(skb, tuple, sizeof(tuple->ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* Points the tuple's destination at the proxy's listener: 127.0.0.1 or [::1], port proxy_port. */
static __always_inline void to_listener(struct bpf_sock_tuple *tuple, __u8 family, __u16 proxy_port)
{
    if (family == 6) {
        tuple->ipv6.daddr[0] = 0;
        tuple->ipv6.daddr[1] = 0;
        tuple->ipv6.daddr[2] = 0;
        tuple->ipv6.daddr[3] = LOCALHOST6_LAST_BE;
        tuple->ipv6.dport = bpf_htons(proxy_port);
    } else {
        tuple->ipv4.daddr = LOCALHOST_BE;
        tuple->ipv4.dport = bpf_htons(proxy_port);
    }
}

/* Hands the packet to the proxy: first a socket already serving this 4-tuple (the accepted
 * connection), else the listener on 127.0.0.1:proxy_port ([::1]:proxy_port for IPv6).
 * Returns 0 when assigned. */
static __always_inline int assign_to_proxy(struct __sk_buff *skb, const struct packet *packet, __u16 proxy_port)
{
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock *sk = 0;
    long result;
    __u8 family = packet->family;
    if (family == 6) {
        __builtin_memcpy(tuple.ipv6.saddr, packet->tuple6.saddr_be, 16);
        __builtin_memcpy(tuple.ipv6.daddr, packet->tuple6.daddr_be, 16);
        tuple.ipv6.sport = packet->tuple6.sport_be;
        tuple.ipv6.dport = packet->tuple6.dport_be;
    } else {
        tuple.ipv4.saddr = packet->tuple.saddr_be;
        tuple.ipv4.daddr = packet->tuple.daddr_be;
        tuple.ipv4.sport = packet->tuple.sport_be;
        tuple.ipv4.dport = packet->tuple.dport_be;
    }
    if (packet->protocol == IPPROTO_TCP) {
        sk = lookup_tcp(skb, &tuple, family);
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
        to_listener(&tuple, family, proxy_port);
        sk = lookup_tcp(skb, &tuple, family);
    } else if (packet->protocol == IPPROTO_UDP) {
        to_listener(&tuple, family, proxy_port);
        if (family == 6)
            sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
        else
            sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
    }
    if (!sk)
        return -1;
assign:
    result = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (result != 0)
        return -1;
    set_mark(skb, SLUICE_MARK_TO_PROXY | ((__u32)proxy_port << 16));
    return 0;
}

static __always_inline int redirect(struct __sk_buff *skb, const struct packet *packet, struct decision decision,
                                    struct sluice_ipcache_value source, struct sluice_ipcache_value destination,
                                    int new_flow)
{
    if (assign_to_proxy(skb, packet, decision.proxy_port) != 0)
        return drop(skb, packet, SLUICE_DROP_PROXY_UNAVAILABLE, decision.direction, source.identity,
                    destination.identity, decision.rule);
    count(packet, SLUICE_COUNT_REDIRECTED);
    if (new_flow) {
        remember(packet, decision.proxy_port);
        emit(skb, packet, SLUICE_EVENT_REDIRECT, 0, decision.direction, source.identity, destination.identity,
             decision.proxy_port, decision.rule);
    }
    return TC_ACT_OK;
}

/* A reply to one of the proxy's upstream connections. The proxy connects upstream from the
 * client's own address (IP_TRANSPARENT), so the server answers an address that is not the
 * node's: routed on, the reply would reach the client past the proxy. It goes instead to the
 * socket that owns its exact 4-tuple (the proxy's upstream socket), marked for local
 * delivery; without such a socket it is dropped (fail closed). Replies to the node's own
 * address take the same path (the socket is found just as well). */
static __always_inline int to_upstream_socket(struct __sk_buff *skb, const struct packet *packet,
                                              struct sluice_ipcache_value source,
                                              struct sluice_ipcache_value destination)
{
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock *sk = 0;
    __u8 family = packet->family;
    __u16 sport_be;
    if (family == 6) {
        __builtin_memcpy(tuple.ipv6.saddr, packet->tuple6.saddr_be, 16);
        __builtin_memcpy(tuple.ipv6.daddr, packet->tuple6.daddr_be, 16);
        tuple.ipv6.sport = packet->tuple6.sport_be;
        tuple.ipv6.dport = packet->tuple6.dport_be;
        sport_be = packet->tuple6.sport_be;
    } else {
        tuple.ipv4.saddr = packet->tuple.saddr_be;
        tuple.ipv4.daddr = packet->tuple.daddr_be;
        tuple.ipv4.sport = packet->tuple.sport_be;
        tuple.ipv4.dport = packet->tuple.dport_be;
        sport_be = packet->tuple.sport_be;
    }
    /* Only a connected socket of this very flow: a listener or an unconnected socket that
     * happens to match the address and port is not the proxy's upstream leg. (The fields
     * are read in each branch: the verifier will not let one load serve both the
     * sock_common of a TCP lookup and the full socket of a UDP one.) */
    int foreign = 1;
    if (packet->protocol == IPPROTO_TCP) {
        sk = lookup_tcp(skb, &tuple, family);
        if (sk)
            foreign = sk->state == TCP_LISTEN || sk->dst_port != sport_be;
    } else if (packet->protocol == IPPROTO_UDP) {
        if (family == 6)
            sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
        else
            sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
        if (sk)
            foreign = sk->dst_port != sport_be;
    }
    if (!sk)
        return drop(skb, packet, SLUICE_DROP_UPSTREAM_GONE, 0, source.identity, destination.identity, 0);
    if (foreign) {
        bpf_sk_release(sk);
        return drop(skb, packet, SLUICE_DROP_UPSTREAM_GONE, 0, source.identity, destination.identity, 0);
    }
    long result = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (result != 0)
        return drop(skb, packet, SLUICE_DROP_UPSTREAM_GONE, 0, source.identity, destination.identity, 0);
    set_mark(skb, (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_TO_PROXY);
    count(packet, SLUICE_COUNT_UPSTREAM_REPLY);
    return TC_ACT_OK;
}

SEC("tc")
int sluice_from_wire(struct __sk_buff *skb)
{
    struct packet packet;
    int parsed = parse(skb, &packet);
    if (parsed == PARSE_NOT_IP) {
        count_slot(SLUICE_COUNT_NOT_IP);
        return TC_ACT_OK;
    }
    if (parsed != PARSE_OK)
        return reject(skb, &packet, parsed);
    if (link_control(&packet)) {
        count(&packet, SLUICE_COUNT_NEIGHBOUR);
        return TC_ACT_OK;
    }
    __u32 arrived = get_mark(skb) & SLUICE_MARK_MASK;
    if (arrived == SLUICE_MARK_FROM_PROXY) {
        count(&packet, SLUICE_COUNT_PROXY_PASS);
        return TC_ACT_OK;
    }

    struct sluice_ct_value *known = tracked(&packet);
    /* An upstream flow of the proxy is never a wire peer's flow in the same direction. */
    if (known && (known->flags & SLUICE_CT_PROXY_UPSTREAM))
        known = 0;
    struct sluice_ipcache_value source = identify_source(&packet);
    struct sluice_ipcache_value destination = identify_destination(&packet);
    /* The node's own addresses arrive from the wire only when sluice_to_wire turned the
     * node's packet back (marked): anything else claiming them is spoofed. */
    if (source.identity == SLUICE_IDENTITY_HOST && arrived != SLUICE_MARK_FROM_NODE)
        return drop(skb, &packet, SLUICE_DROP_SPOOFED_HOST, 0, source.identity, destination.identity, 0);
    if (known) {
        count(&packet, SLUICE_COUNT_ESTABLISHED);
        if (known->proxy_port) {
            struct decision decision = { .action = SLUICE_ACTION_REDIRECT, .proxy_port = known->proxy_port };
            return redirect(skb, &packet, decision, source, destination, 0);
        }
        set_mark(skb, (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_ALLOWED);
        return TC_ACT_OK;
    }
    struct sluice_ct_value *answered = tracked_reply(&packet);
    if (answered) {
        count(&packet, SLUICE_COUNT_ESTABLISHED);
        /* A reply in a diverted flow's tuple (the proxy kept the client's port), or in the
         * tuple of an upstream flow the proxy opened: the proxy's socket takes it. */
        if (answered->proxy_port || (answered->flags & SLUICE_CT_PROXY_UPSTREAM))
            return to_upstream_socket(skb, &packet, source, destination);
        set_mark(skb, (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_ALLOWED);
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
    count(&packet, SLUICE_COUNT_ALLOWED);
    remember(&packet, 0);
    set_mark(skb, (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_ALLOWED);
    return TC_ACT_OK;
}

/* The node's own packet of a flow diverted to the proxy: back into the node's ingress on
 * this interface, addressed to the node (Ethernet addresses swapped), where
 * sluice_from_wire assigns it to the proxy's socket. */
static __always_inline int loop_to_proxy(struct __sk_buff *skb)
{
    __u8 addresses[12];
    if (bpf_skb_load_bytes(skb, 0, addresses, sizeof(addresses)) != 0)
        return TC_ACT_SHOT;
    __u8 swapped[12];
    __builtin_memcpy(swapped, addresses + 6, 6);
    __builtin_memcpy(swapped + 6, addresses, 6);
    if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) != 0)
        return TC_ACT_SHOT;
    set_mark(skb, (skb->mark & ~SLUICE_MARK_MASK) | SLUICE_MARK_FROM_NODE);
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

SEC("tc")
int sluice_to_wire(struct __sk_buff *skb)
{
    struct packet packet;
    int parsed = parse(skb, &packet);
    if (parsed == PARSE_NOT_IP)
        return TC_ACT_OK;
    if (parsed != PARSE_OK)
        return reject(skb, &packet, parsed);
    if (link_control(&packet)) {
        count(&packet, SLUICE_COUNT_NEIGHBOUR);
        return TC_ACT_OK;
    }
    __u32 mark = skb->mark & SLUICE_MARK_MASK;
    if (mark == SLUICE_MARK_ALLOWED)
        return TC_ACT_OK;
    if (mark == SLUICE_MARK_FROM_PROXY) {
        /* The proxy's upstream leg: already decided when the client's flow was diverted. */
        count(&packet, SLUICE_COUNT_PROXY_PASS);
        /* Remembered so the replies find their way back to the proxy's socket. A flow the
         * proxy opened in the diverted flow's own tuple (the client's address and port) is
         * known already, by its proxy port; and the proxy answering a diverted client (a UDP
         * reply socket sending from the original destination) is a reply of that flow, not
         * an upstream flow: remembered as one, it would make the server's next answer in the
         * same tuple (a client reusing its port) pass the proxy by. */
        if (!tracked(&packet) && !tracked_reply(&packet))
            remember_flow(&packet, 0, SLUICE_CT_PROXY_UPSTREAM);
        return TC_ACT_OK;
    }
    struct sluice_ct_value *known = tracked(&packet);
    if (known) {
        count(&packet, SLUICE_COUNT_ESTABLISHED);
        /* Only the node's own flows are tracked with a proxy port in this direction (an
         * endpoint's diverted packets never leave the node). */
        if (known->proxy_port)
            return loop_to_proxy(skb);
        return TC_ACT_OK;
    }
    if (tracked_reply(&packet)) {
        /* A reply of a known flow, including the proxy answering a diverted client. */
        count(&packet, SLUICE_COUNT_ESTABLISHED);
        return TC_ACT_OK;
    }
    if (packet.later_fragment)
        return TC_ACT_OK;
    /* The node itself starts a flow toward an endpoint: the host is the peer. */
    struct sluice_ipcache_value source = identify_source(&packet);
    struct sluice_ipcache_value destination = identify_destination(&packet);
    source.flags = 0; /* the node's own egress is not an endpoint's */
    struct decision decision = decide(&packet, source, destination);
    if (decision.action == SLUICE_ACTION_DENY)
        return drop(skb, &packet, decision.reason, decision.direction, source.identity, destination.identity,
                    decision.rule);
    if (decision.action == SLUICE_ACTION_REDIRECT) {
        /* The node's own flow to an L7 port: through the proxy, like an endpoint's. */
        count(&packet, SLUICE_COUNT_REDIRECTED);
        remember(&packet, decision.proxy_port);
        emit(skb, &packet, SLUICE_EVENT_REDIRECT, 0, decision.direction, source.identity, destination.identity,
             decision.proxy_port, decision.rule);
        return loop_to_proxy(skb);
    }
    count(&packet, SLUICE_COUNT_ALLOWED);
    remember(&packet, 0);
    return TC_ACT_OK;
}

/* sk_lookup, attached to the node's network namespace: when the kernel looks for a
 * listener for a flow the datapath diverts (it does so after retiring a TIME_WAIT socket
 * for a new SYN), answer with the proxy's listener for that flow (IPv4 or IPv6). */
SEC("sk_lookup")
int sluice_listener_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    struct sluice_ct_value *flow = 0;
    __u32 port;
    if (ctx->family == 2 /* AF_INET */) {
        struct sluice_ct_key key = {
            .saddr_be = ctx->remote_ip4,
            .daddr_be = ctx->local_ip4,
            .sport_be = (__u16)ctx->remote_port,
            .dport_be = bpf_htons((__u16)ctx->local_port),
            .protocol = IPPROTO_TCP,
        };
        flow = bpf_map_lookup_elem(&sluice_ct, &key);
        if (!flow || !flow->proxy_port)
            return SK_PASS;
        port = flow->proxy_port;
    } else if (ctx->family == 10 /* AF_INET6 */) {
        struct sluice_ct6_key key = {
            .sport_be = (__u16)ctx->remote_port,
            .dport_be = bpf_htons((__u16)ctx->local_port),
            .protocol = IPPROTO_TCP,
        };
        key.saddr_be[0] = ctx->remote_ip6[0];
        key.saddr_be[1] = ctx->remote_ip6[1];
        key.saddr_be[2] = ctx->remote_ip6[2];
        key.saddr_be[3] = ctx->remote_ip6[3];
        key.daddr_be[0] = ctx->local_ip6[0];
        key.daddr_be[1] = ctx->local_ip6[1];
        key.daddr_be[2] = ctx->local_ip6[2];
        key.daddr_be[3] = ctx->local_ip6[3];
        flow = bpf_map_lookup_elem(&sluice_ct6, &key);
        if (!flow || !flow->proxy_port)
            return SK_PASS;
        port = flow->proxy_port | SLUICE_LISTENER_IPV6;
    } else {
        return SK_PASS;
    }
    struct bpf_sock *listener = bpf_map_lookup_elem(&sluice_listeners, &port);
    if (!listener)
        return SK_PASS;
    bpf_sk_assign(ctx, listener, 0);
    bpf_sk_release(listener);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
