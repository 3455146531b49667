import L7Parsers
#if canImport(Glibc)
import Glibc
#endif
import PolicyEngine

/// Counters of one worker, read by the runtime at exit and by tests.
public struct WorkerCounters: Sendable {
    public var accepted: UInt64 = 0
    public var finished: UInt64 = 0
    public var refusedLoops: UInt64 = 0
    public var datagramsDropped: UInt64 = 0
    /// Connections refused at accept: their port has rules Sluice cannot judge yet.
    public var deniedUnjudgeable: UInt64 = 0
    /// L4-relayed connections reset because a policy change put L7 rules on their port.
    public var resetByPolicyChange: UInt64 = 0
    /// Times a socket could not be had for lack of descriptors (accept or upstream).
    public var descriptorsExhausted: UInt64 = 0
    /// Connections still open when the drain deadline (`timeouts.drain`) passed, reset then.
    public var cutAtDrainDeadline: UInt64 = 0
}

/// A worker's open connections per listener (UDP: flows) and its buffer blocks.
public struct WorkerGauges: Sendable {
    public var connections: [String: Int] = [:]
    public var buffersInUse = 0
    public var buffersCached = 0
    public init() {}

    public mutating func add(_ other: WorkerGauges) {
        for (name, count) in other.connections { connections[name, default: 0] += count }
        buffersInUse += other.buffersInUse
        buffersCached += other.buffersCached
    }
}

/// One event-loop thread's share of the proxy: its own listening sockets (bound with
/// `SO_REUSEPORT`), its connections and its buffer pool. Nothing here is shared with other
/// workers except the flow log.
public final class Worker: ConnectionOwner, AcceptDelegate, DatagramDelegate, EventHandler {
    public let index: Int
    public let loop: EventLoop
    public let bufferPool: BufferPool
    private let configuration: ProxyConfiguration
    private let flowLog: FlowLog
    /// The L7 protocols this worker can judge (see `SessionRegistry`).
    private let sessions: SessionRegistry
    private var streamListeners: [StreamListener] = []
    private var datagramListeners: [DatagramListener] = []
    private var connections: [ObjectIdentifier: RelayConnection] = [:]
    private var draining = false
    /// The policy as this worker sees it, with its caches (nil without a policy section).
    private let workerPolicy: WorkerPolicy?
    private var drainTimer: TimerID?
    private let maxConnections: Int
    /// Descriptor exhaustion is reported at most once per `exhaustionReportInterval`.
    private var exhaustionReportedAt: UInt64?
    private var exhaustionSinceReport: UInt64 = 0
    static let exhaustionReportInterval: UInt64 = 10_000_000_000
    private var acceptRetryTimer: TimerID?
    public private(set) var counters = WorkerCounters()

