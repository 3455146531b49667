/// The internal, typed form of policy documents. YAML and JSON become these types in
/// exactly one place (`PolicyLoader`); nothing downstream sees a YAML node.

/// Traffic direction from the point of view of the selected endpoint.
public enum Direction: String, Sendable, Hashable, CaseIterable {
    case ingress = "INGRESS", egress = "EGRESS"
}

/// Where a policy came from, for messages.
public struct DocumentLocation: Hashable, Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }
    public var description: String { "\(file):\(line):\(column)" }
}

/// One loaded policy document.
public struct Policy: Sendable {
    public enum Kind: String, Sendable { case ciliumNetworkPolicy = "CiliumNetworkPolicy", ciliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy", networkPolicy = "NetworkPolicy" }
    public let kind: Kind
    /// Nil for the clusterwide kind.
    public let namespace: String?
    public let name: String
    /// The rules of `spec` followed by those of `specs` (a NetworkPolicy has one).
    public let rules: [PolicyRule]
    public let location: DocumentLocation

    /// `NAMESPACE/NAME`, or `NAME` for a clusterwide policy.
    public var qualifiedName: String { namespace.map { "\($0)/\(name)" } ?? name }
}

/// One Cilium rule (`spec` or an element of `specs`), or a NetworkPolicy's spec.
public struct PolicyRule: Sendable {
    /// Which endpoints the rule applies to.
    public enum Subject: Sendable {
        /// `endpointSelector` (already scoped to the policy's namespace when namespaced).
        case endpoints(LabelSelector)
        /// `nodeSelector`: the host's own identity.
        case nodes(LabelSelector)
    }
    public let subject: Subject
    public let ingress: [PeerRule]
    public let ingressDeny: [PeerRule]
    public let egress: [PeerRule]
    public let egressDeny: [PeerRule]
    /// Whether selecting an endpoint turns on default deny for ingress
    /// (`enableDefaultDeny.ingress`, default: the rule has ingress or ingressDeny;
    /// NetworkPolicy: `Ingress` in `policyTypes`).
    public let defaultDenyIngress: Bool
    public let defaultDenyEgress: Bool
    public let description: String?

    public func rules(_ direction: Direction, deny: Bool) -> [PeerRule] {
        switch (direction, deny) {
        case (.ingress, false): return ingress
        case (.ingress, true): return ingressDeny
        case (.egress, false): return egress
        case (.egress, true): return egressDeny
        }
    }

    public func defaultDeny(_ direction: Direction) -> Bool {
        direction == .ingress ? defaultDenyIngress : defaultDenyEgress
    }
}

/// One element of `ingress`, `ingressDeny`, `egress` or `egressDeny`.
public struct PeerRule: Sendable {
    /// Its position in the policy's list for that direction, counting `specs` in order.
    public let index: Int
    /// The peers allowed (or denied): nil = every peer, empty = no peer at all.
    ///
    /// Cilium kinds: nil when the rule names no L3 member but restricts ports or ICMP
    /// (`toPorts`/`icmps` alone apply to every peer); empty for a rule that names neither
    /// peers nor ports ("An empty rule is not an allow-all": `ingress: [{}]` is the
    /// reference's documented deny-all, `ingressDeny: [{}]` denies nothing) and for an
    /// explicitly empty member such as `fromEndpoints: []` (the reference: "Explicitly
    /// check for empty non-nil slices, it should not result in any identity being
    /// selected"). NetworkPolicy: nil when `from`/`to` is absent or empty ("If this field
    /// is empty or missing, this rule matches all sources").
    public let peers: [Peer]?
    /// `fromRequires`/`toRequires`: every peer of the selected endpoint must also match these.
    public let requires: [LabelSelector]
    /// `toPorts`; empty = every port and protocol.
    public let portRules: [PortRule]
    /// `icmps` fields; non-empty means the rule is about ICMP only.
    public let icmpTypes: [ICMPType]
}

/// A peer an L3 member selects.
public enum Peer: Sendable, CustomStringConvertible {
    /// `fromEndpoints`/`toEndpoints`/`podSelector`/`namespaceSelector`.
    case endpoints(LabelSelector)
    /// `fromNodes`/`toNodes`: node identities (host, remote-node) with matching labels.
    case nodes(LabelSelector)
    /// `fromCIDR`/`fromCIDRSet`/`ipBlock`: addresses outside the cluster.
    case cidr(CIDR, except: [CIDR])
    case entity(Entity)
    /// `toFQDNs`: addresses learned from DNS answers for a matching name.
    case fqdn(DNSMatcher)
    /// `toServices`: Sluice has no service directory yet, so these select nothing.
    case service(String)

