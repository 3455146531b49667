#if canImport(Glibc)
import Glibc
#endif
import PolicyEngine

/// Settings of a transparent UDP listener.
public struct DatagramSettings: Sendable {
    /// A flow with no datagram either way for this long ends (nanoseconds).
    public var flowIdleTimeout: UInt64
    /// Flows per listener; when the table is full the least recently active one ends.
    public var maxFlows: Int
    /// Largest datagram relayed either way; larger ones are dropped.
    public var maxDatagramBytes: Int
    public var upstreamMark: UInt32?
    /// Where upstream datagrams come from (with a datapath: the client's address).
    public var upstreamSource: UpstreamSource = .node

    public init(flowIdleTimeout: UInt64, maxFlows: Int, maxDatagramBytes: Int, upstreamMark: UInt32?) {
        self.flowIdleTimeout = flowIdleTimeout
        self.maxFlows = maxFlows
        self.maxDatagramBytes = maxDatagramBytes
        self.upstreamMark = upstreamMark
    }
}

/// The one buffer every datagram of a worker passes through, client's or server's, on every
/// UDP listener of that worker: the loop is single-threaded and a batch of datagrams is
/// relayed (or answered, or dropped) before the next batch is read, so one buffer is enough.
/// A flow holds no buffer of its own.
///
/// It has `slotCount` slots, one per datagram of a batch (one recvmmsg reads up to that many;
/// the datagrams relayed as they are leave in one sendmmsg per socket, pointing into their
/// slots). Each slot is `maxDatagramBytes + 1` bytes: one more than the limit, so an
/// oversized datagram is seen as truncated. The memory is reserved at once but only the
/// pages datagrams touch become resident (DNS: the first page of each slot).
public final class DatagramReceiveBuffer {
    /// Datagrams one batch reads and relays at most.
    public static let slotCount = 32
    public var slotCount: Int { Self.slotCount }
    /// `maxDatagramBytes + 1`.
    public let slotLength: Int
    /// `slotCount` slots of `slotLength` bytes, back to back.
    let bytes: UnsafeMutableRawBufferPointer
    /// Per slot, filled by `Socket.receiveDatagrams`: length, truncation (non-zero), and
    /// on a transparent listener the sender and the original destination (family 0: none).
    let lengths: UnsafeMutablePointer<Int>
    let truncatedFlags: UnsafeMutablePointer<Int32>
    let sources: UnsafeMutablePointer<sockaddr_storage>
    let destinations: UnsafeMutablePointer<sockaddr_storage>
    public let maxDatagramBytes: Int

    public init(maxDatagramBytes: Int) {
        self.maxDatagramBytes = maxDatagramBytes
        slotLength = maxDatagramBytes + 1
        bytes = .allocate(byteCount: Self.slotCount * slotLength, alignment: 16)
        lengths = .allocate(capacity: Self.slotCount)
        truncatedFlags = .allocate(capacity: Self.slotCount)
        sources = .allocate(capacity: Self.slotCount)
        destinations = .allocate(capacity: Self.slotCount)
    }

    deinit {
        bytes.deallocate()
        lengths.deallocate()
        truncatedFlags.deallocate()
        sources.deallocate()
        destinations.deallocate()
    }

    /// Slot `index`'s datagram as received (valid until the next batch is read).
    @inline(__always)
    func payload(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: bytes.baseAddress! + index * slotLength, count: min(lengths[index], slotLength))
    }

    /// Whether slot `index`'s datagram was larger than the slot, or than `maxDatagramBytes`.
    @inline(__always)
    func isOversized(_ index: Int, limit: Int) -> Bool {
        truncatedFlags[index] != 0 || lengths[index] > limit
    }
}

/// Datagrams relayed as they are, waiting in the shared receive buffer for the end of the
/// batch they came in: then they leave in one sendmmsg (`flush`). Never more than a batch.
struct PendingDatagrams {
    private var vectors: ContiguousArray<iovec> = []

    var isEmpty: Bool { vectors.isEmpty }

    mutating func append(_ payload: UnsafeRawBufferPointer) {
        if vectors.capacity == 0 { vectors.reserveCapacity(DatagramReceiveBuffer.slotCount) }
        vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count))
    }

    /// Sends what waits through `socket` (to `address`, or its peer when nil) and forgets it.
    mutating func flush(through socket: Socket, to address: SocketAddress?) {
        guard !vectors.isEmpty else { return }
        vectors.withUnsafeBufferPointer { socket.sendDatagrams($0, to: address) }
        vectors.removeAll(keepingCapacity: true)
    }
}