    /// Creates the loop and binds every configured listener; throws (naming the listener)
    /// when one cannot be opened.
    /// `sessions` are the L7 protocols the worker judges (`SessionRegistry.standard` when nil).
    /// `inherited` holds listening sockets handed over by the sluice this one replaces, by
    /// `HandoverSocket.key` ("tcp 127.0.0.1:15001"): the worker serves those (all of them)
    /// instead of binding its own for that address, and owns them.
    public init(index: Int, configuration: ProxyConfiguration, flowLog: FlowLog, policy: PolicySnapshotHolder? = nil,
                sessions: SessionRegistry? = nil, inherited: [String: [Int32]] = [:]) throws {
        self.index = index
        self.configuration = configuration
        self.flowLog = flowLog
        let sessions = sessions ?? .standard(configuration: configuration)
        self.sessions = sessions
        workerPolicy = policy.map { WorkerPolicy(holder: $0, learnedNames: sessions.learner) }
        loop = try EventLoop()
        bufferPool = BufferPool(blockSize: configuration.limits.bufferBytes,
                                maxCached: configuration.limits.cachedBuffersPerWorker)
        var relaySettings = RelaySettings(connectTimeout: configuration.timeouts.connect,
                                          idleTimeout: configuration.timeouts.idle, upstreamMark: nil)
        relaySettings.messageTimeout = configuration.timeouts.message
        relaySettings.responseTimeout = configuration.timeouts.response
        maxConnections = configuration.limits.maxConnectionsPerWorker
            ?? Limits.connectionsPerWorker(descriptorLimit: DescriptorLimit.current, workers: configuration.workers)
        var datagramBuffer: DatagramReceiveBuffer?
        for listener in configuration.listeners {
            do {
                switch listener.kind {
                case .explicit(let upstream):
                    var settings = relaySettings
                    // With a policy section, an explicit listener without `l7` is judged like a
                    // transparent one: by what the policy puts on the upstream's port.
                    settings.l7 = listener.l7.map { .fixed($0.kind) } ?? (configuration.policy != nil ? .byPolicy : .none)
                    streamListeners += try Self.streamListeners(inherited["tcp \(listener.address)"] ?? []) { adopted in
                        if let adopted {
                            return try StreamListener(name: listener.name, address: listener.address, upstream: .fixed(upstream),
                                                      settings: settings, backlog: listener.backlog, delegate: self,
                                                      adopting: adopted)
                        }
                        return try StreamListener(name: listener.name, address: listener.address, upstream: .fixed(upstream),
                                                  settings: settings, backlog: listener.backlog, delegate: self)
                    }
                case .transparentTCP:
                    var settings = relaySettings
                    settings.upstreamMark = configuration.proxyMark
                    settings.upstreamSource = configuration.datapath.upstreamSource
                    settings.closeWithoutTimeWait = true
                    settings.l7 = .byPolicy
                    for address in Self.transparentAddresses(listener.address) {
                        do {
                            streamListeners += try Self.streamListeners(inherited["tcp \(address)"] ?? []) { adopted in
                                if let adopted {
                                    return try StreamListener(name: listener.name, address: address, upstream: .originalDestination,
                                                              settings: settings, backlog: listener.backlog, delegate: self,
                                                              adopting: adopted)
                                }
                                return try StreamListener(name: listener.name, address: address, upstream: .originalDestination,
                                                          settings: settings, backlog: listener.backlog, delegate: self)
                            }
                        } catch where address != listener.address && Self.isIPv6Unavailable(error) {
                            continue
                        }
                    }
                case .transparentUDP:
                    // One receive buffer for every UDP listener of this worker (and all their flows).
                    let buffer = datagramBuffer ?? DatagramReceiveBuffer(maxDatagramBytes: configuration.limits.maxDatagramBytes)
                    datagramBuffer = buffer
                    var settings = DatagramSettings(flowIdleTimeout: configuration.timeouts.udpIdle,
                                                    maxFlows: configuration.limits.maxUDPSessionsPerWorker,
                                                    maxDatagramBytes: configuration.limits.maxDatagramBytes,
                                                    upstreamMark: configuration.proxyMark)
                    settings.upstreamSource = configuration.datapath.upstreamSource
                    for address in Self.transparentAddresses(listener.address) {
                        do {
                            datagramListeners += try Self.streamListeners(inherited["udp \(address)"] ?? []) { adopted in
                                if let adopted {
                                    return try DatagramListener(name: listener.name, address: address, settings: settings,
                                                                receiveBuffer: buffer, delegate: self, loop: loop, adopting: adopted)
                                }
                                return try DatagramListener(name: listener.name, address: address, settings: settings,
                                                            receiveBuffer: buffer, delegate: self, loop: loop)
                            }
                        } catch where address != listener.address && Self.isIPv6Unavailable(error) {
                            continue
                        }
                    }
                }
            } catch {
                closeListeners()
                throw ListenerError(listener: listener.name, address: listener.address, underlying: error)
            }
        }
        for listener in streamListeners { try listener.register(with: loop) }
        for listener in datagramListeners { try listener.register(with: loop) }
    }

    public var activeConnections: Int { connections.count }

    /// The listeners for one address: one per inherited descriptor (`make(descriptor)`), or,
    /// when none was inherited or none of them is what it should be, one bound here
    /// (`make(nil)`). A descriptor that does not fit is reported and closed.
    static func streamListeners<Listener>(_ inherited: [Int32], _ make: (Int32?) throws -> Listener) throws -> [Listener] {
        var made: [Listener] = []
        for descriptor in inherited {
            do {
                made.append(try make(descriptor))
            } catch {
                StandardError.line("hand-over: \(error); binding a new socket instead")
            }
        }
        if made.isEmpty { made.append(try make(nil)) }
        return made
    }

    /// Every listening socket of this worker with its description, for a hand-over.
    public var handoverSockets: [(HandoverSocket, Int32)] {
        streamListeners.filter { !$0.isClosed }.map {
            (HandoverSocket(role: .listener, transport: "tcp", address: "\($0.address)", name: $0.name), $0.descriptor)
        } + datagramListeners.filter { !$0.isClosed }.map {
            (HandoverSocket(role: .listener, transport: "udp", address: "\($0.address)", name: $0.name), $0.descriptor)
        }
    }

