import PolicyEngine

/// Recorded conversations judged as the live proxy would judge them (`sluice replay`):
/// each TCP connection and UDP flow, handed in as it was recorded, goes through the same
/// phases as live traffic (the policy's L3/L4 verdict, then the L7 kind its port carries,
/// then the registry's session driven by the socket-free `StreamDriver`), and every verdict
/// becomes the same flow record.
///
/// Sessions run in audit mode (`SessionContext.audit`): a message judged denied is
/// reported `DROPPED` and still fed on as recorded, so the conversation stays in step with
/// what its server answered. Nothing here touches a socket or a capture format; the caller
/// decodes and reassembles, and hands over client and server bytes in recorded order.
public final class RecordedTraffic {
    /// Why a recorded connection was not judged at L7.
    public enum Outcome: Equatable, Sendable {
        /// Its port carries L7 rules of this kind: every message is judged.
        case judged(L7Protocol)
        /// No L7 rules on its port: the L3/L4 verdict is all there is.
        case layer4
        /// The L3/L4 policy drops it (the datapath would have).
        case deniedAtLayer4
        /// L7 rules sluice cannot judge yet (or of two kinds): the live proxy refuses it.
        case refused(String)
    }

    public struct Counters: Equatable, Sendable {
        public var connections = 0
        public var judged = 0
        public var layer4 = 0
        public var deniedAtLayer4 = 0
        public var refused = 0
        public var datagrams = 0
        /// Connections whose session ended them (unreadable traffic, a fault), by reason.
        public var endedBySession: [String: Int] = [:]

        public init() {}
    }

    /// A class: each data event finds it with one lookup and runs its connection in place.
    private final class Stream {
        var connection: MemoryConnection?

        init(connection: MemoryConnection?) { self.connection = connection }
    }

    /// The capture time of what is being judged (nanoseconds since the epoch): the sessions'
    /// clocks read it, so records carry when the packet was recorded and latencies are the
    /// recorded ones. (Read and written on the replay's one thread.)
    private final class CaptureTime: @unchecked Sendable {
        var nanoseconds: UInt64 = 0
    }

    private struct FlowKey: Hashable {
        var client: SocketAddress
        var server: SocketAddress
    }

    private let policy: WorkerPolicy
    private let registry: SessionRegistry
    private let reporter: L7FlowReporter?
    private var streams: [Int: Stream] = [:]
    private var flows: [FlowKey: (identities: ConnectionIdentities, session: L7DatagramSession?)] = [:]
    public private(set) var counters = Counters()
    private let captureTime = CaptureTime()
    private let clock: SessionClock

    /// When the recorded packet being handed in was captured (nanoseconds since the epoch);
    /// set it before each call.
    public var now: UInt64 {
        get { captureTime.nanoseconds }
        set { captureTime.nanoseconds = newValue }
    }

    /// Flows remembered at once; past it the oldest half is forgotten (a later datagram of
    /// one starts it again, judged the same way).
    public static let maximumFlows = 65_536

    public init(policy: WorkerPolicy, registry: SessionRegistry, reporter: L7FlowReporter?) {
        self.policy = policy
        self.registry = registry
        self.reporter = reporter
        let time = captureTime
        clock = SessionClock(monotonic: { time.nanoseconds }, wall: { time.nanoseconds })
    }

    // MARK: TCP

    /// A recorded TCP connection begins (`id` names it in the calls that follow).
    @discardableResult
    public func streamOpened(_ id: Int, client: SocketAddress, server: SocketAddress) -> Outcome {
        counters.connections += 1
        let identities = policy.identities(client: client, server: server)
        let outcome = judge(identities)
        let stream = Stream(connection: nil)
        if case .judged(let kind) = outcome,
           let session = registry.streamSession(kind, context: SessionContext(identities: identities, policy: policy,
                                                                            reporter: reporter, audit: true, clock: clock)) {
            var connection = MemoryConnection(session: session)
            connection.keepsDelivered = false
            stream.connection = connection
        }
        streams[id] = stream
        return outcome
    }

    /// Whether a TCP connection between these ends would be judged as `kind` (its port's L7
    /// rules), before it is opened: a replay entering a connection part-way asks first.
    public func carries(_ kind: L7Protocol, client: SocketAddress, server: SocketAddress) -> Bool {
        policy.requirement(for: policy.identities(client: client, server: server)) == .kind(kind)
    }

