/* The contract between Sluice's BPF programs and userspace: every struct kept in a map or
 * sent through the ring buffer, every mark, verdict, drop reason and counter index.
 * Included by the programs (bpf/ *.bpf.c) and, through the CSluiceDatapath module, by Swift;
 * a Swift test checks the sizes so the two sides cannot drift. (Cilium keeps the same
 * discipline in bpf/lib and its drop_reasons.h.) Multi-byte fields are in host byte
 * order unless the name ends in _be (network byte order). */
#ifndef SLUICE_DATAPATH_H
#define SLUICE_DATAPATH_H

#include <linux/types.h>

/* Packet marks, under SLUICE_MARK_MASK. The node's policy routing sends TO_PROXY packets
 * to local delivery (ip rule fwmark 0x200/0xf00 lookup 2004). */
#define SLUICE_MARK_MASK        0x0f00
#define SLUICE_MARK_TO_PROXY    0x0200 /* diverted to a Sluice listener (reference: 0x200) */
#define SLUICE_MARK_ALLOWED     0x0300 /* decided at the node's ingress; the egress hook passes it */
#define SLUICE_MARK_FROM_PROXY  0x0a00 /* Sluice's own upstream sockets (SO_MARK): never diverted again */
#define SLUICE_MARK_FROM_NODE   0x0b00 /* the node's own packet, turned back into its ingress toward the proxy */

/* Reserved identities, numbered as in the reference system. Identities of endpoints and
 * CIDR peers are allocated by userspace from SLUICE_IDENTITY_FIRST_USER up. */
#define SLUICE_IDENTITY_ANY        0  /* wildcard peer in policy keys */
#define SLUICE_IDENTITY_HOST       1
#define SLUICE_IDENTITY_WORLD      2  /* IPv4 addresses no entry names (reserved:world, world-ipv4) */
#define SLUICE_IDENTITY_REMOTE_NODE 6 /* other nodes' own addresses (reserved:remote-node, the reference's number) */
#define SLUICE_IDENTITY_WORLD_IPV6 10 /* IPv6 addresses no entry names (reserved:world-ipv6, the reference's number) */
#define SLUICE_IDENTITY_FIRST_USER 256

#define SLUICE_DIRECTION_INGRESS 0 /* traffic into the endpoint */
#define SLUICE_DIRECTION_EGRESS  1 /* traffic out of the endpoint */

#define SLUICE_ACTION_ALLOW    1
#define SLUICE_ACTION_DENY     2
#define SLUICE_ACTION_REDIRECT 3

/* Why a packet was dropped; also the index of its counter. */
#define SLUICE_DROP_POLICY_DENY        1 /* an explicit deny rule matched */
#define SLUICE_DROP_POLICY_DEFAULT     2 /* the endpoint is selected in that direction and nothing allowed it */
#define SLUICE_DROP_PROXY_UNAVAILABLE  3 /* redirect to a listener that is not there: fail closed */
#define SLUICE_DROP_FRAGMENT           4 /* a non-first IPv4 or IPv6 fragment of a flow under policy */
#define SLUICE_DROP_UNSUPPORTED_L3     5 /* an L3 protocol the datapath cannot judge (reserved) */
#define SLUICE_DROP_MALFORMED          6 /* truncated headers (also: a first fragment without its L4 header) */
#define SLUICE_DROP_EXTENSION_HEADER   7 /* IPv6 extension headers the datapath will not judge past: more than
                                          * SLUICE_IPV6_MAX_EXTENSION_HEADERS, or a routing header with segments
                                          * left (the packet's final destination is not the one judged) */
#define SLUICE_DROP_MAPPED_ADDRESS     8 /* an IPv6 packet with an IPv4-mapped address (RFC 4291 2.5.5.2: never on the wire) */
#define SLUICE_DROP_SPOOFED_HOST       9 /* a packet from the wire with one of the node's own addresses as its source */
#define SLUICE_DROP_UPSTREAM_GONE     10 /* a reply to one of the proxy's upstream connections (sent from the client's
                                          * address) whose socket is gone: never forwarded to the client unjudged */

/* Counter indexes (per-CPU array); drops use their reason number. */
#define SLUICE_COUNT_ALLOWED     16 /* new flow allowed by policy or unrestricted */
#define SLUICE_COUNT_REDIRECTED  17 /* packets assigned to a proxy listener */
#define SLUICE_COUNT_ESTABLISHED 18 /* packets of known flows (either way) */
#define SLUICE_COUNT_PROXY_PASS  19 /* packets carrying the proxy's own mark */
#define SLUICE_COUNT_NOT_IP      20 /* ARP and other non-IP frames, passed */
#define SLUICE_COUNT_FQDN_ALLOWED 21 /* new flows allowed by an address learned from DNS */
#define SLUICE_COUNT_FQDN_EXPIRED 22 /* new flows to a learned address past its expiry (then dropped by default) */
#define SLUICE_COUNT_NEIGHBOUR   23 /* ICMPv6 neighbour discovery, router and multicast listener messages, passed */
#define SLUICE_COUNT_UPSTREAM_REPLY 24 /* replies assigned back to the proxy's upstream sockets */
/* Each counter is kept per family: IPv4 at its index, IPv6 at its index + SLUICE_COUNTER_IPV6. */
#define SLUICE_COUNTER_IPV6      32
#define SLUICE_COUNTER_SLOTS     64

