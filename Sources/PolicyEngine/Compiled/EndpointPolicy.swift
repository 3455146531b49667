/// One rule's port clause as it applies to one endpoint: peers, ports and L7 rules.
struct PortEntry: Sendable {
    let reference: RuleReference
    /// Nil = every peer.
    let peers: [Peer]?
    /// Empty together with `icmpTypes` = every port and protocol.
    let ports: [PortSelector]
    let icmpTypes: [ICMPType]
    let l7: L7Rules?

    var isDeny: Bool { reference.isDeny }

    func selects(_ remote: Identity) -> Bool {
        guard let peers else { return true }
        return peers.contains { $0.selects(remote) }
    }

    /// True when the entry covers the port; `namedPorts` resolves `port: name`.
    func covers(port: UInt16, transport: TransportProtocol, namedPorts: [NamedPort]) -> Bool {
        if transport == .icmp || transport == .icmpv6 {
            if !icmpTypes.isEmpty {
                return icmpTypes.contains { $0.type == port && $0.isIPv6 == (transport == .icmpv6) }
            }
            return ports.isEmpty
        }
        if !icmpTypes.isEmpty { return false }
        if ports.isEmpty { return true }
        return ports.contains { $0.covers(port: port, transport: transport, namedPorts: namedPorts) }
    }
}

/// The policy of one endpoint in one direction, compiled: every applicable port
/// clause, and for each exact (port, protocol) named in them a slot listing the
/// clauses that apply there plus an index of their HTTP rules.
final class DirectionPolicy: Sendable {
    struct SlotKey: Hashable, Sendable {
        let port: UInt16
        let transport: TransportProtocol
    }

    struct Slot: Sendable {
        /// Entries covering this exact port (exact, named-and-resolved, ranges and wildcards).
        let entries: [Int]
        /// HTTP rules of those entries, indexed.
        let http: HTTPRuleIndex?
    }

    let direction: Direction
    /// Default deny is on: a selecting rule enables it for this direction.
    let isEnforced: Bool
    let entries: [PortEntry]
    let slots: [SlotKey: Slot]
    /// Entries not resolvable to exact slots at compile time (ranges, all ports, egress
    /// named ports); checked one by one for ports without a slot, and added to slots they cover.
    let looseEntries: [Int]
    /// `fromRequires`/`toRequires` selectors: a peer must match all of them to be allowed.
    let requirements: [LabelSelector]
    /// Policies whose rules select the endpoint in this direction (for explanations).
    let selectingPolicies: [String]

    init(direction: Direction, subject: Identity, isEnforced: Bool, entries: [PortEntry], requirements: [LabelSelector], selectingPolicies: [String]) {
        self.direction = direction
        self.isEnforced = isEnforced
        self.entries = entries
        self.requirements = requirements
        self.selectingPolicies = selectingPolicies
        var exact: [SlotKey: [Int]] = [:]
        var loose: [Int] = []
        for (position, entry) in entries.enumerated() {
            var isLoose = entry.ports.isEmpty || !entry.icmpTypes.isEmpty
            for selector in entry.ports {
                switch selector.port {
                case .number(let number) where number != 0 && selector.endPort == nil:
                    for transport in selector.protocols { exact[SlotKey(port: number, transport: transport), default: []].append(position) }
                case .named(let name) where direction == .ingress:
                    // Ingress: the destination is the subject, whose named ports are known now.
                    for named in subject.namedPorts where named.name == name && selector.protocols.contains(named.transport) {
                        exact[SlotKey(port: named.port, transport: named.transport), default: []].append(position)
                    }
                default:
                    isLoose = true
                }
            }
            if isLoose { loose.append(position) }
        }
        var slots: [SlotKey: Slot] = [:]
        for (key, positions) in exact {
            var all = Set(positions)
            for position in loose where entries[position].covers(port: key.port, transport: key.transport, namedPorts: direction == .ingress ? subject.namedPorts : []) {
                // Egress named ports depend on the peer; they stay loose and are checked at evaluation.
                if direction == .egress, entries[position].ports.contains(where: { if case .named = $0.port { return true } else { return false } }) { continue }
                all.insert(position)
            }
            let sorted = all.sorted()
            var items: [HTTPRuleIndex.Item] = []
            for position in sorted {
                if case .http(let rules)? = entries[position].l7 {
                    items += rules.map { HTTPRuleIndex.Item(entry: position, rule: $0) }
                }
            }
            slots[key] = Slot(entries: sorted, http: items.isEmpty ? nil : HTTPRuleIndex(items: items))
        }
        self.slots = slots
        self.looseEntries = loose
    }

    /// Entries covering the flow's port, and whether they come from a precomputed slot.
    func entriesCovering(_ flow: FlowContext) -> (entries: [Int], slot: Slot?) {
        let key = SlotKey(port: flow.port, transport: flow.transport)
        let namedPorts = direction == .ingress ? flow.subject.namedPorts : flow.remote.namedPorts
        if let slot = slots[key] {
            var result = slot.entries
            if direction == .egress {
                // Peer-dependent named ports were left out of the slot.
                for position in looseEntries where !slot.entries.contains(position)
                    && entries[position].covers(port: flow.port, transport: flow.transport, namedPorts: namedPorts) {
                    result.append(position)
                }
            }
            return (result, slot)
        }
        return (looseEntries.filter { entries[$0].covers(port: flow.port, transport: flow.transport, namedPorts: namedPorts) }, nil)
    }
}

/// Both directions of one endpoint's policy.
final class EndpointPolicy: Sendable {
    let ingress: DirectionPolicy
    let egress: DirectionPolicy

    init(ingress: DirectionPolicy, egress: DirectionPolicy) {
        self.ingress = ingress
        self.egress = egress
    }

    func direction(_ direction: Direction) -> DirectionPolicy {
        direction == .ingress ? ingress : egress
    }
}
