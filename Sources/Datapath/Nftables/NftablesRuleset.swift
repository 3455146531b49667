import Foundation

/// The nftables fallback datapath, for kernels without `bpf_sk_assign`: the same map
/// contents (`DatapathState`) written as two nftables tables named `sluice`, one per family
/// (`ip` from the IPv4 identities, `ip6` from the IPv6 ones; policy entries are shared).
///
/// Traffic entering the node from the configured interfaces goes through an egress check
/// (the source endpoint's policy) and an ingress check (the destination endpoint's);
/// either may drop. A redirect verdict marks the packet, and the final rules TPROXY it to
/// Sluice's listener. TPROXY fails open (no listener: the rule simply does not match), so
/// a marked packet that was not diverted is dropped explicitly: the fallback fails closed.
/// Established diverted flows follow their transparent socket; other established flows
/// and replies pass through conntrack.
///
/// Traffic the node itself originates toward an endpoint (output hook) meets the
/// endpoint's ingress policy with the host as the peer, as in the BPF datapath; the
/// proxy's own upstream connections (mark 0xa00) pass, and their replies go to the proxy's
/// socket (they are addressed to the client when the proxy keeps the client's address).
public struct NftablesRuleset {
    public static let tableName = "sluice"
    static let redirectBit: UInt32 = 0x1000
    /// Marks the node's own packets turned back through lo to sluice (with 0x200).
    static let fromNodeBit: UInt32 = 0x2000
    /// Conntrack mark of the proxy's own upstream flows, whose replies belong to its socket.
    static let upstreamBit: UInt32 = 0x4000

    public let state: DatapathState
    public let interfaces: [String]
    public let proxyPorts: PolicyTranslation.ProxyPorts
    /// Addresses learned from DNS (toFQDNs), written into the table's sets with what is left
    /// of their lifetime at `now` (CLOCK_MONOTONIC nanoseconds).
    public let learned: [LearnedEntry]
    public let now: UInt64

    public init(state: DatapathState, interfaces: [String], proxyPorts: PolicyTranslation.ProxyPorts,
                learned: [LearnedEntry] = [], now: UInt64 = 0) {
        self.state = state
        self.interfaces = interfaces
        self.proxyPorts = proxyPorts
        self.learned = learned
        self.now = now
    }

    /// The address family of one of the two tables (`ip sluice`, `ip6 sluice`).
    enum Family {
        case ipv4, ipv6
        /// nftables' family and address keyword (`ip` / `ip6`).
        var keyword: String { self == .ipv4 ? "ip" : "ip6" }
        var addressType: String { self == .ipv4 ? "ipv4_addr" : "ipv6_addr" }
        /// The identity of addresses nobody claims, in this family.
        var world: UInt32 { self == .ipv4 ? NumericIdentity.world : NumericIdentity.worldIPv6 }
        /// The proxy's listeners, on loopback.
        var loopback: String { self == .ipv4 ? "127.0.0.1" : "[::1]" }
    }

    /// One address prefix of either family, as the table names it.
    enum TablePrefix: Hashable, Comparable {
        case ipv4(IPv4Prefix)
        case ipv6(IPv6Prefix)

        var text: String {
            switch self {
            case .ipv4(let prefix): return prefix.description
            case .ipv6(let prefix): return prefix.description
            }
        }

        /// True when `other` is a longer prefix inside this one.
        func covers(_ other: TablePrefix) -> Bool {
            switch (self, other) {
            case (.ipv4(let outer), .ipv4(let inner)):
                return inner.length > outer.length && PolicyTranslation.contains(outer, inner.address)
            case (.ipv6(let outer), .ipv6(let inner)):
                return inner.length > outer.length && outer.contains(inner)
            default:
                return false
            }
        }

        static func < (lhs: Self, rhs: Self) -> Bool {
            switch (lhs, rhs) {
            case (.ipv4(let left), .ipv4(let right)): return left < right
            case (.ipv6(let left), .ipv6(let right)): return left < right
            case (.ipv4, .ipv6): return true
            case (.ipv6, .ipv4): return false
            }
        }
    }

