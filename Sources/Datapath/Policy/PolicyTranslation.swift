import PolicyEngine

/// Derives the datapath's map contents from a compiled policy snapshot.
///
/// The policy engine is the only judge of what is allowed: the translation asks it, for
/// every local endpoint identity, direction, peer identity and port that any policy can
/// tell apart, and writes down the answers that differ from the default. Peers are every
/// endpoint identity, the host, the world (one identity per family: world-ipv4 and
/// world-ipv6) and one identity per CIDR named in a policy (carved by `except`), IPv4 and
/// IPv6 alike; ports are every port, range and named port the policies mention,
/// plus one "any other port" probe written as port 0. An allowed flow whose port carries
/// L7 rules becomes a redirect to the proxy's transparent listener.
public struct PolicyTranslation: Sendable {
    public struct ProxyPorts: Sendable {
        public var tcp: UInt16
        public var udp: UInt16
        public init(tcp: UInt16, udp: UInt16) { self.tcp = tcp; self.udp = udp }
    }

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// Upper bound on policy-map entries the translation may produce (the map's size).
    public static let maxPolicyEntries = 65_536
    /// Ranges wider than this are not expanded port by port: they are probed as a whole.
    public static let maxExpandedRange = 4_096

    public let snapshot: PolicySnapshot
    public let nodeAddresses: [IPv4Prefix]
    public let nodeAddresses6: [IPv6Prefix]
    public let proxyPorts: ProxyPorts

    public init(snapshot: PolicySnapshot, nodeAddresses: [IPv4Prefix], nodeAddresses6: [IPv6Prefix] = [],
                proxyPorts: ProxyPorts) {
        self.snapshot = snapshot
        self.nodeAddresses = nodeAddresses
        self.nodeAddresses6 = nodeAddresses6
        self.proxyPorts = proxyPorts
    }

    private struct Group {
        var identity: Identity
        var number: UInt32
        var name: String
        var prefixes: [IPv4Prefix]
        var prefixes6: [IPv6Prefix] = []
        /// False for a pod on another node or a remote node: a peer only.
        var isLocal = true
    }