/// What a UDP flow's datagrams get under the current policy (phase "detect protocol"),
/// chosen by the worker (`DatagramDelegate.datagramFlowChoice`).
public enum DatagramFlowChoice {
    /// Relayed as they are, both ways (no L7 rules on the port).
    case relay
    /// Every datagram either way is first put to `session`, the registry's session for
    /// `kind` (the kind lets the worker keep the session across a policy change that leaves
    /// the flow's protocol as it was).
    case judge(L7Protocol, L7DatagramSession)
    /// Dropped and reported with `reason`; no flow is kept.
    case deny(reason: String)

    var session: L7DatagramSession? {
        if case .judge(_, let session) = self { return session }
        return nil
    }
}

/// Receives the events of a UDP listener's flows and chooses what each flow gets.
public protocol DatagramDelegate: AnyObject {
    func datagramFlowStarted(client: SocketAddress, destination: SocketAddress, listener: DatagramListener)
    func datagramFlowEnded(client: SocketAddress, destination: SocketAddress, datagramsFromClient: UInt64,
                           datagramsFromServer: UInt64, listener: DatagramListener)
    /// Phase "detect protocol" for a UDP flow under the current policy: relay, an L7 session,
    /// or deny. `current` is the flow's choice so far (nil for a datagram that would start a
    /// flow); returning it unchanged keeps the flow's session and its state.
    func datagramFlowChoice(client: SocketAddress, destination: SocketAddress, current: DatagramFlowChoice?,
                            listener: DatagramListener) -> DatagramFlowChoice
    /// The policy version the last `datagramFlowChoice` was made under.
    var datagramPolicyVersion: UInt64 { get }
    /// True when nothing was published since `version`; asked before every datagram of an
    /// existing flow, so it must be cheap (one atomic load).
    func datagramPolicyIsCurrent(_ version: UInt64) -> Bool
    /// A datagram was dropped: no original destination, too large, denied by the policy or
    /// by a session, or no flow could be made.
    func datagramDropped(client: SocketAddress, destination: SocketAddress?, reason: String, listener: DatagramListener)
}

/// A transparent UDP listener: receives datagrams diverted to it (TPROXY or `bpf_sk_assign`),
/// learns each one's original destination from `IP_ORIGDSTADDR`, and relays it there.
///
/// Each (client, original destination) pair is a flow (`DatagramFlow`): an upstream socket
/// connected to the destination (with the proxy mark, so the datapath lets it pass) and a
/// reply socket bound with `IP_TRANSPARENT` to the original destination, so answers reach
/// the client from the address it asked. The worker chooses, when a flow starts and again
/// before the first datagram after each policy change, whether the flow is relayed as is,
/// judged datagram by datagram by an L7 session (`L7DatagramSession`), or denied; the
/// listener performs the session's verdicts and knows no protocol.
///
/// Flows end after an idle timeout; their number is bounded, and when the table is full the
/// least recently active flow is closed to make room (found in O(1): flows sit in a list
/// ordered by last activity). Every datagram, either way, passes through the worker's one
/// receive buffer (`DatagramReceiveBuffer`).
public final class DatagramListener: EventHandler {
    public let name: String
    public let address: SocketAddress
    private let settings: DatagramSettings
    private let socket: Socket
    private var token: RegistrationToken?
    private unowned let delegate: DatagramDelegate
    private unowned let loop: EventLoop
    /// Shared with the worker's other UDP listeners.
    let receiveBuffer: DatagramReceiveBuffer
    private var flows: [FlowKey: DatagramFlow] = [:]
    /// Flows by last activity: `leastRecent` is evicted first, `mostRecent` was active last.
    private var leastRecent: DatagramFlow?
    private weak var mostRecent: DatagramFlow?
    public private(set) var isClosed = false

    struct FlowKey: Hashable {
        let client: SocketAddress
        let destination: SocketAddress
    }