    /// The complete ruleset text: an `ip` table for IPv4 and an `ip6` table for IPv6, both
    /// named `sluice`, replacing any previous Sluice tables atomically (one `nft -f`).
    public func text() -> String {
        table(.ipv4) + table(.ipv6)
    }

    /// One family's table, with the learned (toFQDNs) addresses of its family.
    func table(_ family: Family) -> String {
        var addresses: [TablePrefix: AddressEntry] = [:]
        switch family {
        case .ipv4: for (prefix, entry) in state.addresses { addresses[.ipv4(prefix)] = entry }
        case .ipv6: for (prefix, entry) in state.addresses6 { addresses[.ipv6(prefix)] = entry }
        }
        let ip = family.keyword
        var prefixesByIdentity: [UInt32: [TablePrefix]] = [:]
        for (prefix, entry) in addresses { prefixesByIdentity[entry.identity, default: []].append(prefix) }
        let allPrefixes = addresses.keys.sorted()
        var lines: [String] = []
        lines.append("table \(ip) \(Self.tableName) {}")
        lines.append("delete table \(ip) \(Self.tableName)")
        lines.append("table \(ip) \(Self.tableName) {")
        func set(_ name: String, _ prefixes: [TablePrefix]) {
            lines.append("  set \(name) {")
            lines.append("    type \(family.addressType); flags interval; auto-merge;")
            if !prefixes.isEmpty {
                lines.append("    elements = { " + prefixes.sorted().map(\.text).joined(separator: ", ") + " }")
            }
            lines.append("  }")
        }
        set("known", allPrefixes)
        // Every identity a rule may name has a set in both tables (empty where it has no
        // address of the family).
        let named = Set(prefixesByIdentity.keys).union(state.policy.keys.flatMap { [$0.endpoint, $0.peer] })
            .union(state.enforcement.keys).subtracting([NumericIdentity.any, NumericIdentity.world, NumericIdentity.worldIPv6])
        for identity in named.sorted() {
            let prefixes = prefixesByIdentity[identity] ?? []
            set("id_\(identity)", prefixes)
            // Addresses of this identity's prefixes that a longer prefix gives to someone else.
            let inner = allPrefixes.filter { other in
                addresses[other]?.identity != identity && prefixes.contains { $0.covers(other) }
            }
            if !inner.isEmpty { set("carve_\(identity)", inner) }
        }
        let carved = Set(named.filter { identity in
            lines.contains("  set carve_\(identity) {")
        })
        let learnedElements = Self.elements(learned, now: now, family: family)
        for (endpoint, entry) in state.enforcement.sorted(by: { $0.key < $1.key }) where entry.egress {
            let sets = Self.learnedSets(endpoint)
            let address = family.addressType
            for (name, type) in [(sets.deny, "\(address) . inet_proto . inet_service"), (sets.redirect, "\(address) . inet_proto . inet_service"),
                                 (sets.port, "\(address) . inet_proto . inet_service"), (sets.any, "\(address) . inet_proto")] {
                lines.append("  set \(name) {")
                lines.append("    type \(type); flags timeout;")
                if let elements = learnedElements[name], !elements.isEmpty {
                    lines.append("    elements = { " + elements.joined(separator: ", ") + " }")
                }
                lines.append("  }")
            }
        }

        for direction in [PolicyDirection.egress, .ingress] {
            lines.append("  chain \(direction)_policy {")
            let (own, peer) = direction == .egress ? ("saddr", "daddr") : ("daddr", "saddr")
            let endpoints = Set(state.policy.keys.map(\.endpoint)).union(state.enforcement.keys).sorted()
            for endpoint in endpoints {
                let entries = state.policy.filter { $0.key.endpoint == endpoint && $0.key.direction == direction }
                let ordered = entries.sorted { left, right in
                    let leftRank = (left.value.action == .deny ? 0 : 1, left.key.port == 0 ? 1 : 0, left.key.peer == 0 ? 1 : 0)
                    let rightRank = (right.value.action == .deny ? 0 : 1, right.key.port == 0 ? 1 : 0, right.key.peer == 0 ? 1 : 0)
                    return leftRank != rightRank ? leftRank < rightRank : left.key < right.key
                }
                for (key, entry) in ordered {
                    // The other family's world and ICMP are not this table's business.
                    if key.peer == (family == .ipv4 ? NumericIdentity.worldIPv6 : NumericIdentity.world) { continue }
                    if key.ipProtocol == (family == .ipv4 ? 58 : 1) { continue }
                    var match = "\(ip) \(own) @id_\(endpoint)"
                    if key.peer == family.world {
                        match += " \(ip) \(peer) != @known"
                    } else if key.peer != NumericIdentity.any {
                        match += " \(ip) \(peer) @id_\(key.peer)"
                        if carved.contains(key.peer) { match += " \(ip) \(peer) != @carve_\(key.peer)" }
                    }
                    switch key.ipProtocol {
                    case 6: match += " meta l4proto tcp"
                    case 17: match += " meta l4proto udp"
                    case 132: match += " meta l4proto sctp"
                    case 1: match += " meta l4proto icmp"
                    case 58: match += " meta l4proto ipv6-icmp"
                    default: match += " meta l4proto \(key.ipProtocol)"
                    }
                    if key.port != 0 && key.ipProtocol != 1 && key.ipProtocol != 58 { match += " th dport \(key.port)" }
                    let note = state.ruleNames[entry.rule].map { " comment \"\(Self.escape($0))\"" } ?? ""
                    switch entry.action {
                    case .deny: lines.append("    \(match) counter drop\(note)")
                    case .allow: lines.append("    \(match) counter return\(note)")
                    case .redirect:
                        lines.append("    \(match) meta mark set meta mark or 0x\(String(Self.redirectBit, radix: 16)) counter return\(note)")
                    }
                }
                let enforced = state.enforcement[endpoint].map { direction == .ingress ? $0.ingress : $0.egress } ?? false
                if enforced && direction == .egress {
                    // Addresses learned from DNS: consulted only where the default would drop.
                    let sets = Self.learnedSets(endpoint)
                    lines.append("    \(ip) saddr @id_\(endpoint) \(ip) daddr . meta l4proto . th dport @\(sets.deny) counter drop comment \"toFQDNs: not this port\"")
                    lines.append("    \(ip) saddr @id_\(endpoint) \(ip) daddr . meta l4proto . th dport @\(sets.redirect) meta mark set meta mark or 0x\(String(Self.redirectBit, radix: 16)) counter return comment \"toFQDNs\"")
                    lines.append("    \(ip) saddr @id_\(endpoint) \(ip) daddr . meta l4proto . th dport @\(sets.port) counter return comment \"toFQDNs\"")
                    lines.append("    \(ip) saddr @id_\(endpoint) \(ip) daddr . meta l4proto @\(sets.any) counter return comment \"toFQDNs\"")
                }
                if enforced {
                    lines.append("    \(ip) \(own) @id_\(endpoint) counter drop comment \"default deny \(Self.escape(state.identityNames[endpoint] ?? "\(endpoint)")) \(direction)\"")
                }
            }
            lines.append("  }")
        }

        let interfaceSet = interfaces.map { "\"\($0)\"" }.joined(separator: ", ")
        let bit = "0x\(String(Self.redirectBit, radix: 16))"
        lines.append("  chain prerouting {")
        lines.append("    type filter hook prerouting priority mangle; policy accept;")
        // The node's own flows to L7 ports, turned back through lo by the output chain:
        // to the listener (or the flow's transparent socket), else dropped (fail closed).
        if proxyPorts.tcp != 0 {
            lines.append("    iifname \"lo\" meta mark and 0x\(String(Self.fromNodeBit, radix: 16)) != 0 meta l4proto tcp tproxy to \(family.loopback):\(proxyPorts.tcp) meta mark set 0x200 counter accept comment \"the node's own flow, to sluice\"")
        }
        if proxyPorts.udp != 0 {
            lines.append("    iifname \"lo\" meta mark and 0x\(String(Self.fromNodeBit, radix: 16)) != 0 meta l4proto udp tproxy to \(family.loopback):\(proxyPorts.udp) meta mark set 0x200 counter accept comment \"the node's own flow, to sluice\"")
        }
        lines.append("    iifname \"lo\" meta mark and 0x\(String(Self.fromNodeBit, radix: 16)) != 0 counter drop comment \"proxy unavailable: fail closed\"")
        lines.append("    iifname != { \(interfaceSet) } accept")
        // The node's own addresses never arrive from the wire here (the node's own flows are
        // turned back through lo): a packet claiming one was sent by an endpoint posing as the
        // node, which policies may trust (fromEntities: host). The kernel's martian-source
        // check covers IPv4 only (and not with accept_local); the BPF datapath drops the same
        // packets by identity.
        lines.append("    fib saddr type local counter drop comment \"node address spoofed\"")
        if family == .ipv6 {
            // What endpoints need to keep their link, and nothing that can leave it (RFC 4861:
            // hop limit 255 on receipt; MLD: hop limit 1). Other ICMPv6 meets the policy.
            // Only to the node itself or a multicast group: one forwarded to an endpoint on
            // another link is judged like any ICMPv6 (the BPF datapath judges it at egress,
            // where its hop limit is no longer 255).
            lines.append("    \(Self.neighbourDiscovery) fib daddr type { local, multicast } counter accept comment \"neighbour discovery\"")
            lines.append("    \(Self.multicastListener) counter accept comment \"multicast listener discovery\"")
            // The final destination of a packet with segments left is not the one judged;
            // IPv4-mapped addresses never belong on the wire (RFC 4291 2.5.5.2).
            lines.append("    rt seg-left != 0 counter drop comment \"routing header with segments left\"")
            lines.append("    ip6 daddr ::ffff:0.0.0.0/96 counter drop comment \"IPv4-mapped address\"")
            lines.append("    ip6 saddr ::ffff:0.0.0.0/96 counter drop comment \"IPv4-mapped address\"")
        }
        // TCP only: for UDP the socket lookup also finds a flow's reply socket (transparent,
        // bound to the original destination, unconnected) and would hand it every other
        // client's datagram to that address. Diverted UDP always goes to the listener, which
        // finds the datagram's flow itself.
        lines.append("    meta l4proto tcp socket transparent 1 meta mark set 0x200 accept comment \"diverted flow, established\"")
        // Replies to the proxy's upstream legs, which leave from the client's own address
        // (datapath.originalSource): routed on, they would reach the client past the proxy.
        // TCP replies meet their transparent socket in the rule above; a UDP reply is looked
        // up only in the reply direction of an upstream flow (never a client's datagram).
        // What finds no socket is dropped: the fail-closed rule for replies.
        let upstream = "ct direction reply ct mark and 0x\(String(Self.upstreamBit, radix: 16)) != 0"
        lines.append("    \(upstream) meta l4proto udp socket transparent 1 meta mark set 0x200 accept comment \"a reply to the proxy's upstream\"")
        lines.append("    \(upstream) fib daddr type != local counter drop comment \"a reply to the proxy's upstream without its socket: fail closed\"")
        // A diverted UDP flow is judged datagram by datagram: its conntrack entry carries the
        // redirect bit, and its later datagrams skip the established shortcut (else, once the
        // proxy answered, the client's next queries would go straight to the resolver).
        // A client's packet in the tuple of one of the proxy's upstream legs (the proxy took
        // that port on the client's address at connect, and the client took it too, as dig's
        // random ports do) is the client's, never the proxy's: judged as a new flow, not waved
        // through as part of the proxy's connection (it would reach the server unjudged, and
        // the server's answer would go to the proxy's leg, which drops it).
        let divertedOrUpstream = "0x\(String(Self.upstreamBit | Self.redirectBit, radix: 16))"
        lines.append("    ct state established,related ct direction reply ct mark and \(bit) == 0 accept")
        lines.append("    ct state established,related ct direction original ct mark and \(divertedOrUpstream) == 0 accept")
        lines.append("    meta mark set meta mark and 0xffffefff")
        lines.append("    jump egress_policy")
        lines.append("    jump ingress_policy")
        if proxyPorts.tcp != 0 {
            lines.append("    meta mark and \(bit) == \(bit) meta l4proto tcp tproxy to \(family.loopback):\(proxyPorts.tcp) meta mark set 0x200 counter accept")
        }
        if proxyPorts.udp != 0 {
            lines.append("    meta mark and \(bit) == \(bit) meta l4proto udp ct mark set ct mark or \(bit) tproxy to \(family.loopback):\(proxyPorts.udp) meta mark set 0x200 counter accept")
        }
        lines.append("    meta mark and \(bit) == \(bit) counter drop comment \"proxy unavailable: fail closed\"")
        lines.append("  }")
        // A route chain: a mark set here re-routes the packet, which is how the node's own
        // flows to L7 ports are turned back (mark 0x200: table 2004, local) to sluice.
        lines.append("  chain output {")
        lines.append("    type route hook output priority filter; policy accept;")
        lines.append("    oifname != { \(interfaceSet) } accept")
        if family == .ipv6 {
            lines.append("    \(Self.neighbourDiscovery) accept comment \"neighbour discovery\"")
            lines.append("    \(Self.multicastListener) accept comment \"multicast listener discovery\"")
        }
        lines.append("    meta mark and 0xf00 == 0xa00 ct state new ct mark set ct mark or 0x\(String(Self.upstreamBit, radix: 16)) accept comment \"the proxy's own upstream connections\"")
        lines.append("    meta mark and 0xf00 == 0xa00 accept comment \"the proxy's own upstream connections\"")
        let toSluice = "meta mark set meta mark and 0xfffff0ff or 0x\(String(0x200 | Self.fromNodeBit, radix: 16))"
        lines.append("    ct state established,related ct mark and \(bit) == \(bit) \(toSluice) accept comment \"the node's own flow through sluice\"")
        lines.append("    ct state established,related accept")
        lines.append("    meta mark set meta mark and 0xffffefff")
        lines.append("    jump ingress_policy")
        lines.append("    meta mark and \(bit) == \(bit) ct mark set ct mark or \(bit) \(toSluice) counter accept comment \"the node's own flow to an L7 port: through sluice\"")
        lines.append("  }")
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    static let neighbourDiscovery = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } ip6 hoplimit 255"
    static let multicastListener = "icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } ip6 hoplimit 1"