    /// Bytes the connection's client (`fromClient`) or server sent, in recorded order.
    public func streamData(_ id: Int, fromClient: Bool, _ bytes: UnsafeRawBufferPointer) {
        guard let stream = streams[id], stream.connection?.closedReason == nil else { return }
        if fromClient { stream.connection?.clientSends(bytes) } else { stream.connection?.serverSends(bytes) }
    }

    /// The connection ended (FIN either way, a reset, or the end of the capture).
    public func streamEnded(_ id: Int) {
        guard let stream = streams.removeValue(forKey: id), var connection = stream.connection else { return }
        connection.clientCloses()
        connection.serverCloses()
        if let reason = connection.closedReason { counters.endedBySession[reason, default: 0] += 1 }
        connection.release()
    }

    // MARK: UDP

    /// One recorded datagram. A flow's first datagram names its client (the sender) and
    /// server; later ones in either direction belong to it.
    public func datagram(from source: SocketAddress, to destination: SocketAddress, _ payload: UnsafeRawBufferPointer) {
        counters.datagrams += 1
        let reply = FlowKey(client: destination, server: source)
        if let flow = flows[reply] {
            _ = flow.session?.serverDatagram(payload)
            return
        }
        let key = FlowKey(client: source, server: destination)
        if flows[key] == nil {
            if flows.count >= Self.maximumFlows { forgetOldestFlows() }
            counters.connections += 1
            var identities = policy.identities(client: source, server: destination)
            identities.transport = .udp
            var session: L7DatagramSession?
            if case .judged(let kind) = judge(identities) {
                session = registry.datagramSession(kind, context: SessionContext(identities: identities, policy: policy,
                                                                                reporter: reporter, audit: true, clock: clock))
            }
            flows[key] = (identities, session)
        }
        _ = flows[key]?.session?.clientDatagram(payload)
    }

    /// The capture ended: every connection still open ends with it.
    public func finish() {
        for id in Array(streams.keys) { streamEnded(id) }
        for flow in flows.values { flow.session?.flowEnded() }
        flows.removeAll()
    }

    // MARK: Phases

    /// L3/L4 first (as the datapath decides before the proxy sees anything), then the kind.
    private func judge(_ identities: ConnectionIdentities) -> Outcome {
        let snapshot = policy.snapshot
        for flow in identities.flows where !snapshot.evaluate(flow: flow).isAllowed {
            counters.deniedAtLayer4 += 1
            reporter?.report(FlowRecords.dropped(client: identities.client, destination: identities.server,
                                                 transport: identities.transport == .udp ? "UDP" : "TCP",
                                                 listener: "replay", reason: "POLICY_DENIED", time: now))
            return .deniedAtLayer4
        }
        switch policy.requirement(for: identities) {
        case .none:
            counters.layer4 += 1
            return .layer4
        case .kind(let kind):
            let judges = identities.transport == .udp ? registry.judgesDatagrams(of: kind) : registry.judgesStreams(of: kind)
            guard judges else {
                return refuse(identities, L7Detection.refusal(.kind(kind), transport: identities.transport,
                                                              port: identities.server.port) ?? "not judged")
            }
            counters.judged += 1
            return .judged(kind)
        case .conflicting(let kinds):
            return refuse(identities, L7Detection.refusal(.conflicting(kinds), transport: identities.transport,
                                                          port: identities.server.port) ?? "not judged")
        }
    }

    private func refuse(_ identities: ConnectionIdentities, _ reason: String) -> Outcome {
        counters.refused += 1
        reporter?.report(FlowRecords.dropped(client: identities.client, destination: identities.server,
                                             transport: identities.transport == .udp ? "UDP" : "TCP",
                                             listener: "replay", reason: reason, time: now))
        return .refused(reason)
    }

    private func forgetOldestFlows() {
        // Dictionaries keep no age: forget half, arbitrarily; a later datagram restarts its flow.
        for key in flows.keys.prefix(flows.count / 2) {
            flows[key]?.session?.flowEnded()
            flows[key] = nil
        }
    }
}
