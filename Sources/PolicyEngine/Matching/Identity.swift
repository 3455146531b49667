/// Who is at one end of a flow: a pod described by the endpoints file, a reserved
/// identity (host, world, ...), or an ad-hoc label list given to `policy trace`.
///
/// Policy decisions depend only on these facts, never on sockets or packets.
public struct Identity: Hashable, Sendable, CustomStringConvertible {
    /// The labels selectors see, including `k8s:io.kubernetes.pod.namespace` and
    /// `k8s:io.cilium.k8s.namespace.labels.*` for pods, `reserved:*` for reserved identities.
    public let labels: LabelSet
    /// The pod's namespace; nil for reserved identities.
    public let namespace: String?
    /// The address the identity was found under, when known.
    public let address: IPAddress?
    /// The pod name, when known.
    public let podName: String?
    /// Named container ports (`http` -> 8080/TCP), used by `port: http` in policies.
    public let namedPorts: [NamedPort]
    /// Names under which `address` was learned from allowed DNS answers (for `toFQDNs`).
    public let dnsNames: [String]
    /// True for a pod the endpoints file places on another node (`node:`) than the one this
    /// sluice runs on: that node's sluice judges its side of a flow (its ingress or egress
    /// policy), this one only the local side. Policies select it like any pod.
    public let isOnAnotherNode: Bool

    public init(labels: [Label], namespace: String?, address: IPAddress? = nil, podName: String? = nil,
                namedPorts: [NamedPort] = [], dnsNames: [String] = [], isOnAnotherNode: Bool = false) {
        var all = labels
        if let namespace, !labels.contains(where: { $0.key == Label.podNamespaceKey }) {
            all.append(Label(source: Label.kubernetesSource, key: Label.podNamespaceKey, value: namespace))
        }
        if let namespace, !labels.contains(where: { $0.key == Label.namespaceLabelPrefix + Label.namespaceNameLabel }) {
            all.append(Label(source: Label.kubernetesSource, key: Label.namespaceLabelPrefix + Label.namespaceNameLabel, value: namespace))
        }
        self.labels = LabelSet(all)
        self.namespace = namespace
        self.address = address
        self.podName = podName
        self.namedPorts = namedPorts
        self.dnsNames = dnsNames.map(DNSName.normalize)
        self.isOnAnotherNode = isOnAnotherNode
    }

    /// A pod: k8s labels plus namespace and namespace labels.
    public static func pod(namespace: String, labels: [String: String], namespaceLabels: [String: String] = [:],
                           address: IPAddress? = nil, podName: String? = nil, namedPorts: [NamedPort] = [],
                           isOnAnotherNode: Bool = false) -> Identity {
        var all = labels.map { Label(parsing: "\($0.key)=\($0.value)") }
        all += namespaceLabels.map { Label(source: Label.kubernetesSource, key: Label.namespaceLabelPrefix + $0.key, value: $0.value) }
        return Identity(labels: all, namespace: namespace, address: address, podName: podName, namedPorts: namedPorts,
                        isOnAnotherNode: isOnAnotherNode)
    }

    /// A reserved identity (`reserved:host`, `reserved:world`, ...), with extra labels for nodes.
    public static func reserved(_ kind: ReservedIdentity, address: IPAddress? = nil, labels: [Label] = [], dnsNames: [String] = []) -> Identity {
        var all = labels + [Label(source: Label.reservedSource, key: kind.rawValue, value: "")]
        if kind == .world, let address {
            all.append(Label(source: Label.reservedSource, key: address.family == .ipv4 ? "world-ipv4" : "world-ipv6", value: ""))
        }
        return Identity(labels: all, namespace: nil, address: address, dnsNames: dnsNames)
    }

    /// The reserved identity this is, if any (the first `reserved:` label Sluice knows).
    public var reservedKind: ReservedIdentity? {
        for label in labels.labels where label.source == Label.reservedSource {
            if let kind = ReservedIdentity(rawValue: label.key) { return kind }
        }
        return nil
    }

    /// A pod of the cluster: has a namespace and no reserved label.
    public var isClusterEndpoint: Bool { namespace != nil && reservedKind == nil }

    /// A pod of this node: a cluster endpoint the endpoints file does not place on another
    /// node. This node's sluice judges its egress and ingress policy.
    public var isLocalEndpoint: Bool { isClusterEndpoint && !isOnAnotherNode }

    /// True for identities outside the cluster (`reserved:world`); CIDR and FQDN peers select only these.
    public var isWorld: Bool { reservedKind == .world }

    public var description: String {
        var text = labels.description
        if let podName { text = "\(namespace ?? "")/\(podName) [\(text)]" }
        if let address { text += " @\(address)" }
        return text
    }
}

/// A named container port from the endpoints file.
public struct NamedPort: Hashable, Sendable {
    public let name: String
    public let port: UInt16
    public let transport: TransportProtocol

    public init(name: String, port: UInt16, transport: TransportProtocol = .tcp) {
        self.name = name.lowercased()
        self.port = port
        self.transport = transport
    }
}

/// Identities Cilium reserves for peers that are not pods.
public enum ReservedIdentity: String, Sendable, CaseIterable {
    case host, world, unmanaged, health, `init`, ingress
    case remoteNode = "remote-node"
    case kubeAPIServer = "kube-apiserver"
}

/// The entities of `fromEntities`/`toEntities`.
public enum Entity: String, Sendable, CaseIterable, Hashable {
    case all, world, cluster, host, `init`, health, unmanaged, ingress, none
    case worldIPv4 = "world-ipv4"
    case worldIPv6 = "world-ipv6"
    case remoteNode = "remote-node"
    case kubeAPIServer = "kube-apiserver"

    /// True when `identity` belongs to this entity.
    public func contains(_ identity: Identity) -> Bool {
        switch self {
        case .all: return true
        case .none: return false
        case .world: return identity.isWorld
        case .worldIPv4: return identity.isWorld && (identity.address?.family ?? .ipv4) == .ipv4
            && !identity.labels.contains(source: Label.reservedSource, key: "world-ipv6")
        case .worldIPv6: return identity.isWorld && (identity.address?.family ?? .ipv6) == .ipv6
            && !identity.labels.contains(source: Label.reservedSource, key: "world-ipv4")
        case .cluster: return !identity.isWorld
        case .host: return identity.reservedKind == .host
        case .remoteNode: return identity.reservedKind == .remoteNode
        case .kubeAPIServer: return identity.reservedKind == .kubeAPIServer
        case .`init`: return identity.reservedKind == .`init`
        case .health: return identity.reservedKind == .health
        case .unmanaged: return identity.reservedKind == .unmanaged
        case .ingress: return identity.reservedKind == .ingress
        }
    }
}

/// Layer 4 protocols a port rule can name.
public enum TransportProtocol: String, Sendable, Hashable, CaseIterable, Comparable {
    case tcp = "TCP", udp = "UDP", sctp = "SCTP", icmp = "ICMP", icmpv6 = "ICMPV6"

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