    /// The sets holding one endpoint's learned addresses, by what they do.
    static func learnedSets(_ endpoint: UInt32) -> (deny: String, redirect: String, port: String, any: String) {
        ("fqdn_deny_\(endpoint)", "fqdn_redirect_\(endpoint)", "fqdn_port_\(endpoint)", "fqdn_any_\(endpoint)")
    }

    /// Set elements for learned entries of `family`, by set name; entries already expired at
    /// `now` are left out.
    static func elements(_ entries: [LearnedEntry], now: UInt64, family: Family, withTimeouts: Bool = true) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for entry in entries where entry.expires > now && (entry.address.family == .ipv6) == (family == .ipv6) {
            let address = entry.address.description
            let timeout = withTimeouts ? " timeout \(max(1, (entry.expires - now) / 1_000_000))ms" : ""
            let sets = learnedSets(entry.endpoint)
            for grant in entry.grants {
                let proto: String
                switch grant.ipProtocol {
                case 6: proto = "tcp"
                case 17: proto = "udp"
                case 132: proto = "sctp"
                default: continue
                }
                if grant.port == 0 {
                    guard grant.entry.action == .allow else { continue }
                    result[sets.any, default: []].append("\(address) . \(proto)\(timeout)")
                    continue
                }
                let set = grant.entry.action == .deny ? sets.deny : grant.entry.action == .redirect ? sets.redirect : sets.port
                result[set, default: []].append("\(address) . \(proto) . \(grant.port)\(timeout)")
            }
        }
        return result
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\"", with: "'")
    }

    /// Installs the table in namespace `namespace` (nil: the current one) with `nft -f`.
    public func apply(namespace: String?) throws {
        try Self.runNft(arguments: ["-f", "-"], input: text(), namespace: namespace)
    }

    /// Removes the table (idempotent).
    public static func remove(namespace: String?) throws {
        try runNft(arguments: ["-f", "-"], input: "table ip \(tableName) {}\ndelete table ip \(tableName)\n"
                   + "table ip6 \(tableName) {}\ndelete table ip6 \(tableName)\n", namespace: namespace)
    }

    static func runNft(arguments: [String], input: String, namespace: String?) throws {
        let process = Process()
        if let namespace {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            process.arguments = ["netns", "exec", namespace, "nft"] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/nft")
            process.arguments = arguments
        }
        let stdin = Pipe()
        let stderr = Pipe()
        process.standardInput = stdin
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw DatapathError("run nft", code: ENOENT, hint: "install nftables (scripts/bootstrap does)")
        }
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try? stdin.fileHandleForWriting.close()
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw DatapathError("nft \(arguments.joined(separator: " "))", code: EINVAL,
                                hint: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}