    /// Where a transparent listener configured on `address` listens. The datapath diverts
    /// IPv4 flows to 127.0.0.1:PORT and IPv6 flows to [::1]:PORT, so a transparent listener
    /// on 127.0.0.1 also listens on [::1] with the same port and name (skipped where the
    /// namespace has no IPv6). Other addresses are taken as they are.
    static func transparentAddresses(_ address: SocketAddress) -> [SocketAddress] {
        guard !address.isIPv6, address.host == "127.0.0.1", let twin = SocketAddress(host: "::1", port: address.port) else {
            return [address]
        }
        return [address, twin]
    }

    /// IPv6 is off in this namespace (no ::1, or no AF_INET6 at all).
    static func isIPv6Unavailable(_ error: Error) -> Bool {
        guard let error = error as? Errno else { return false }
        return error.code == EADDRNOTAVAIL || error.code == EAFNOSUPPORT
    }

    /// What this worker holds now, for metrics and status (read on its own thread).
    public var gauges: WorkerGauges {
        var gauges = WorkerGauges()
        for listener in streamListeners { gauges.connections[listener.name] = 0 }
        for connection in connections.values { gauges.connections[connection.listenerName, default: 0] += 1 }
        for listener in datagramListeners { gauges.connections[listener.name] = listener.flowCount }
        gauges.buffersInUse = bufferPool.outstanding
        gauges.buffersCached = bufferPool.cachedCount
        return gauges
    }

    /// Port and descriptor of each transparent TCP listener (for the datapath's listener map).
    public var transparentStreamListeners: [(port: UInt16, descriptor: Int32)] {
        streamListeners.filter { $0.upstream == .originalDestination }.map { ($0.address.port, $0.descriptor) }
    }

    /// Runs the loop until the worker has drained (or `stop` is called).
    public func run() throws { try loop.run() }

    // MARK: AcceptDelegate

    public var canAccept: Bool { !draining && connections.count < maxConnections }

    public func accepted(_ socket: Socket, client: SocketAddress, destination: SocketAddress, listener: StreamListener) {
        counters.accepted &+= 1
        let session: L7Session?
        switch detect(listener.settings.l7, client: client, destination: destination) {
        case .relay:
            session = nil
        case .judge(let kind, let context):
            session = sessions.streamSession(kind, context: context)
        case .deny(let reason):
            counters.deniedUnjudgeable &+= 1
            socket.setResetOnClose()
            socket.close()
            if flowLog.isEnabled {
                flowLog.write(FlowRecords.dropped(client: client, destination: destination, listener: listener.name,
                                                  reason: reason))
            }
            return
        }
        let connection = RelayConnection(downstream: socket, client: client, destination: destination,
                                         profile: listener.profile, session: session, owner: self, loop: loop)
        connections[ObjectIdentifier(connection)] = connection
        connection.start()
    }

    private enum Detection {
        case relay
        /// Judged by the registry's session for `kind` (registered: checked by `detect`).
        case judge(L7Protocol, SessionContext)
        case deny(reason: String)
    }

    /// Phase "detect protocol": what a new connection needs under the current policy.
    private func detect(_ mode: RelaySettings.L7Mode, client: SocketAddress, destination: SocketAddress) -> Detection {
        let requirement: L7Requirement
        var identities: ConnectionIdentities
        switch mode {
        case .none:
            return .relay
        case .fixed(let kind):
            // An explicit listener that names its protocol parses it whatever the policy says
            // (without a policy section: every message allowed).
            requirement = .kind(kind)
            identities = workerPolicy?.identities(client: client, server: destination)
                ?? ConnectionIdentities(client: client, server: destination, source: .reserved(.world),
                                        destination: .reserved(.world))
        case .byPolicy:
            guard let workerPolicy else { return .relay }
            identities = workerPolicy.identities(client: client, server: destination)
            requirement = workerPolicy.requirement(for: identities)
            if requirement == .none {
                // No L7 rules: the L3/L4 verdict decides once, here (the datapath has judged a
                // diverted connection already; an explicit listener has no datapath before it).
                if let denied = workerPolicy.policies(for: identities).first(where: { !$0.verdict.isAllowed }) {
                    return .deny(reason: "denied at L3/L4 by policy: \(denied.verdict.reason)")
                }
                return .relay
            }
        }
        identities.transport = .tcp
        if case .kind(let kind) = requirement, sessions.judgesStreams(of: kind) {
            return .judge(kind, SessionContext(identities: identities, policy: workerPolicy,
                                               reporter: flowLog.isEnabled ? flowLog : nil))
        }
        return .deny(reason: L7Detection.refusal(requirement, transport: .tcp, port: destination.port)
                     ?? "no L7 session for port \(destination.port): denied")
    }

