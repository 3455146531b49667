import PolicyEngine

/// The identities of two peers, shared by every connection between them (a worker hands
/// out one per host pair): a session holds a reference, not two copies of label sets.
public final class PeerIdentities: Sendable {
    public let source: Identity
    public let destination: Identity

    public init(source: Identity, destination: Identity) {
        self.source = source
        self.destination = destination
    }
}

/// Who is talking to whom on one connection, as the policy engine sees it.
public struct ConnectionIdentities: Sendable {
    public var client: SocketAddress
    public var server: SocketAddress
    /// Both ends' identities (shared between connections of the same peers).
    public private(set) var peers: PeerIdentities
    /// The connection's transport (TCP unless a datagram listener asks).
    public var transport: TransportProtocol = .tcp

    public var source: Identity {
        get { peers.source }
        set { peers = PeerIdentities(source: newValue, destination: peers.destination) }
    }

    public var destination: Identity {
        get { peers.destination }
        set { peers = PeerIdentities(source: peers.source, destination: newValue) }
    }

    public init(client: SocketAddress, server: SocketAddress, peers: PeerIdentities) {
        self.client = client
        self.server = server
        self.peers = peers
    }

    public init(client: SocketAddress, server: SocketAddress, source: Identity, destination: Identity) {
        self.init(client: client, server: server, peers: PeerIdentities(source: source, destination: destination))
    }

    /// Looks both ends up in the snapshot's endpoints (unknown addresses are `world`).
    public init(client: SocketAddress, server: SocketAddress, snapshot: PolicySnapshot) {
        self.init(client: client, server: server, source: Self.identity(of: client, in: snapshot),
                  destination: Self.identity(of: server, in: snapshot))
    }

    /// The identity of one address in the snapshot's endpoints (`world` when unknown).
    public static func identity(of address: SocketAddress, in snapshot: PolicySnapshot) -> Identity {
        IPAddress(address.host).map { snapshot.endpoints.identity(for: $0) } ?? .reserved(.world)
    }

    /// The policy questions a request on this connection must pass: the destination
    /// endpoint's ingress and the source endpoint's egress, each only where that endpoint is
    /// on this node (a pod on another node has its side judged by that node's sluice: the
    /// source node judges egress, the destination node ingress). With neither end a local
    /// endpoint (explicit mode in front of an address the endpoints file does not name),
    /// the destination's ingress is still asked.
    public var flows: [FlowContext] {
        var flows: [FlowContext] = []
        if destination.isLocalEndpoint || !source.isLocalEndpoint {
            flows.append(FlowContext(subject: destination, direction: .ingress, remote: source, port: server.port,
                                     transport: transport))
        }
        if source.isLocalEndpoint {
            flows.append(FlowContext(subject: source, direction: .egress, remote: destination, port: server.port,
                                     transport: transport))
        }
        return flows
    }
}
