import PolicyEngine

/// Who is talking to whom on one connection, as the policy engine sees it.
public struct ConnectionIdentities: Sendable {
    public var client: SocketAddress
    public var server: SocketAddress
    public var source: Identity
    public var destination: Identity
    /// The connection's transport (TCP unless a datagram listener asks).
    public var transport: TransportProtocol = .tcp

    public init(client: SocketAddress, server: SocketAddress, source: Identity, destination: Identity) {
        self.client = client
        self.server = server
        self.source = source
        self.destination = destination
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
    /// endpoint's ingress and the source endpoint's egress. With neither end a known
    /// endpoint (explicit mode in front of an address the endpoints file does not name),
    /// the destination's ingress is still asked.
    public var flows: [FlowContext] {
        var flows: [FlowContext] = []
        if destination.isClusterEndpoint || !source.isClusterEndpoint {
            flows.append(FlowContext(subject: destination, direction: .ingress, remote: source, port: server.port,
                                     transport: transport))
        }
        if source.isClusterEndpoint {
            flows.append(FlowContext(subject: source, direction: .egress, remote: destination, port: server.port,
                                     transport: transport))
        }
        return flows
    }
}
