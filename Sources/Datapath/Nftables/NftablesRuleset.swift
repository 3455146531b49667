import Foundation

/// The nftables fallback datapath, for kernels without `bpf_sk_assign`: the same map
/// contents (`DatapathState`) written as one nftables table.
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
/// proxy's own upstream connections (mark 0xa00) and replies pass.
public struct NftablesRuleset {
    public static let tableName = "sluice"
    static let redirectBit: UInt32 = 0x1000

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

    /// The complete ruleset text, replacing any previous Sluice table atomically.
    public func text() -> String {
        var prefixesByIdentity: [UInt32: [IPv4Prefix]] = [:]
        for (prefix, entry) in state.addresses { prefixesByIdentity[entry.identity, default: []].append(prefix) }
        let allPrefixes = state.addresses.keys.sorted()
        var lines: [String] = []
        lines.append("table ip \(Self.tableName) {}")
        lines.append("delete table ip \(Self.tableName)")
        lines.append("table ip \(Self.tableName) {")
        func set(_ name: String, _ prefixes: [IPv4Prefix]) {
            lines.append("  set \(name) {")
            lines.append("    type ipv4_addr; flags interval; auto-merge;")
            if !prefixes.isEmpty {
                lines.append("    elements = { " + prefixes.sorted().map(\.description).joined(separator: ", ") + " }")
            }
            lines.append("  }")
        }
        set("known", allPrefixes)
        for (identity, prefixes) in prefixesByIdentity.sorted(by: { $0.key < $1.key }) {
            set("id_\(identity)", prefixes)
            // Addresses of this identity's prefixes that a longer prefix gives to someone else.
            let inner = allPrefixes.filter { other in
                state.addresses[other]?.identity != identity
                    && prefixes.contains { $0.length < other.length && PolicyTranslation.contains($0, other.address) }
            }
            if !inner.isEmpty { set("carve_\(identity)", inner) }
        }
        let carved = Set(prefixesByIdentity.keys.filter { identity in
            lines.contains("  set carve_\(identity) {")
        })
        let learnedElements = Self.elements(learned, now: now)
        for (endpoint, entry) in state.enforcement.sorted(by: { $0.key < $1.key }) where entry.egress {
            let sets = Self.learnedSets(endpoint)
            for (name, type) in [(sets.deny, "ipv4_addr . inet_proto . inet_service"), (sets.redirect, "ipv4_addr . inet_proto . inet_service"),
                                 (sets.port, "ipv4_addr . inet_proto . inet_service"), (sets.any, "ipv4_addr . inet_proto")] {
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
                    var match = "ip \(own) @id_\(endpoint)"
                    if key.peer == NumericIdentity.world {
                        match += " ip \(peer) != @known"
                    } else if key.peer != NumericIdentity.any {
                        match += " ip \(peer) @id_\(key.peer)"
                        if carved.contains(key.peer) { match += " ip \(peer) != @carve_\(key.peer)" }
                    }
                    switch key.ipProtocol {
                    case 6: match += " meta l4proto tcp"
                    case 17: match += " meta l4proto udp"
                    case 132: match += " meta l4proto sctp"
                    case 1: match += " meta l4proto icmp"
                    default: match += " meta l4proto \(key.ipProtocol)"
                    }
                    if key.port != 0 && key.ipProtocol != 1 { match += " th dport \(key.port)" }
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
                    lines.append("    ip saddr @id_\(endpoint) ip daddr . meta l4proto . th dport @\(sets.deny) counter drop comment \"toFQDNs: not this port\"")
                    lines.append("    ip saddr @id_\(endpoint) ip daddr . meta l4proto . th dport @\(sets.redirect) meta mark set meta mark or 0x\(String(Self.redirectBit, radix: 16)) counter return comment \"toFQDNs\"")
                    lines.append("    ip saddr @id_\(endpoint) ip daddr . meta l4proto . th dport @\(sets.port) counter return comment \"toFQDNs\"")
                    lines.append("    ip saddr @id_\(endpoint) ip daddr . meta l4proto @\(sets.any) counter return comment \"toFQDNs\"")
                }
                if enforced {
                    lines.append("    ip \(own) @id_\(endpoint) counter drop comment \"default deny \(Self.escape(state.identityNames[endpoint] ?? "\(endpoint)")) \(direction)\"")
                }
            }
            lines.append("  }")
        }