    /// `receiveBuffer` must hold `settings.maxDatagramBytes + 1` bytes at least.
    public convenience init(name: String, address: SocketAddress, settings: DatagramSettings,
                            receiveBuffer: DatagramReceiveBuffer, delegate: DatagramDelegate, loop: EventLoop) throws {
        let socket = try Socket.open(.datagram, family: address.family)
        try self.init(name: name, address: address, settings: settings, receiveBuffer: receiveBuffer, delegate: delegate,
                      loop: loop, socket: socket) { socket in
            try socket.setReuseAddress()
            try socket.setReusePort()
            try socket.setTransparent(ipv6: address.isIPv6)
            try socket.setReceiveOriginalDestination(ipv6: address.isIPv6)
            try socket.bind(to: address)
        }
    }

    /// Serves `descriptor`, a UDP socket the sluice this one replaces handed over (bound to
    /// `address` with the options `init` sets). Takes ownership; throws, closing it, when it
    /// is not a UDP socket bound there.
    public convenience init(name: String, address: SocketAddress, settings: DatagramSettings,
                            receiveBuffer: DatagramReceiveBuffer, delegate: DatagramDelegate, loop: EventLoop,
                            adopting descriptor: Int32) throws {
        try self.init(name: name, address: address, settings: settings, receiveBuffer: receiveBuffer, delegate: delegate,
                      loop: loop, socket: Socket(descriptor: descriptor)) { socket in
            try socket.verifyInherited(.datagram, boundTo: address)
        }
    }

    /// Takes `socket` once `prepare` succeeds on it; closes it and throws when it does not.
    private init(name: String, address: SocketAddress, settings: DatagramSettings, receiveBuffer: DatagramReceiveBuffer,
                 delegate: DatagramDelegate, loop: EventLoop, socket: Socket,
                 prepare: (Socket) throws -> Void) throws {
        precondition(receiveBuffer.maxDatagramBytes >= settings.maxDatagramBytes,
                     "the receive buffer is smaller than the largest datagram")
        do {
            try prepare(socket)
        } catch {
            socket.close()
            throw error
        }
        self.name = name
        self.address = address
        self.settings = settings
        self.receiveBuffer = receiveBuffer
        self.delegate = delegate
        self.loop = loop
        self.socket = socket
    }

    /// The socket's descriptor (for handing it over).
    public var descriptor: Int32 { socket.descriptor }

    public var flowCount: Int { flows.count }

    public func register(with loop: EventLoop) throws {
        token = try loop.registerForReading(socket.descriptor, handler: self, tag: 0)
    }