/* IPv6 extension headers the programs walk before they give up (and drop). */
#define SLUICE_IPV6_MAX_EXTENSION_HEADERS 8

/* Keys of sluice_listeners: the port, plus this bit for the IPv6 listener ([::1]:port). */
#define SLUICE_LISTENER_IPV6 0x10000

#define SLUICE_EVENT_DROP     1
#define SLUICE_EVENT_REDIRECT 2

/* Flags of an address in the identity map. */
#define SLUICE_ADDRESS_LOCAL_ENDPOINT 1 /* an endpoint on this node: its policy is enforced here */

struct sluice_ipcache_key {
    __u32 prefixlen;      /* LPM trie: bits of addr_be that count */
    __u32 addr_be;
};

/* The IPv6 identity map's key (a separate LPM trie: sluice_ipcache6). */
struct sluice_ipcache6_key {
    __u32 prefixlen;      /* bits of addr_be that count */
    __u32 addr_be[4];
};

struct sluice_ipcache_value {
    __u32 identity;
    __u32 flags;          /* SLUICE_ADDRESS_* */
};

/* Whether an identity's endpoints are selected by some policy in a direction (default deny). */
struct sluice_enforcement {
    __u8 ingress;
    __u8 egress;
    __u8 pad[2];
};

struct sluice_policy_key {
    __u32 endpoint_identity;  /* the local endpoint the policy is about */
    __u32 peer_identity;      /* SLUICE_IDENTITY_ANY = every peer */
    __u16 port;               /* destination port; 0 = every port */
    __u8 protocol;            /* IPPROTO_TCP / UDP / SCTP / ICMP */
    __u8 direction;           /* SLUICE_DIRECTION_* */
};

struct sluice_policy_value {
    __u8 action;              /* SLUICE_ACTION_* */
    __u8 pad;
    __u16 proxy_port;         /* listener port on 127.0.0.1 for SLUICE_ACTION_REDIRECT */
    __u32 rule;               /* userspace's reference to the deciding rule, for events */
};

struct sluice_ct_key {
    __u32 saddr_be;
    __u32 daddr_be;
    __u16 sport_be;
    __u16 dport_be;
    __u8 protocol;
    __u8 pad[3];
};

/* Connection tracking of IPv6 flows (sluice_ct6); values as for IPv4. */
struct sluice_ct6_key {
    __u32 saddr_be[4];
    __u32 daddr_be[4];
    __u16 sport_be;
    __u16 dport_be;
    __u8 protocol;
    __u8 pad[3];
};

struct sluice_ct_value {
    __u64 created_ns;
    __u16 proxy_port;         /* non-zero: the flow is diverted to this listener */
    __u8 flags;               /* SLUICE_CT_* */
    __u8 pad[5];
};

/* sluice_ct_value.flags */
#define SLUICE_CT_PROXY_UPSTREAM 0x01 /* the proxy's own upstream flow: its replies go to the proxy's socket */

/* An address an endpoint learned from an allowed DNS answer (toFQDNs), for one port and
 * protocol (port 0: every port the exact entry does not name). Consulted only when the
 * endpoint's egress policy would otherwise drop by default: explicit denies still win. */
struct sluice_fqdn_key {
    __u32 endpoint_identity;
    __u32 addr_be;
    __u16 port;
    __u8 protocol;
    __u8 pad;
};

/* The same for IPv6 addresses (sluice_fqdn6); values as for IPv4. */
struct sluice_fqdn6_key {
    __u32 endpoint_identity;
    __u32 addr_be[4];
    __u16 port;
    __u8 protocol;
    __u8 pad;
};

struct sluice_fqdn_value {
    __u64 expires_ns;         /* bpf_ktime_get_ns() past which new flows are not allowed; 0 = never */
    __u8 action;              /* SLUICE_ACTION_ALLOW, _REDIRECT or _DENY */
    __u8 pad;
    __u16 proxy_port;
    __u32 rule;
};

struct sluice_event {
    __u64 timestamp_ns;
    __u32 saddr_be[4];        /* IPv4: saddr_be[0] only, the rest zero */
    __u32 daddr_be[4];
    __u16 sport_be;
    __u16 dport_be;
    __u8 protocol;
    __u8 kind;                /* SLUICE_EVENT_* */
    __u8 reason;              /* SLUICE_DROP_* for drops */
    __u8 direction;           /* the direction whose policy decided */
    __u32 source_identity;
    __u32 destination_identity;
    __u32 ifindex;
    __u16 proxy_port;
    __u8 family;              /* 4 or 6 */
    __u8 pad;
    __u32 rule;
};

/* Map sizes: every table is bounded. */
#define SLUICE_IPCACHE_ENTRIES  65536
#define SLUICE_POLICY_ENTRIES   65536
#define SLUICE_ENFORCE_ENTRIES  16384
#define SLUICE_CT_ENTRIES       262144
#define SLUICE_FQDN_ENTRIES     131072
#define SLUICE_EVENTS_BYTES     (1 << 20)

#endif