/// The nftables fallback's learned-address sets, changed element by element through
/// libnftables: one netlink transaction per answer, in this process.
public final class NftablesLearnedAddresses: LearnedAddressWriter, @unchecked Sendable {
    private let namespace: String?
    private let clock: () -> UInt64
    private let library: NftablesLibrary

    /// Commands run in network namespace `namespace` (nil: sluice's own).
    public init(namespace: String?, clock: @escaping () -> UInt64) throws {
        self.namespace = namespace
        self.clock = clock
        library = try NftablesLibrary()
    }

    public func write(_ entries: [LearnedEntry], replacing: [LearnedEntry]) throws {
        let now = clock()
        let additions = Self.commands("add", entries, now: now)
        guard !additions.isEmpty else { return }
        // `add` leaves an element that exists as it is (its old timeout): delete it first, in
        // the same transaction. If it timed out meanwhile the delete fails the transaction,
        // so then add alone.
        let deletions = Self.commands("delete", replacing, now: now, withTimeouts: false)
        if !deletions.isEmpty, (try? run(deletions + additions)) != nil { return }
        try run(additions)
    }

    /// Each write is a netlink transaction (about 0.2 ms): lifetimes are rounded up by up to
    /// an eighth of themselves (at least a second), so an address asked for again and again
    /// is rewritten a few times per lifetime, not at every answer.
    public func roundedExpiry(_ expires: UInt64, lifetime: UInt64) -> UInt64 {
        LearnedEntry.roundUp(expires, to: max(1_000_000_000, lifetime / 8 / 1_000_000_000 * 1_000_000_000))
    }