    public func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        let buffer = receiveBuffer
        while !isClosed {
            let count: Int
            do {
                count = try socket.receiveDatagrams(into: buffer, withAddresses: true)
            } catch {
                return
            }
            for index in 0..<count { receive(index, of: buffer) }
            flushPending()
            // Fewer than a batch: the socket was empty (recvmmsg stops at the first datagram
            // it would wait for, and an unconnected socket reports no asynchronous errors);
            // the next datagram raises a new edge.
            if count < buffer.slotCount { return }
        }
    }

    /// Phases "accept" and "identify" of one datagram of the batch: its flow (made now when
    /// it has none), which judges and relays it.
    @inline(__always)
    private func receive(_ index: Int, of buffer: DatagramReceiveBuffer) {
        let source = SocketAddress(storage: buffer.sources[index])
        let original = buffer.destinations[index].ss_family == 0 ? nil : SocketAddress(storage: buffer.destinations[index])
        guard !buffer.isOversized(index, limit: settings.maxDatagramBytes) else {
            delegate.datagramDropped(client: source, destination: original,
                                     reason: "datagram larger than \(settings.maxDatagramBytes) bytes", listener: self)
            return
        }
        guard let destination = original, destination != address else {
            delegate.datagramDropped(client: source, destination: nil,
                                     reason: "no original destination (not diverted to the proxy)", listener: self)
            return
        }
        let payload = buffer.payload(index)
        let key = FlowKey(client: source, destination: destination)
        if let existing = flows[key] {
            touch(existing)
            existing.fromClient(payload)
            return
        }
        let choice = delegate.datagramFlowChoice(client: key.client, destination: destination, current: nil,
                                                 listener: self)
        if case .deny(let reason) = choice {
            delegate.datagramDropped(client: key.client, destination: destination, reason: reason, listener: self)
            return
        }
        let version = delegate.datagramPolicyVersion
        if flows.count >= settings.maxFlows { evictLeastRecentlyUsed() }
        let flow: DatagramFlow
        do {
            flow = try DatagramFlow(key: key, choice: choice, policyVersion: version, settings: settings,
                                    listener: self, loop: loop)
        } catch {
            choice.session?.flowEnded()
            delegate.datagramDropped(client: key.client, destination: destination,
                                     reason: "cannot open flow: \(error)", listener: self)
            return
        }
        flows[key] = flow
        append(flow)
        delegate.datagramFlowStarted(client: key.client, destination: key.destination, listener: self)
        flow.fromClient(payload)
    }

    /// Flows holding client datagrams to relay at the end of the batch.
    private var flowsToFlush: [DatagramFlow] = []

    /// `flow` holds datagrams of this batch to relay (`DatagramFlow.fromClient`).
    func needsFlush(_ flow: DatagramFlow) {
        if flowsToFlush.capacity == 0 { flowsToFlush.reserveCapacity(DatagramReceiveBuffer.slotCount) }
        flowsToFlush.append(flow)
    }

    /// Relays what the batch's flows hold, before the buffer is read into again.
    private func flushPending() {
        guard !flowsToFlush.isEmpty else { return }
        for flow in flowsToFlush { flow.flushToServer() }
        flowsToFlush.removeAll(keepingCapacity: true)
    }

    private func evictLeastRecentlyUsed() {
        leastRecent?.end()
    }

    // MARK: Policy (for flows)

    @inline(__always)
    func policyIsCurrent(_ version: UInt64) -> Bool { delegate.datagramPolicyIsCurrent(version) }

    /// The policy changed since `flow` chose: chooses again, keeping the flow's session when
    /// the worker keeps it. Returns false when the flow is now denied: the datagram in hand
    /// is dropped and reported, and the flow ends.
    func chooseAgain(_ flow: DatagramFlow) -> Bool {
        let choice = delegate.datagramFlowChoice(client: flow.key.client, destination: flow.key.destination,
                                                 current: flow.choice, listener: self)
        if case .deny(let reason) = choice {
            delegate.datagramDropped(client: flow.key.client, destination: flow.key.destination, reason: reason,
                                     listener: self)
            flow.end()
            return false
        }
        flow.replaceChoice(with: choice, policyVersion: delegate.datagramPolicyVersion)
        return true
    }

    /// A session dropped one of `flow`'s datagrams.
    func dropped(_ flow: DatagramFlow, reason: String) {
        delegate.datagramDropped(client: flow.key.client, destination: flow.key.destination, reason: reason,
                                 listener: self)
    }

    // MARK: Activity order (a doubly linked list: the older link owns, the newer is weak)

    private func append(_ flow: DatagramFlow) {
        flow.lessRecent = mostRecent
        if let mostRecent { mostRecent.moreRecent = flow } else { leastRecent = flow }
        mostRecent = flow
    }

    private func unlink(_ flow: DatagramFlow) {
        let older = flow.lessRecent
        let newer = flow.moreRecent
        if let newer { newer.lessRecent = older } else { mostRecent = older }
        if let older { older.moreRecent = newer } else { leastRecent = newer }
        flow.lessRecent = nil
        flow.moreRecent = nil
    }

    /// The flow was active now: it moves to the most recent end.
    func touch(_ flow: DatagramFlow) {
        guard mostRecent !== flow else { return }
        unlink(flow)
        append(flow)
    }

    func flowEnded(_ flow: DatagramFlow) {
        unlink(flow)
        flows[flow.key] = nil
        delegate.datagramFlowEnded(client: flow.key.client, destination: flow.key.destination,
                                   datagramsFromClient: flow.datagramsFromClient,
                                   datagramsFromServer: flow.datagramsFromServer, listener: self)
    }

    /// Stops receiving and ends every flow.
    public func close(loop: EventLoop) {
        stopReceiving(loop: loop)
        for flow in Array(flows.values) { flow.end() }
    }

    /// Draining: no datagram is read any more (after a hand-over the successor reads the
    /// same socket, so nothing queued there is lost), and each flow ends once it owes
    /// nothing: a flow with a session when the session has nothing outstanding (DNS: every
    /// query answered or timed out), a relayed flow after `drainQuietPeriod` without a
    /// datagram. The worker ends what is left at its drain deadline (`close`).
    public func stopReceiving(loop: EventLoop) {
        guard !isClosed else { return }
        isClosed = true
        if let token { loop.deregister(token) }
        token = nil
        socket.close()
        for flow in Array(flows.values) { flow.endIfSettled() }
    }

    /// A draining flow with nothing outstanding and no datagram for this long ends.
    static let drainQuietPeriod: UInt64 = 1_000_000_000
}