    /// The policy changed: connections relayed at L4 cannot meet it request by request, so
    /// those the new policy would not relay at L4 (their port now needs a parser, or is one
    /// Sluice cannot judge, or L3/L4 now denies them) are reset; the client's next
    /// connection meets the new policy. L7 sessions need nothing here: each takes the new
    /// policy before its next request.
    public func policyChanged() {
        guard workerPolicy != nil else { return }
        for connection in Array(connections.values) where !connection.hasSession && connection.settings.l7 == .byPolicy {
            if case .relay = detect(.byPolicy, client: connection.client, destination: connection.destination) { continue }
            counters.resetByPolicyChange &+= 1
            connection.abort(outcome: .policyChanged)
        }
    }

    public func acceptFailed(_ error: Error, listener: StreamListener) {
        if let errno = error as? Errno, errno.code == EMFILE || errno.code == ENFILE {
            descriptorsExhausted("accept on \(listener.name)")
        }
        // The connection stays queued in the kernel; try again shortly even if no connection
        // of this worker closes in the meantime.
        if acceptRetryTimer == nil && !draining {
            acceptRetryTimer = loop.scheduleTimer(after: 100_000_000, handler: self, tag: TimerTag.acceptRetry)
        }
    }

    /// Counts a descriptor shortage and says so on stderr, at most once per interval per
    /// worker, with how many happened since the last line.
    private func descriptorsExhausted(_ what: String) {
        counters.descriptorsExhausted &+= 1
        exhaustionSinceReport &+= 1
        let now = loop.now
        if let last = exhaustionReportedAt, now &- last < Self.exhaustionReportInterval { return }
        exhaustionReportedAt = now
        let limit = DescriptorLimit.current
        StandardError.line("worker \(index): out of file descriptors (limit \(limit)) at \(what); \(exhaustionSinceReport) time(s) "
                   + "since the last report. Clients get 503 or wait in the backlog. Raise 'ulimit -n' or lower "
                   + "limits.maxConnectionsPerWorker (now \(maxConnections)).")
        exhaustionSinceReport = 0
    }

    public func refusedLoop(client: SocketAddress, listener: StreamListener) {
        counters.refusedLoops &+= 1
        guard flowLog.isEnabled else { return }
        flowLog.write(FlowRecords.dropped(client: client, listener: listener.name,
                                          reason: "connection addressed to the transparent listener itself (not diverted)"))
    }

    // MARK: ConnectionOwner

    public func connectionFinished(_ connection: RelayConnection, summary: ConnectionSummary) {
        connections[ObjectIdentifier(connection)] = nil
        counters.finished &+= 1
        if summary.outcome == .descriptorsExhausted { descriptorsExhausted("upstream socket for \(summary.client)") }
        // Records are built only when something reads them.
        if flowLog.isEnabled { flowLog.write(FlowRecords.connection(summary)) }
        if draining {
            if drained { finishDrain() }
        } else {
            for listener in streamListeners { listener.resumeAccepting() }
        }
    }

    // MARK: DatagramDelegate

    /// The receive buffer of each UDP listener, in configuration order: one object, shared.
    var datagramReceiveBuffers: [DatagramReceiveBuffer] { datagramListeners.map(\.receiveBuffer) }

    public func datagramFlowStarted(client: SocketAddress, destination: SocketAddress, listener: DatagramListener) {}

    public func datagramFlowEnded(client: SocketAddress, destination: SocketAddress, datagramsFromClient: UInt64,
                                  datagramsFromServer: UInt64, listener: DatagramListener) {
        // The last flow of a drain ended (before the drain timer is set, `beginDrain` looks itself).
        if draining && drainTimer != nil && drained { finishDrain() }
        guard flowLog.isEnabled else { return }
        flowLog.write(FlowRecords.datagramSession(client: client, destination: destination, listener: listener.name,
                                                  fromClient: datagramsFromClient, fromServer: datagramsFromServer))
    }