    public func remove(_ entries: [LearnedEntry]) {
        // All at once; if one already timed out the transaction fails, and then one command
        // per element, so that one does not keep the others.
        let now = clock()
        let all = Self.commands("delete", entries, now: now, withTimeouts: false)
        guard !all.isEmpty, (try? run(all)) == nil else { return }
        for family in [NftablesRuleset.Family.ipv4, .ipv6] {
            for (set, items) in NftablesRuleset.elements(entries, now: now, family: family, withTimeouts: false) {
                for item in items { try? run(Self.commands("delete", family: family, [set: [item]])) }
            }
        }
    }

    private func run(_ commands: String) throws {
        guard let namespace else { return try library.run(commands) }
        let library = self.library
        try NetworkNamespace.run(namespace) { try library.run(commands) }
    }

    /// Element commands for `entries` in both tables (IPv4 addresses in `ip sluice`, IPv6 in `ip6 sluice`).
    static func commands(_ verb: String, _ entries: [LearnedEntry], now: UInt64, withTimeouts: Bool = true) -> String {
        [NftablesRuleset.Family.ipv4, .ipv6].map { family in
            commands(verb, family: family, NftablesRuleset.elements(entries, now: now, family: family, withTimeouts: withTimeouts))
        }.joined()
    }

    static func commands(_ verb: String, family: NftablesRuleset.Family, _ elements: [String: [String]]) -> String {
        elements.sorted { $0.key < $1.key }.map { set, items in
            "\(verb) element \(family.keyword) \(NftablesRuleset.tableName) \(set) { \(items.joined(separator: ", ")) }\n"
        }.joined()
    }
}