/// One client's exchange with one original destination through a transparent UDP listener:
/// the sockets, the idle clock, the activity links, and the choice the worker made for it
/// (relay, or an L7 session whose verdicts the flow performs).
final class DatagramFlow: EventHandler {
    let key: DatagramListener.FlowKey
    private(set) var choice: DatagramFlowChoice
    /// The policy version `choice` was made under.
    private var policyVersion: UInt64
    private let upstream: Socket
    private let reply: Socket
    private var upstreamToken: RegistrationToken?
    private var idleTimer: TimerID?
    /// The session's clock (`L7DatagramSession.nextDeadline`), armed no later than it asks
    /// and at most one at a time; it may fire early (the session then answers nothing).
    private var sessionTimer = DeadlineTimer()
    // Unowned without a check (no reference counting on every datagram): the listener ends
    // every flow before it goes (`close`, `stopReceiving`), and the loop outlives both.
    private unowned(unsafe) let listener: DatagramListener
    private unowned(unsafe) let loop: EventLoop
    private let settings: DatagramSettings
    private(set) var lastActivity: UInt64
    /// Neighbours in the listener's activity order (see `DatagramListener.touch`): the
    /// more recent one holds the less recent one, so the list holds no cycle.
    var lessRecent: DatagramFlow?
    weak var moreRecent: DatagramFlow?
    private(set) var datagramsFromClient: UInt64 = 0
    private(set) var datagramsFromServer: UInt64 = 0
    private var ended = false
    /// Datagrams of the batch being read, relayed as they are once it is judged whole (the
    /// client's by the listener's `flushPending`, the server's by `handleReadiness`).
    private var pendingToServer = PendingDatagrams()
    private var pendingToClient = PendingDatagrams()

    init(key: DatagramListener.FlowKey, choice: DatagramFlowChoice, policyVersion: UInt64, settings: DatagramSettings,
         listener: DatagramListener, loop: EventLoop) throws {
        self.key = key
        self.choice = choice
        self.policyVersion = policyVersion
        self.settings = settings
        self.listener = listener
        self.loop = loop
        lastActivity = loop.now
        upstream = try settings.upstreamSource.openConnected(.datagram, client: key.client, destination: key.destination,
                                                             mark: settings.upstreamMark).0
        do {
            reply = try Socket.open(.datagram, family: key.destination.family)
        } catch {
            upstream.close()
            throw error
        }
        do {
            if let mark = settings.upstreamMark { try reply.setMark(mark) }
            try reply.setTransparent(ipv6: key.destination.isIPv6)
            try reply.setReuseAddress()
            try reply.bind(to: key.destination)
        } catch {
            upstream.close()
            reply.close()
            throw error
        }
        do {
            upstreamToken = try loop.registerForReading(upstream.descriptor, handler: self, tag: 0)
        } catch {
            upstream.close()
            reply.close()
            throw error
        }
        idleTimer = loop.scheduleTimer(after: settings.flowIdleTimeout, handler: self, tag: Tag.idle)
    }

    private enum Tag {
        static let idle: UInt32 = 0
        static let session: UInt32 = 1
    }

    /// Takes the worker's new choice; a session it no longer uses has ended.
    func replaceChoice(with newChoice: DatagramFlowChoice, policyVersion version: UInt64) {
        let previous = choice.session
        choice = newChoice
        policyVersion = version
        if let previous, previous !== newChoice.session { previous.flowEnded() }
    }

    /// Whether the flow's choice still holds for the datagram in hand: one atomic load while
    /// the policy is unchanged; after a change the worker chooses again (false: denied, the
    /// flow has ended).
    @inline(__always)
    private func choiceHolds() -> Bool {
        listener.policyIsCurrent(policyVersion) || listener.chooseAgain(self)
    }

    /// A datagram from the client (in the shared receive buffer).
    func fromClient(_ payload: UnsafeRawBufferPointer) {
        lastActivity = loop.now
        datagramsFromClient &+= 1
        guard choiceHolds() else { return }
        // UDP may drop; a full socket buffer or an ICMP error from the server is such a drop.
        switch choice.session?.clientDatagram(payload) ?? .forward {
        case .forward:
            if pendingToServer.isEmpty { listener.needsFlush(self) }
            pendingToServer.append(payload)
        case .forwardRewritten(let bytes):
            flushToServer()  // in the order they came
            _ = bytes.withUnsafeBytes { try? upstream.write(from: $0) }
        case .answer(let bytes):
            _ = bytes.withUnsafeBytes { try? reply.send($0, to: key.client) }
        case .drop(let reason):
            listener.dropped(self, reason: reason)
        }
        armSessionTimer()
    }