    public func translate() throws -> DatapathState {
        var state = DatapathState()
        state.identityNames[NumericIdentity.host] = "reserved:host"
        state.identityNames[NumericIdentity.world] = "reserved:world-ipv4"
        state.identityNames[NumericIdentity.worldIPv6] = "reserved:world-ipv6"

        // Local endpoints, grouped by what policies can see (namespace and labels): a pod's
        // IPv4 and IPv6 addresses share its identity.
        var groups: [Group] = []
        var groupIndex: [String: Int] = [:]
        var hostPrefixes = nodeAddresses
        var hostPrefixes6 = nodeAddresses6
        for (prefix, identity) in snapshot.endpoints.entries {
            let ipv4 = prefix.network.family == .ipv4
                ? IPv4Prefix(address: UInt32(truncatingIfNeeded: prefix.network.low), length: UInt8(prefix.prefixLength)) : nil
            let ipv6 = IPv6Prefix(prefix)
            if identity.reservedKind == .host {
                if let ipv4 { hostPrefixes.append(ipv4) }
                if let ipv6 { hostPrefixes6.append(ipv6) }
                continue
            }
            guard identity.isClusterEndpoint || identity.reservedKind == .remoteNode else { continue }
            // Pods on other nodes and the other nodes themselves (the Kubernetes source) are
            // peers with their own identity; only this node's pods have policies here.
            let isLocal = identity.isClusterEndpoint && snapshot.endpoints.isLocal(prefix)
            let key = "\(isLocal ? "local" : "remote")|\(identity.namespace ?? "")|\(identity.labels)"
            let index: Int
            if let found = groupIndex[key] {
                index = found
            } else {
                index = groups.count
                groupIndex[key] = index
                let number = NumericIdentity.firstAllocated + UInt32(groups.count)
                let name = "\(identity.namespace ?? "")/" + (identity.podName ?? identity.description)
                groups.append(Group(identity: identity, number: number, name: name, prefixes: [], isLocal: isLocal))
            }
            if let ipv4 { groups[index].prefixes.append(ipv4) }
            if let ipv6 { groups[index].prefixes6.append(ipv6) }
        }
        for group in groups {
            state.identityNames[group.number] = group.name
            for prefix in group.prefixes {
                state.addresses[prefix] = AddressEntry(identity: group.number, isLocalEndpoint: group.isLocal)
            }
            for prefix in group.prefixes6 {
                state.addresses6[prefix] = AddressEntry(identity: group.number, isLocalEndpoint: group.isLocal)
            }
        }
        for prefix in hostPrefixes {
            state.addresses[prefix] = AddressEntry(identity: NumericIdentity.host, isLocalEndpoint: false)
        }
        for prefix in hostPrefixes6 {
            state.addresses6[prefix] = AddressEntry(identity: NumericIdentity.host, isLocalEndpoint: false)
        }

        // CIDR peers: one identity per prefix named in a policy (and per `except`).
        var peers: [(number: UInt32, identity: Identity)] = groups.map { ($0.number, $0.identity) }
        peers.append((NumericIdentity.host, hostIdentity(hostPrefixes.first)))
        // The world without an address (no CIDR selects it), but of one family, so the
        // world-ipv4 and world-ipv6 entities tell the two apart.
        peers.append((NumericIdentity.world, Self.world(family: "world-ipv4")))
        peers.append((NumericIdentity.worldIPv6, Self.world(family: "world-ipv6")))
        let cidrs = policyCIDRs()
        var nextNumber = NumericIdentity.firstAllocated + UInt32(groups.count)
        for cidr in cidrs where state.addresses[cidr] == nil {
            let number = nextNumber
            nextNumber += 1
            state.addresses[cidr] = AddressEntry(identity: number, isLocalEndpoint: false)
            state.identityNames[number] = "cidr:\(cidr)"
            let representative = representativeAddress(of: cidr, avoiding: cidrs)
            peers.append((number, .reserved(.world, address: representative)))
        }
        let cidrs6 = policyCIDRs6()
        for cidr in cidrs6 where state.addresses6[cidr] == nil {
            let number = nextNumber
            nextNumber += 1
            state.addresses6[cidr] = AddressEntry(identity: number, isLocalEndpoint: false)
            state.identityNames[number] = "cidr:\(cidr)"
            let representative = Self.representativeAddress(of: cidr, avoiding: cidrs6)
            peers.append((number, .reserved(.world, address: representative)))
        }

        let probes = portProbes(namedPorts: groups.flatMap { $0.identity.namedPorts })
        var ruleNumbers: [RuleReference: UInt32] = [:]
        func ruleNumber(_ verdict: Verdict) -> UInt32 {
            guard let reference = verdict.matched.first else { return 0 }
            if let number = ruleNumbers[reference] { return number }
            let number = UInt32(ruleNumbers.count + 1)
            ruleNumbers[reference] = number
            state.ruleNames[number] = reference.description
            return number
        }

        for group in groups where group.isLocal {
            var enforcement = Enforcement(ingress: false, egress: false)
            for direction in [Direction.ingress, .egress] {
                let mapDirection: PolicyDirection = direction == .ingress ? .ingress : .egress
                var enforced = false
                for peer in peers {
                    for (transport, ports) in probes {
                        guard let ipProtocol = Self.ipProtocol(transport) else { continue }
                        var answers: [(UInt16, PolicyEntry?, Bool)] = []
                        for port in ports {
                            let flow = FlowContext(subject: group.identity, direction: direction, remote: peer.identity,
                                                   port: port.probe, transport: transport)
                            let verdict = snapshot.evaluate(flow: flow)
                            if case .noRuleAllows = verdict.reason { enforced = true }
                            let isDefault: Bool
                            let entry: PolicyEntry
                            if !verdict.isAllowed {
                                entry = PolicyEntry(action: .deny, rule: ruleNumber(verdict))
                                if case .noRuleAllows = verdict.reason { isDefault = true } else { isDefault = false }
                            } else if let proxyPort = redirectPort(flow, transport: transport) {
                                entry = PolicyEntry(action: .redirect, proxyPort: proxyPort, rule: ruleNumber(verdict))
                                isDefault = false
                            } else {
                                entry = PolicyEntry(action: .allow, rule: ruleNumber(verdict))
                                if case .notEnforced = verdict.reason { isDefault = true } else { isDefault = false }
                            }
                            answers.append((port.key, entry, isDefault))
                        }
                        // Port 0 (every other port) decides for unlisted ports; once it is
                        // written, listed ports are written explicitly so they stay exact.
                        let other = answers.first { $0.0 == 0 }
                        let writeAll = other.map { !$0.2 } ?? false
                        for (port, entry, isDefault) in answers where writeAll || !isDefault {
                            let key = PolicyKey(endpoint: group.number, direction: mapDirection, peer: peer.number,
                                                port: port, ipProtocol: ipProtocol)
                            state.policy[key] = entry
                        }
                        guard state.policy.count <= Self.maxPolicyEntries else {
                            throw Problem(description: "the policies need more than \(Self.maxPolicyEntries) datapath entries")
                        }
                    }
                }
                if direction == .ingress { enforcement.ingress = enforced } else { enforcement.egress = enforced }
            }
            // Default deny has to be known even when every probed flow happened to be allowed.
            enforcement.ingress = enforcement.ingress || isSelected(group.identity, .ingress)
            enforcement.egress = enforcement.egress || isSelected(group.identity, .egress)
            if enforcement.ingress || enforcement.egress {
                state.enforcement[group.number] = enforcement
            }
        }
        // Entries that equal the default of a non-enforced direction are not needed.
        state.policy = state.policy.filter { key, entry in
            let enforced = state.enforcement[key.endpoint].map { key.direction == .ingress ? $0.ingress : $0.egress } ?? false
            return enforced || entry.action != .allow
        }
        return state
    }

