import PolicyEngine

/// What a connection needs under the current policy: phase "detect protocol".
public enum L7Requirement: Equatable, Sendable {
    /// No L7 rules apply to the connection's port: relay it at L4 (the datapath has
    /// already enforced L3/L4).
    case none
    /// Rules of one L7 protocol apply: parse and judge every message with the session the
    /// registry has for that kind (none registered: the connection is denied).
    case kind(L7Protocol)
    /// Different policies put rules of different protocols on the port: no one parser can
    /// judge every message, so the connection is denied.
    case conflicting([L7Protocol])
}

/// One worker's view of the policy: the holder's current snapshot, each address's
/// identity and each flow's settled policy questions, cached until the policy changes.
///
/// Single-threaded: one per worker, shared by that worker's connections. Sessions keep
/// the `version` their policies came from and call `isCurrent(_:)` (one atomic load)
/// before judging a request; when it says no, they take fresh policies here. A policy
/// change therefore applies to the next request on every connection, old or new.
public final class WorkerPolicy {
    private let holder: PolicySnapshotHolder
    private var cachedSnapshot: PolicySnapshot
    private var cachedVersion: UInt64
    private var identities: [SocketAddress.HostKey: Identity] = [:]
    /// Both identities of a host pair, shared by the connections between them.
    private var peerIdentities: [HostPair: PeerIdentities] = [:]

    private struct HostPair: Hashable {
        var client: SocketAddress.HostKey
        var server: SocketAddress.HostKey
    }
    private var connectionPolicies: [FlowContext: ConnectionPolicy] = [:]
    /// Each connection's policy questions answered whole, by the two hosts, port and
    /// transport they were derived from: a new connection between the same peers takes the
    /// same array (no allocation, no hashing of identities and their labels), and sessions
    /// holding it share one buffer instead of keeping a copy each.
    private var connectionPolicyLists: [PeersKey: PolicyList] = [:]

    private struct PeersKey: Hashable {
        var client: SocketAddress.HostKey
        var server: SocketAddress.HostKey
        var port: UInt16
        var transport: TransportProtocol
    }

    private struct PolicyList {
        /// The identities the policies were derived from: a caller holding others (taken
        /// under an earlier policy) gets its own answer, not this one.
        var peers: PeerIdentities
        var policies: [ConnectionPolicy]
    }
    /// Bound on each cache; a full cache is emptied (it refills from the snapshot).
    static let maximumCachedEntries = 4096

    /// Names destinations were learned under (toFQDNs); nil when nothing learns them.
    private let learnedNames: FQDNLearning?

    public init(holder: PolicySnapshotHolder, learnedNames: FQDNLearning? = nil) {
        self.holder = holder
        self.learnedNames = learnedNames
        cachedVersion = holder.version
        cachedSnapshot = holder.snapshot
    }

    /// The holder's version the caches were last filled under.
    public var version: UInt64 { cachedVersion }

    /// True when nothing was published since `version`.
    @inline(__always)
    public func isCurrent(_ version: UInt64) -> Bool { holder.version == version }

    /// The current snapshot (refreshing the caches first when the policy changed).
    public var snapshot: PolicySnapshot {
        refresh()
        return cachedSnapshot
    }

    /// Both ends of a connection as the current policy knows them.
    public func identities(client: SocketAddress, server: SocketAddress) -> ConnectionIdentities {
        refresh()
        let pair = HostPair(client: client.hostKey, server: server.hostKey)
        if let known = peerIdentities[pair] { return ConnectionIdentities(client: client, server: server, peers: known) }
        var destination = identity(of: server)
        if destination.isWorld, let learnedNames, let endpoint = IPAddress(client.host), let address = IPAddress(server.host) {
            // Names come and go with DNS answers: looked up for each connection, not cached.
            let names = learnedNames.names(learnedBy: endpoint, for: address)
            if !names.isEmpty {
                destination = destination.with(dnsNames: names)
                return ConnectionIdentities(client: client, server: server,
                                            peers: PeerIdentities(source: identity(of: client), destination: destination))
            }
        }
        let peers = PeerIdentities(source: identity(of: client), destination: destination)
        if peerIdentities.count >= Self.maximumCachedEntries { peerIdentities.removeAll(keepingCapacity: true) }
        peerIdentities[pair] = peers
        return ConnectionIdentities(client: client, server: server, peers: peers)
    }