    /// True when `identity` is selected. CIDR and FQDN peers select only world
    /// identities, as in Cilium ("CIDR rules do not apply to traffic where both sides
    /// of the connection are managed by Cilium").
    public func selects(_ identity: Identity) -> Bool {
        switch self {
        case .endpoints(let selector):
            if !selector.namesReservedLabels && !identity.isClusterEndpoint { return false }
            return selector.matches(identity.labels)
        case .nodes(let selector):
            guard identity.reservedKind == .host || identity.reservedKind == .remoteNode else { return false }
            return selector.matches(identity.labels)
        case .cidr(let cidr, let except):
            guard identity.isWorld, let address = identity.address else { return false }
            return cidr.contains(address) && !except.contains { $0.contains(address) }
        case .entity(let entity):
            return entity.contains(identity)
        case .fqdn(let matcher):
            guard identity.isWorld else { return false }
            return identity.dnsNames.contains { matcher.matches($0) }
        case .service:
            return false
        }
    }

    public var description: String {
        switch self {
        case .endpoints(let selector): return "endpoints(\(selector))"
        case .nodes(let selector): return "nodes(\(selector))"
        case .cidr(let cidr, let except): return except.isEmpty ? "cidr(\(cidr))" : "cidr(\(cidr) except \(except.map(\.description).joined(separator: ",")))"
        case .entity(let entity): return "entity(\(entity.rawValue))"
        case .fqdn(let matcher): return "fqdn(\(matcher.text))"
        case .service(let name): return "service(\(name))"
        }
    }
}

/// ICMP type selector from `icmps[].fields[]`.
public struct ICMPType: Sendable, Hashable {
    public let type: UInt8
    public let isIPv6: Bool
}

/// One element of `toPorts`.
public struct PortRule: Sendable {
    /// Position in `toPorts`.
    public let index: Int
    /// The ports the rule names; empty = none, so the port rule allows (or denies)
    /// nothing, as in the reference, where a port rule reaches the datapath only
    /// through its ports (every port is written `port: "0"`).
    public let ports: [PortSelector]
    /// L7 rules; nil = L3/L4 only.
    public let l7: L7Rules?
    public let serverNames: [String]
}

/// One `ports[]` element: a port number (0 = all), a named port, or a range.
public struct PortSelector: Sendable, Hashable, CustomStringConvertible {
    public enum Port: Sendable, Hashable {
        case number(UInt16)
        case named(String)
    }
    public let port: Port
    /// `endPort`, for a range `port...endPort`.
    public let endPort: UInt16?
    /// TCP, UDP, SCTP; ANY expands to all three.
    public let protocols: Set<TransportProtocol>

    public init(port: Port, endPort: UInt16? = nil, protocols: Set<TransportProtocol>) {
        self.port = port
        self.endPort = endPort
        self.protocols = protocols
    }

    /// True when `port`/`transport` is covered, resolving names through `namedPorts`.
    public func covers(port number: UInt16, transport: TransportProtocol, namedPorts: [NamedPort]) -> Bool {
        guard protocols.contains(transport) else { return false }
        switch port {
        case .number(let first):
            if first == 0 { return true }
            if let endPort { return number >= first && number <= endPort }
            return number == first
        case .named(let name):
            return namedPorts.contains { $0.name == name && $0.port == number && $0.transport == transport }
        }
    }