    /// Phase "detect protocol" for a UDP flow, as `detect` for a TCP connection: no L7 rules
    /// → relay (after the L3/L4 verdict); a kind with a datagram session registered → that
    /// session (the flow's current one when it already judges that kind); any other kind →
    /// denied, with the reason the flow record gives.
    public func datagramFlowChoice(client: SocketAddress, destination: SocketAddress, current: DatagramFlowChoice?,
                                   listener: DatagramListener) -> DatagramFlowChoice {
        guard let workerPolicy else { return .relay }
        let (requirement, identities) = workerPolicy.datagramRequirement(client: client, server: destination)
        switch requirement {
        case .none:
            if let denied = workerPolicy.policies(for: identities).first(where: { !$0.verdict.isAllowed }) {
                return .deny(reason: "denied at L3/L4 by policy: \(denied.verdict.reason)")
            }
            return .relay
        case .kind(let kind):
            if case .judge(kind, _)? = current, let current { return current }
            let context = SessionContext(identities: identities, policy: workerPolicy,
                                         reporter: flowLog.isEnabled ? flowLog : nil)
            if let session = sessions.datagramSession(kind, context: context) { return .judge(kind, session) }
        case .conflicting:
            break
        }
        return .deny(reason: L7Detection.refusal(requirement, transport: .udp, port: destination.port)
                     ?? "no L7 session for UDP port \(destination.port): denied")
    }

    public var datagramPolicyVersion: UInt64 { workerPolicy?.version ?? 0 }

    @inline(__always)
    public func datagramPolicyIsCurrent(_ version: UInt64) -> Bool { workerPolicy?.isCurrent(version) ?? true }

    public func datagramDropped(client: SocketAddress, destination: SocketAddress?, reason: String,
                                listener: DatagramListener) {
        counters.datagramsDropped &+= 1
        guard flowLog.isEnabled else { return }
        flowLog.write(FlowRecords.dropped(client: client, destination: destination, transport: "UDP", listener: listener.name,
                                          reason: reason))
    }

    // MARK: Draining

    /// Stops accepting, lets open connections finish for up to `deadline` nanoseconds, then
    /// aborts what is left and stops the loop. Runs on the worker's thread.
    public func beginDrain(deadline: UInt64) {
        guard !draining else { return }
        draining = true
        for listener in streamListeners { listener.close(loop: loop) }
        // UDP flows stay until they owe nothing (a DNS query answered); no new datagram is
        // read (after a hand-over the successor reads them from the same socket).
        for listener in datagramListeners { listener.stopReceiving(loop: loop) }
        // Keep-alive connections idle between requests close now; the others as soon as
        // their last response is through (or at the deadline).
        for connection in Array(connections.values) { connection.beginDrain() }
        if drained {
            finishDrain()
        } else {
            drainTimer = loop.scheduleTimer(after: deadline, handler: self, tag: TimerTag.drain)
        }
    }

    /// Nothing left to wait for: no connection, no UDP flow.
    private var drained: Bool {
        connections.isEmpty && datagramListeners.allSatisfy { $0.flowCount == 0 }
    }

    /// Aborts every connection now and stops the loop.
    public func stopNow() {
        draining = true
        closeListeners()
        finishDrain()
    }

    public func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {}

    private enum TimerTag {
        static let drain: UInt32 = 0
        static let acceptRetry: UInt32 = 1
    }

    public func handleTimer(tag: UInt32, loop: EventLoop) {
        if tag == TimerTag.acceptRetry {
            acceptRetryTimer = nil
            for listener in streamListeners { listener.resumeAccepting() }
            return
        }
        drainTimer = nil
        counters.cutAtDrainDeadline += UInt64(connections.count)
        finishDrain()
    }

    private func finishDrain() {
        if let drainTimer { loop.cancelTimer(drainTimer) }
        drainTimer = nil
        if let acceptRetryTimer { loop.cancelTimer(acceptRetryTimer) }
        acceptRetryTimer = nil
        for connection in Array(connections.values) { connection.abort() }
        // UDP flows still waiting at the deadline end here.
        for listener in datagramListeners { listener.close(loop: loop) }
        loop.stop()
    }

    private func closeListeners() {
        for listener in streamListeners { listener.close(loop: loop) }
        for listener in datagramListeners { listener.close(loop: loop) }
    }
}

/// A listener that could not be opened, with the configured name and address.
public struct ListenerError: Error, CustomStringConvertible {
    public var listener: String
    public var address: SocketAddress
    public var underlying: Error

    public var description: String {
        var hint = ""
        if let errno = underlying as? Errno {
            switch errno.code {
            case 98: hint = " (another process is listening there)"
            case 1, 13: hint = " (transparent listeners and proxy marks need root or CAP_NET_ADMIN)"
            case 99: hint = " (the address is not on this host)"
            default: break
            }
        }
        return "listener '\(listener)' on \(address): \(underlying)\(hint)"
    }
}