        let interfaceSet = interfaces.map { "\"\($0)\"" }.joined(separator: ", ")
        let bit = "0x\(String(Self.redirectBit, radix: 16))"
        lines.append("  chain prerouting {")
        lines.append("    type filter hook prerouting priority mangle; policy accept;")
        lines.append("    iifname != { \(interfaceSet) } accept")
        // TCP only: for UDP the socket lookup also finds a flow's reply socket (transparent,
        // bound to the original destination, unconnected) and would hand it every other
        // client's datagram to that address. Diverted UDP always goes to the listener, which
        // finds the datagram's flow itself.
        lines.append("    meta l4proto tcp socket transparent 1 meta mark set 0x200 accept comment \"diverted flow, established\"")
        // A diverted UDP flow is judged datagram by datagram: its conntrack entry carries the
        // redirect bit, and its later datagrams skip the established shortcut (else, once the
        // proxy answered, the client's next queries would go straight to the resolver).
        lines.append("    ct state established,related ct mark and \(bit) == 0 accept")
        lines.append("    meta mark set meta mark and 0xffffefff")
        lines.append("    jump egress_policy")
        lines.append("    jump ingress_policy")
        if proxyPorts.tcp != 0 {
            lines.append("    meta mark and \(bit) == \(bit) meta l4proto tcp tproxy to 127.0.0.1:\(proxyPorts.tcp) meta mark set 0x200 counter accept")
        }
        if proxyPorts.udp != 0 {
            lines.append("    meta mark and \(bit) == \(bit) meta l4proto udp ct mark set ct mark or \(bit) tproxy to 127.0.0.1:\(proxyPorts.udp) meta mark set 0x200 counter accept")
        }
        lines.append("    meta mark and \(bit) == \(bit) counter drop comment \"proxy unavailable: fail closed\"")
        lines.append("  }")
        lines.append("  chain output {")
        lines.append("    type filter hook output priority filter; policy accept;")
        lines.append("    oifname != { \(interfaceSet) } accept")
        lines.append("    meta mark and 0xf00 == 0xa00 accept comment \"the proxy's own upstream connections\"")
        lines.append("    ct state established,related accept")
        lines.append("    jump ingress_policy")
        lines.append("  }")
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The sets holding one endpoint's learned addresses, by what they do.
    static func learnedSets(_ endpoint: UInt32) -> (deny: String, redirect: String, port: String, any: String) {
        ("fqdn_deny_\(endpoint)", "fqdn_redirect_\(endpoint)", "fqdn_port_\(endpoint)", "fqdn_any_\(endpoint)")
    }

    /// Set elements for learned entries, by set name; entries already expired at `now` are left out.
    static func elements(_ entries: [LearnedEntry], now: UInt64, withTimeouts: Bool = true) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for entry in entries where entry.expires > now {
            let address = PolicyTranslation.dotted(entry.address)
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
        try runNft(arguments: ["-f", "-"], input: "table ip \(tableName) {}\ndelete table ip \(tableName)\n", namespace: namespace)
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
        let additions = Self.commands("add", NftablesRuleset.elements(entries, now: now))
        guard !additions.isEmpty else { return }
        // `add` leaves an element that exists as it is (its old timeout): delete it first, in
        // the same transaction. If it timed out meanwhile the delete fails the transaction,
        // so then add alone.
        let deletions = Self.commands("delete", NftablesRuleset.elements(replacing, now: now, withTimeouts: false))
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
        let elements = NftablesRuleset.elements(entries, now: clock(), withTimeouts: false)
        let all = Self.commands("delete", elements)
        guard !all.isEmpty, (try? run(all)) == nil else { return }
        for (set, items) in elements {
            for item in items { try? run(Self.commands("delete", [set: [item]])) }
        }
    }

    private func run(_ commands: String) throws {
        guard let namespace else { return try library.run(commands) }
        let library = self.library
        try NetworkNamespace.run(namespace) { try library.run(commands) }
    }

    static func commands(_ verb: String, _ elements: [String: [String]]) -> String {
        elements.sorted { $0.key < $1.key }.map { set, items in
            "\(verb) element ip \(NftablesRuleset.tableName) \(set) { \(items.joined(separator: ", ")) }\n"
        }.joined()
    }
}