    /// A datagram from the server (in the shared receive buffer).
    private func fromServer(_ payload: UnsafeRawBufferPointer) {
        lastActivity = loop.now
        listener.touch(self)
        datagramsFromServer &+= 1
        guard choiceHolds() else { return }
        switch choice.session?.serverDatagram(payload) ?? .forward {
        case .forward:
            pendingToClient.append(payload)
        case .forwardRewritten(let bytes):
            flushToClient()  // in the order they came
            _ = bytes.withUnsafeBytes { try? reply.send($0, to: key.client) }
        case .answer(let bytes):
            _ = bytes.withUnsafeBytes { try? upstream.write(from: $0) }
        case .drop(let reason):
            listener.dropped(self, reason: reason)
        }
        armSessionTimer()
    }

    /// While the listener drains: ends the flow when it owes nothing (see
    /// `DatagramListener.stopReceiving`), else makes sure it is looked at again.
    func endIfSettled() {
        guard listener.isClosed, !ended else { return }
        if let session = choice.session {
            if session.nextDeadline == nil { end() }
            return
        }
        let quietFor = loop.now &- lastActivity
        if quietFor >= DatagramListener.drainQuietPeriod { return end() }
        if let idleTimer { loop.cancelTimer(idleTimer) }
        idleTimer = loop.scheduleTimer(after: DatagramListener.drainQuietPeriod - quietFor, handler: self, tag: Tag.idle)
    }

    /// Makes sure the session timer fires no later than the session's next deadline.
    private func armSessionTimer() {
        if listener.isClosed { endIfSettled() }
        guard !ended, let deadline = choice.session?.nextDeadline else { return }
        sessionTimer.arm(noLaterThan: deadline, handler: self, tag: Tag.session, loop: loop)
    }

    /// The session's clock ran out: what it answers goes to the client.
    private func sessionTimerFired() {
        sessionTimer.fired()
        guard let session = choice.session else { return }
        for answer in session.timedOut(now: loop.now) {
            _ = answer.withUnsafeBytes { try? reply.send($0, to: key.client) }
        }
        armSessionTimer()
    }

    /// Relays the client datagrams of the listener's batch (`fromClient`, `.forward`).
    func flushToServer() {
        pendingToServer.flush(through: upstream, to: nil)
    }

    private func flushToClient() {
        pendingToClient.flush(through: reply, to: key.client)
    }

    func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        let buffer = listener.receiveBuffer
        // Read until the socket is empty (edge-triggered): a connected socket may hold
        // datagrams behind an error that ended a batch early, and no new edge would come.
        while !ended {
            let count: Int
            do {
                count = try upstream.receiveDatagrams(into: buffer, withAddresses: false)
            } catch let error as Errno where error.code == Errno.connectionRefused {
                // An ICMP port-unreachable from the server, reported once: keep reading.
                continue
            } catch {
                return
            }
            guard count > 0 else { return }
            for index in 0..<count where !ended {
                guard !buffer.isOversized(index, limit: settings.maxDatagramBytes) else { continue }
                fromServer(buffer.payload(index))
            }
            flushToClient()
        }
    }

    func handleTimer(tag: UInt32, loop: EventLoop) {
        if tag == Tag.session { return sessionTimerFired() }
        idleTimer = nil
        if listener.isClosed { return endIfSettled() }
        let idleFor = loop.now &- lastActivity
        if idleFor >= settings.flowIdleTimeout {
            end()
        } else {
            idleTimer = loop.scheduleTimer(after: settings.flowIdleTimeout - idleFor, handler: self, tag: Tag.idle)
        }
    }

    func end() {
        guard !ended else { return }
        // What this batch judged and relayed leaves before the sockets close.
        flushToServer()
        flushToClient()
        ended = true
        if let idleTimer { loop.cancelTimer(idleTimer) }
        sessionTimer.cancel(loop: loop)
        if let upstreamToken { loop.deregister(upstreamToken) }
        upstream.close()
        reply.close()
        choice.session?.flowEnded()
        listener.flowEnded(self)
    }
}