    public var description: String {
        let protocolText = protocols.count >= 3 ? "ANY" : protocols.sorted().map(\.rawValue).joined(separator: "+")
        switch port {
        case .number(let number):
            if let endPort { return "\(number)-\(endPort)/\(protocolText)" }
            return number == 0 ? "*/\(protocolText)" : "\(number)/\(protocolText)"
        case .named(let name): return "\(name)/\(protocolText)"
        }
    }

    static let anyProtocol: Set<TransportProtocol> = [.tcp, .udp, .sctp]
}

/// An application protocol whose requests L7 rules judge.
public enum L7Protocol: String, Sendable, Hashable, CaseIterable, Comparable {
    case http, kafka, dns

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The L7 rules of a port rule: one type per port rule.
public enum L7Rules: Sendable {
    case http([HTTPRule])
    case kafka([KafkaRule])
    case dns([DNSMatcher])

    /// The protocol these rules judge.
    public var l7Protocol: L7Protocol {
        switch self {
        case .http: return .http
        case .kafka: return .kafka
        case .dns: return .dns
        }
    }

    public var typeName: String { l7Protocol.rawValue }

    var count: Int {
        switch self {
        case .http(let rules): return rules.count
        case .kafka(let rules): return rules.count
        case .dns(let rules): return rules.count
        }
    }
}

/// A value for a header check: written in the policy, or read from a secret file.
/// The secret's value never appears in descriptions, logs or traces.
public struct HeaderValue: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let value: String
    public let isSecret: Bool
    public init(_ value: String, isSecret: Bool) {
        self.value = value
        self.isSecret = isSecret
    }
    public var description: String { isSecret ? "[redacted]" : value }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["value": description]) }
}

/// One `rules.http[]` element. Fields are ANDed; an empty rule matches every request.
public struct HTTPRule: Sendable {
    public let index: Int
    public let method: PCRE2Pattern?
    public let path: PCRE2Pattern?
    public let host: PCRE2Pattern?
    /// `headers`: ("name", "value") = exact match, ("name", nil) = presence.
    public let headers: [(name: String, value: String?)]
    public let headerMatches: [HeaderMatch]
}

/// `headerMatches[]`: a header that must have a value, and what to do when it does not.
///
/// A header sent several times is judged by all its values joined with `,`, as the
/// reference's proxy sees it; see `HTTPRequestFacts.value(of:)`.
public struct HeaderMatch: Sendable, Hashable {
    /// What a mismatch does. ADD and REPLACE carry the value they set, so a rule that
    /// sets a header always has one (the loader refuses `mismatch: ADD` without a value).
    public enum Mismatch: Sendable, Hashable {
        /// No `mismatch`: the request is not matched by this rule.
        case deny
        /// LOG: record the mismatch and go on.
        case log
        /// ADD: append `name: value` (copies already sent stay).
        case add(HeaderValue)
        /// DELETE: remove every copy of the header.
        case delete
        /// REPLACE: remove every copy of the header, then add `name: value`.
        case replace(HeaderValue)

        /// The policy keyword (`LOG`, `ADD`, ...; `DENY` for no `mismatch`).
        public var keyword: String {
            switch self {
            case .deny: return "DENY"
            case .log: return "LOG"
            case .add: return "ADD"
            case .delete: return "DELETE"
            case .replace: return "REPLACE"
            }
        }
    }
    /// Lower-cased header name.
    public let name: String
    /// Nil = the header must only be present.
    public let value: HeaderValue?
    public let mismatch: Mismatch
}

/// One `rules.kafka[]` element. An empty rule matches every request.
public struct KafkaRule: Sendable, Hashable {
    public let index: Int
    /// Allowed API keys (from `role` or `apiKey`); nil = any key.
    public let apiKeys: Set<Int16>?
    public let apiVersion: Int16?
    public let clientID: String?
    public let topic: String?
}