    // MARK: Probes

    struct PortProbe { var key: UInt16; var probe: UInt16 }

    /// Per transport: the ports policies mention, and port 0 standing for every other port.
    func portProbes(namedPorts: [NamedPort]) -> [(TransportProtocol, [PortProbe])] {
        var mentioned: [TransportProtocol: Set<UInt16>] = [:]
        var ranges: [TransportProtocol: [ClosedRange<UInt16>]] = [:]
        for policy in snapshot.policies {
            for rule in policy.rules {
                for peerRule in rule.ingress + rule.ingressDeny + rule.egress + rule.egressDeny {
                    for portRule in peerRule.portRules {
                        for selector in portRule.ports {
                            for transport in selector.protocols {
                                switch selector.port {
                                case .number(let number):
                                    guard number != 0 else { continue }
                                    if let end = selector.endPort, end > number {
                                        if Int(end - number) < Self.maxExpandedRange {
                                            mentioned[transport, default: []].formUnion(number...end)
                                        } else {
                                            ranges[transport, default: []].append(number...end)
                                        }
                                    } else {
                                        mentioned[transport, default: []].insert(number)
                                    }
                                case .named(let name):
                                    for named in namedPorts where named.name == name && named.transport == transport {
                                        mentioned[transport, default: []].insert(named.port)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        var result: [(TransportProtocol, [PortProbe])] = []
        for transport in [TransportProtocol.tcp, .udp, .sctp] {
            let ports = mentioned[transport, default: []]
            // A port no policy names stands for "every other port". Wide ranges are probed
            // by a member each; if one holds the probe, it is not representative, so move on.
            let wide = ranges[transport, default: []]
            var other: UInt16 = 1
            while ports.contains(other) || wide.contains(where: { $0.contains(other) }) { other &+= 1 }
            var probes = ports.sorted().map { PortProbe(key: $0, probe: $0) }
            probes.append(PortProbe(key: 0, probe: other))
            result.append((transport, probes))
        }
        result.append((.icmp, [PortProbe(key: 0, probe: 8)]))
        result.append((.icmpv6, [PortProbe(key: 0, probe: 128)]))
        return result
    }

    /// The proxy listener for an allowed flow whose port carries L7 rules (of any kind: the
    /// proxy judges the ones it knows and refuses the others), else nil.
    func redirectPort(_ flow: FlowContext, transport: TransportProtocol) -> UInt16? {
        guard !snapshot.l7Protocols(for: flow).isEmpty else { return nil }
        return transport == .udp ? proxyPorts.udp : proxyPorts.tcp
    }

    private func isSelected(_ identity: Identity, _ direction: Direction) -> Bool {
        // A peer no rule can name (no labels, no address) is denied only by default deny.
        let stranger = Identity(labels: [Label(source: "reserved", key: "sluice-probe", value: "")], namespace: nil)
        let flow = FlowContext(subject: identity, direction: direction, remote: stranger, port: 1, transport: .tcp)
        if case .noRuleAllows = snapshot.evaluate(flow: flow).reason { return true }
        return false
    }

    private func hostIdentity(_ address: IPv4Prefix?) -> Identity {
        .reserved(.host, address: address.flatMap { IPAddress(Self.dotted($0.address)) })
    }

    private static func world(family: String) -> Identity {
        Identity(labels: [Label(source: Label.reservedSource, key: ReservedIdentity.world.rawValue, value: ""),
                          Label(source: Label.reservedSource, key: family, value: "")], namespace: nil)
    }

    /// The IPv6 prefixes named by CIDR peers (and their `except`s).
    private func policyCIDRs6() -> [IPv6Prefix] {
        var found: Set<IPv6Prefix> = []
        for policy in snapshot.policies {
            for rule in policy.rules {
                for peerRule in rule.ingress + rule.ingressDeny + rule.egress + rule.egressDeny {
                    for peer in peerRule.peers ?? [] {
                        guard case .cidr(let cidr, let except) = peer else { continue }
                        for prefix in [cidr] + except { if let ipv6 = IPv6Prefix(prefix) { found.insert(ipv6) } }
                    }
                }
            }
        }
        return found.sorted()
    }

    /// An address inside `prefix` but inside none of the more specific prefixes (IPv6).
    static func representativeAddress(of prefix: IPv6Prefix, avoiding all: [IPv6Prefix]) -> IPAddress? {
        let inner = all.filter { $0.length > prefix.length && prefix.contains($0) }
        // Offsets from the start of the prefix, tried within its host bits.
        let hostBits = 128 - Int(prefix.length)
        var candidates: [(UInt64, UInt64)] = [(0, 0), (0, 1)]
        for bit in [hostBits - 1, hostBits - 2, hostBits / 2, 1, 2] where bit >= 0 && bit < hostBits {
            candidates.append(bit >= 64 ? (UInt64(1) << UInt64(bit - 64), 0) : (0, UInt64(1) << UInt64(bit)))
        }
        candidates.append((hostBits > 64 ? UInt64.max >> UInt64(128 - hostBits) : 0,
                           hostBits >= 64 ? .max : (hostBits == 0 ? 0 : UInt64.max >> UInt64(64 - hostBits))))
        for (high, low) in candidates {
            let address = IPv6Prefix(high: prefix.high | high, low: prefix.low | low, length: 128)
            if !inner.contains(where: { $0.contains(address) }) { return address.address }
        }
        return prefix.address
    }

    private func policyCIDRs() -> [IPv4Prefix] {
        var found: Set<IPv4Prefix> = []
        for policy in snapshot.policies {
            for rule in policy.rules {
                for peerRule in rule.ingress + rule.ingressDeny + rule.egress + rule.egressDeny {
                    for peer in peerRule.peers ?? [] {
                        guard case .cidr(let cidr, let except) = peer else { continue }
                        for prefix in [cidr] + except where prefix.network.family == .ipv4 {
                            found.insert(IPv4Prefix(address: UInt32(truncatingIfNeeded: prefix.network.low),
                                                    length: UInt8(prefix.prefixLength)))
                        }
                    }
                }
            }
        }
        return found.sorted()
    }

    /// An address inside `prefix` but inside none of the more specific prefixes, so it
    /// stands for exactly the addresses the identity map gives this prefix's identity.
    private func representativeAddress(of prefix: IPv4Prefix, avoiding all: [IPv4Prefix]) -> IPAddress? {
        let inner = all.filter { $0.length > prefix.length && Self.contains(prefix, $0.address) }
        let size = prefix.length == 0 ? UInt64(1) << 32 : UInt64(1) << UInt64(32 - prefix.length)
        let candidates = [UInt64(0), size - 1, size / 2, size / 4, 3 * size / 4, 1]
        for offset in candidates where offset < size {
            let address = prefix.address &+ UInt32(offset)
            if !inner.contains(where: { Self.contains($0, address) }) { return IPAddress(Self.dotted(address)) }
        }
        return IPAddress(Self.dotted(prefix.address))
    }

    static func contains(_ prefix: IPv4Prefix, _ address: UInt32) -> Bool {
        IPv4Prefix(address: address, length: prefix.length).address == prefix.address
    }

    static func dotted(_ address: UInt32) -> String {
        [24, 16, 8, 0].map { String((address >> UInt32($0)) & 0xff) }.joined(separator: ".")
    }

    static func ipProtocol(_ transport: TransportProtocol) -> UInt8? {
        switch transport {
        case .tcp: return 6
        case .udp: return 17
        case .sctp: return 132
        case .icmp: return 1
        case .icmpv6: return 58
        }
    }
}