    /// The connection's policy questions (`identities.flows`) under the current policy.
    public func policies(for identities: ConnectionIdentities) -> [ConnectionPolicy] {
        refresh()
        let key = PeersKey(client: identities.client.hostKey, server: identities.server.hostKey,
                           port: identities.server.port, transport: identities.transport)
        if let known = connectionPolicyLists[key] {
            if known.peers === identities.peers
                || (known.peers.source == identities.source && known.peers.destination == identities.destination) {
                return known.policies
            }
            return identities.flows.map(policy(for:))
        }
        let policies = identities.flows.map(policy(for:))
        if connectionPolicyLists.count >= Self.maximumCachedEntries { connectionPolicyLists.removeAll(keepingCapacity: true) }
        connectionPolicyLists[key] = PolicyList(peers: identities.peers, policies: policies)
        return policies
    }

    /// Phase "detect protocol" for a TCP connection on a transparent listener.
    public func requirement(for identities: ConnectionIdentities) -> L7Requirement {
        L7Detection.requirement(policies(for: identities))
    }

    /// Phase "detect protocol" for a UDP flow from `client` to `server`: what the policy puts
    /// on it, and both ends (transport UDP) for the session that judges it.
    public func datagramRequirement(client: SocketAddress, server: SocketAddress)
        -> (requirement: L7Requirement, identities: ConnectionIdentities) {
        var identities = identities(client: client, server: server)
        identities.transport = .udp
        return (requirement(for: identities), identities)
    }

    private func identity(of address: SocketAddress) -> Identity {
        let key = address.hostKey
        if let known = identities[key] { return known }
        let found = ConnectionIdentities.identity(of: address, in: cachedSnapshot)
        if identities.count >= Self.maximumCachedEntries { identities.removeAll(keepingCapacity: true) }
        identities[key] = found
        return found
    }

    private func policy(for flow: FlowContext) -> ConnectionPolicy {
        if let known = connectionPolicies[flow] { return known }
        let policy = cachedSnapshot.policy(forEndpoint: flow.subject).connection(flow)
        if connectionPolicies.count >= Self.maximumCachedEntries { connectionPolicies.removeAll(keepingCapacity: true) }
        connectionPolicies[flow] = policy
        return policy
    }

    /// Empties the caches when the holder published since they were filled. The version is
    /// read before the snapshot (see `PolicySnapshotHolder`).
    @inline(__always)
    private func refresh() {
        let version = holder.version
        guard version != cachedVersion else { return }
        cachedVersion = version
        cachedSnapshot = holder.snapshot
        identities.removeAll(keepingCapacity: true)
        peerIdentities.removeAll(keepingCapacity: true)
        connectionPolicies.removeAll(keepingCapacity: true)
        connectionPolicyLists.removeAll(keepingCapacity: true)
    }
}

/// Which L7 protocol, if any, a connection carries under the current policy.
public enum L7Detection {
    /// What the policies this connection passes put on its port: the compiled policy's
    /// typed L7 kind (`ConnectionPolicy.l7Protocols`), the same value the datapath's
    /// redirect decision reads. `policies` are the connection's policy questions
    /// (`identities.flows`).
    public static func requirement(_ policies: [ConnectionPolicy]) -> L7Requirement {
        var protocols = Set<L7Protocol>()
        for policy in policies { protocols.formUnion(policy.l7Protocols) }
        guard let first = protocols.first else { return .none }
        return protocols.count == 1 ? .kind(first) : .conflicting(protocols.sorted())
    }

    /// Why a connection (or datagram) with `requirement` on `port` is refused when the
    /// registry cannot judge it; nil for `.none`.
    public static func refusal(_ requirement: L7Requirement, transport: TransportProtocol, port: UInt16) -> String? {
        let where_ = "\(transport == .udp ? "UDP" : "TCP") port \(port)"
        switch requirement {
        case .none:
            return nil
        case .kind(let kind):
            return "\(kind.displayName) rules on \(where_) are not enforced by this sluice yet: denied"
        case .conflicting(let kinds):
            return "\(kinds.map(\.displayName).joined(separator: " and ")) rules on \(where_) cannot be judged by one "
                + "parser: denied"
        }
    }
}

extension L7Protocol {
    /// How flow records and messages name the protocol.
    public var displayName: String {
        switch self {
        case .http: return "HTTP"
        case .kafka: return "Kafka"
        case .dns: return "DNS"
        }
    }
}
