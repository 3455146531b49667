import L7Parsers
import PolicyEngine
#if canImport(Glibc)
import Glibc
#endif

/// How a relayed connection ended, for its flow record.
public enum ConnectionOutcome: String, Sendable {
    /// Both sides closed in order (FIN each way).
    case closed
    /// One side reset; the other was reset too.
    case reset
    /// The upstream refused or could not be reached; the downstream was reset.
    case upstreamUnreachable = "upstream_unreachable"
    /// The upstream did not answer within the connect timeout; the downstream was reset.
    case connectTimeout = "connect_timeout"
    /// Nothing moved for the idle timeout.
    case idleTimeout = "idle_timeout"
    /// The proxy stopped before the connection finished (drain deadline passed).
    case aborted
    /// The L7 session ended the connection (a request or response that cannot be parsed).
    case protocolError = "protocol_error"
    /// A message head did not complete within the header timeout.
    case headerTimeout = "header_timeout"
    /// A policy change put rules on the connection's port that its relay cannot apply.
    case policyChanged = "policy_changed"
    /// The upstream answered nothing within the response timeout (L7: the client got 504).
    case responseTimeout = "response_timeout"
    /// The upstream sent a response that cannot be relayed (L7: the client got 502 when
    /// nothing of the response had reached it yet).
    case upstreamProtocolError = "upstream_protocol_error"
    /// The proxy had no file descriptor left for the upstream socket.
    case descriptorsExhausted = "descriptors_exhausted"
    /// Closed while idle between requests because the proxy is draining.
    case drained
}

/// What a finished connection reports to its owner.
public struct ConnectionSummary: Sendable {
    public var listener: String
    public var client: SocketAddress
    public var destination: SocketAddress
    public var bytesFromClient: UInt64
    public var bytesFromServer: UInt64
    public var durationNanoseconds: UInt64
    public var outcome: ConnectionOutcome
}

/// Receives connections that finished; owned by a worker.
public protocol ConnectionOwner: AnyObject {
    var bufferPool: BufferPool { get }
    func connectionFinished(_ connection: RelayConnection, summary: ConnectionSummary)
}

/// Settings a connection needs, copied once per listener.
public struct RelaySettings: Sendable {
    public var connectTimeout: UInt64
    public var idleTimeout: UInt64
    /// `SO_MARK` for the upstream socket, nil for none.
    public var upstreamMark: UInt32?
    /// Close the downstream without TIME_WAIT when the proxy closed first (transparent
    /// listeners): the socket holds the client's 4-tuple with the original destination as
    /// its local address, and a TIME_WAIT there makes the kernel drop the client's next
    /// SYN on that tuple (its listener is not at that address), costing a 1 s retransmit.
    public var closeWithoutTimeWait: Bool
    /// With an L7 session: how long a message head may take from its first byte (and the
    /// first request from the accept).
    public var headerTimeout: UInt64 = 30_000_000_000
    /// With an L7 session: how long the upstream may stay silent while a response is owed
    /// (the reference's route timeout, 15 s); past it the client gets the session's answer
    /// (HTTP: 504).
    public var responseTimeout: UInt64 = 15_000_000_000
    /// Whether connections are parsed at L7: never, always as one protocol (an explicit
    /// listener's `l7:`), or as the policy for the connection's port says (transparent).
    public var l7: L7Mode

    public enum L7Mode: Sendable, Equatable { case none, fixed(L7Protocol), byPolicy }

    public init(connectTimeout: UInt64, idleTimeout: UInt64, upstreamMark: UInt32?, closeWithoutTimeWait: Bool = false,
                l7: L7Mode = .none) {
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.upstreamMark = upstreamMark
        self.closeWithoutTimeWait = closeWithoutTimeWait
        self.l7 = l7
    }
}

/// A relay between a downstream (client) socket and an upstream (server) socket, at L4 or,
/// with an `L7Session`, request by request.
///
/// Each direction has one bounded `RelayBuffer`: bytes read from one side wait there until
/// the other side takes them, and a side is not read while its buffer is full, so a slow
/// reader slows its writer instead of growing memory. End of stream is forwarded as a
/// half-close (`shutdown(SHUT_WR)`) once the buffer has drained; a reset on either side
/// resets the other. The connection closes when both directions have delivered their FIN.
public final class RelayConnection: EventHandler {
    private struct Direction {
        var buffer = RelayBuffer()
        /// Edge-triggered readiness: true until a read reports it would block.
        var sourceReadable = true
        var sourceEnded = false
        /// The source reported FIN, hangup or an error: read until end of stream even after
        /// a short read.
        var sourceClosing = false
        var destinationWritable = true
        var endForwarded = false
        var bytes: UInt64 = 0
        // L7 only: parsed bytes waiting for the destination, and operations in progress.
        var output = RelayBuffer()
        var pendingPass = 0
        var pendingDrop = 0
        var pendingBytes: [UInt8] = []
        var pendingBytesToSource = false
        var endOfInputReported = false
        /// Something happened that the session has not seen: new input, the end of input,
        /// or progress on the other side (which can make a queued answer due).
        var parseDirty = true
        /// The session answered `.blocked` last: what the input holds waits for the other
        /// direction, not for more bytes (no header clock runs for it).
        var blocked = false

        /// Parsed bytes are waiting for the destination (or about to be: a pass or rebuilt
        /// bytes in progress).
        var holdsOutput: Bool {
            !output.isEmpty || pendingPass > 0 || (!pendingBytes.isEmpty && !pendingBytesToSource)
        }
    }

    private enum Tag {
        static let downstream: UInt32 = 0
        static let upstream: UInt32 = 1
        static let connectTimer: UInt32 = 0
        static let idleTimer: UInt32 = 1
        static let headerTimer: UInt32 = 2
        static let responseTimer: UInt32 = 3
    }

    /// Reads and writes per direction before yielding to other connections.
    private static let fairnessBudget = 16

    private unowned let owner: ConnectionOwner
    private let loop: EventLoop
    public let settings: RelaySettings
    private let session: L7Session?
    private var closeAfterReply: String?
    /// How the connection is reported once `closeAfterReply` has flushed.
    private var closeOutcome = ConnectionOutcome.protocolError
    /// Set when the upstream failed and only an answer to the client remains to be sent.
    private var upstreamOutcome: ConnectionOutcome?
    private let listenerName: String
    public let client: SocketAddress
    public let destination: SocketAddress
    private let downstream: Socket
    private var upstream: Socket?
    private var downstreamToken: RegistrationToken?
    private var upstreamToken: RegistrationToken?
    private var upstreamConnected = false
    private var toUpstream = Direction()
    private var toDownstream = Direction()
    private var connectTimer: TimerID?
    private var idleTimer: TimerID?
    private let startTime: UInt64
    private var lastActivity: UInt64
    private var resumeQueued = false
    /// When the request input began holding an incomplete message head (L7 only).
    private var headPendingSince: UInt64?
    private var headerTimer: TimerID?
    /// L7: when the upstream last sent something while a response was owed (or when the
    /// wait began); nil while no response is owed.
    private var responseWaitSince: UInt64?
    private var responseTimer: TimerID?
    /// The proxy is draining: the connection closes as soon as it is idle between requests.
    private var draining = false
    /// The session has acted on client input (passed, dropped or answered a request): the
    /// header clock that started at accept no longer runs while the input is empty.
    private var requestInputActedOn = false
    /// The proxy sent its FIN to the client before the client's FIN arrived.
    private var downstreamClosedFirstByProxy = false
    public private(set) var isFinished = false

    /// Takes ownership of `downstream` and starts connecting to `destination`.
    public init(downstream: Socket, client: SocketAddress, destination: SocketAddress, listenerName: String,
                settings: RelaySettings, session: L7Session? = nil, owner: ConnectionOwner, loop: EventLoop) {
        self.session = session
        self.downstream = downstream
        self.client = client
        self.destination = destination
        self.listenerName = listenerName
        self.settings = settings
        self.owner = owner
        self.loop = loop
        startTime = loop.now
        lastActivity = loop.now
    }

    /// Registers the downstream socket. At L4 the upstream connect begins at once; with an
    /// L7 session it begins when the first request has been judged and is allowed (a denied
    /// request never costs a server connection), and the header clock runs from here. On
    /// any failure the connection finishes at once (and reports it).
    public func start() {
        do {
            try? downstream.setNoDelay()
            downstreamToken = try loop.register(downstream.descriptor, handler: self, tag: Tag.downstream)
        } catch {
            finish(.reset, resetDownstream: true)
            return
        }
        idleTimer = loop.scheduleTimer(after: settings.idleTimeout, handler: self, tag: Tag.idleTimer)
        if session != nil {
            headPendingSince = loop.now
            headerTimer = loop.scheduleTimer(after: settings.headerTimeout, handler: self, tag: Tag.headerTimer)
            pumpBoth()
            return
        }
        connectUpstream()
        if !isFinished && upstreamConnected { pumpBoth() }
    }

    /// Opens the upstream socket (with the proxy mark) and starts connecting it.
    private func connectUpstream() {
        let socket: Socket
        do {
            socket = try Socket.open(.stream, family: destination.family)
            upstream = socket
            if let mark = settings.upstreamMark { try socket.setMark(mark) }
            try? socket.setNoDelay()
            upstreamToken = try loop.register(socket.descriptor, handler: self, tag: Tag.upstream)
            if try socket.connect(to: destination) == .connected {
                upstreamConnected = true
            } else {
                connectTimer = loop.scheduleTimer(after: settings.connectTimeout, handler: self, tag: Tag.connectTimer)
            }
        } catch let error as Errno where error.code == EMFILE || error.code == ENFILE {
            upstreamFailed(.descriptorsExhausted)
        } catch {
            upstreamFailed(.upstreamUnreachable)
        }
    }

    // MARK: Events

    public func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        guard !isFinished else { return }
        let closing = !readiness.isDisjoint(with: [.peerClosed, .hangup, .error])
        if tag == Tag.downstream {
            if readiness.wantsRead { toUpstream.sourceReadable = true }
            if closing { toUpstream.sourceClosing = true }
            if readiness.wantsWrite { toDownstream.destinationWritable = true }
        } else {
            if !upstreamConnected {
                guard readiness.wantsWrite || readiness.contains(.error) || readiness.contains(.hangup) else { return }
                guard upstream?.pendingError() == 0 else {
                    upstreamFailed(.upstreamUnreachable)
                    return
                }
                upstreamConnected = true
                if let connectTimer { loop.cancelTimer(connectTimer) }
                connectTimer = nil
            }
            if readiness.wantsRead { toDownstream.sourceReadable = true }
            if closing { toDownstream.sourceClosing = true }
            if readiness.wantsWrite { toUpstream.destinationWritable = true }
        }
        pumpBoth()
    }

    public func handleTimer(tag: UInt32, loop: EventLoop) {
        guard !isFinished else { return }
        if tag == Tag.connectTimer {
            connectTimer = nil
            upstreamFailed(.connectTimeout)
            return
        }
        if tag == Tag.responseTimer {
            responseTimer = nil
            return responseTimerFired()
        }
        if tag == Tag.headerTimer {
            headerTimer = nil
            guard let since = headPendingSince, let session else { return }
            let waited = loop.now &- since
            if waited < settings.headerTimeout {
                headerTimer = loop.scheduleTimer(after: settings.headerTimeout - waited, handler: self, tag: Tag.headerTimer)
                return
            }
            // A head that never completes (a slow or stalled client): answer if we may, then close.
            return endWithAnswer(session.headerTimedOut(), reason: "header timeout", outcome: .headerTimeout)
        }
        idleTimer = nil
        let idleFor = loop.now &- lastActivity
        if idleFor >= settings.idleTimeout {
            finish(.idleTimeout, resetDownstream: false)
        } else {
            // Activity moves `lastActivity` only; the timer is re-armed lazily here, so I/O
            // never touches the timer heap.
            idleTimer = loop.scheduleTimer(after: settings.idleTimeout - idleFor, handler: self, tag: Tag.idleTimer)
        }
    }

    public func handleResume(loop: EventLoop) {
        resumeQueued = false
        guard !isFinished else { return }
        pumpBoth()
    }

    /// The upstream could not be reached. At L4 the client is reset (it sees what it would
    /// have seen from the server). With an L7 session the client gets the session's answer
    /// (HTTP: 503 with the reason) before the connection closes.
    private func upstreamFailed(_ outcome: ConnectionOutcome) {
        let reason: String
        switch outcome {
        case .connectTimeout: reason = "upstream connect timeout"
        case .descriptorsExhausted: reason = "proxy out of file descriptors"
        default: reason = "upstream unreachable"
        }
        guard let session, var answer = session.upstreamFailed(reason: reason) else {
            return finish(outcome, resetDownstream: true)
        }
        dropUpstream()
        upstreamOutcome = outcome
        closeAfterReply = outcome.rawValue
        _ = append(&answer, to: &toDownstream.output, pool: owner.bufferPool)
        flushAnswerAndFinish()
    }

    /// Closes the upstream with a reset and forgets it (the client side goes on).
    private func dropUpstream() {
        if let upstreamToken { loop.deregister(upstreamToken) }
        upstreamToken = nil
        if let connectTimer { loop.cancelTimer(connectTimer) }
        connectTimer = nil
        upstream?.setResetOnClose()
        upstream?.close()
        upstream = nil
        upstreamConnected = false
    }

    /// The upstream stayed silent for the response timeout while a response was owed: the
    /// client gets the session's answer (HTTP: 504, when nothing of that response reached
    /// it yet) and the connection closes; the upstream is reset.
    private func responseTimerFired() {
        guard let session, let since = responseWaitSince, session.isAwaitingResponse else {
            responseWaitSince = nil
            return
        }
        let waited = loop.now &- since
        if waited < settings.responseTimeout {
            responseTimer = loop.scheduleTimer(after: settings.responseTimeout - waited, handler: self, tag: Tag.responseTimer)
            return
        }
        dropUpstream()
        endWithAnswer(session.responseTimedOut(), reason: "response timeout", outcome: .responseTimeout)
    }

    /// Stops reading the client, queues `answer` for it (sent if it fits behind what is
    /// queued already; the close follows either way), and closes once that is delivered.
    private func endWithAnswer(_ answer: [UInt8]?, reason: String, outcome: ConnectionOutcome) {
        toUpstream.buffer.discard(pool: owner.bufferPool)
        toUpstream.sourceEnded = true
        if var answer { _ = append(&answer, to: &toDownstream.output, pool: owner.bufferPool) }
        closeAfterReply = reason
        closeOutcome = outcome
        pumpBoth()
    }

    /// Starts the response clock when the session owes a response and stops it when none
    /// is owed; upstream bytes move it on (see `fill`). Armed at most once at a time.
    private func trackResponseWait(_ session: L7Session) {
        guard session.isAwaitingResponse, upstream != nil else {
            responseWaitSince = nil
            return
        }
        if responseWaitSince == nil { responseWaitSince = loop.now }
        if responseTimer == nil {
            responseTimer = loop.scheduleTimer(after: settings.responseTimeout, handler: self, tag: Tag.responseTimer)
        }
    }

    /// The proxy is draining: an L7 connection idle between requests closes now, and any
    /// other as soon as it becomes idle; L4 relays run until the drain deadline.
    public func beginDrain() {
        guard !isFinished else { return }
        draining = true
        closeIfIdleWhileDraining()
    }

    private func closeIfIdleWhileDraining() {
        guard draining, let session, session.isIdle, toUpstream.buffer.isEmpty, toUpstream.output.isEmpty,
              toDownstream.output.isEmpty, toDownstream.buffer.isEmpty, toUpstream.pendingBytes.isEmpty,
              toDownstream.pendingBytes.isEmpty, closeAfterReply == nil else { return }
        finish(.drained, resetDownstream: false, resetUpstream: false)
    }

    /// Writes what is queued for the client, then closes (used once the upstream is gone).
    private func flushAnswerAndFinish() {
        do {
            _ = try flush(&toDownstream, to: downstream, ready: true, pool: owner.bufferPool)
        } catch {
            return finish(upstreamOutcome ?? .reset, resetDownstream: true)
        }
        guard toDownstream.output.isEmpty else { return }
        // Bytes the client sent that nobody read would turn the close into a reset, which
        // can destroy the answer before the client reads it: read and drop them first.
        let pool = owner.bufferPool
        for _ in 0..<8 {
            let space = toUpstream.buffer.writableSpace(pool: pool)
            guard space.count > 0, case .processed(let count)? = try? downstream.read(into: space), count > 0 else { break }
            toUpstream.buffer.didWrite(count)
            toUpstream.buffer.discard(pool: pool)
        }
        toUpstream.buffer.discard(pool: pool)
        finish(upstreamOutcome ?? .protocolError, resetDownstream: false)
    }

    /// Ends the connection now with resets on both sides (drain deadline, shutdown, a
    /// policy change the relay cannot apply).
    public func abort(outcome: ConnectionOutcome = .aborted) {
        guard !isFinished else { return }
        finish(outcome, resetDownstream: true, resetUpstream: true)
    }

    /// True when requests are judged by an L7 session (false: an L4 relay).
    public var hasSession: Bool { session != nil }

    // MARK: Relaying

    private enum PumpResult { case idle, moreWork, failed }

    private func pumpBoth() {
        if upstreamOutcome != nil { return flushAnswerAndFinish() }
        if let session { return pumpSession(session) }
        guard let upstream else { return }
        // Until the connect completes, the upstream socket has nothing to read (and a read
        // would report the connect's failure as if it were a reset).
        let forward = pump(&toUpstream, from: downstream, to: upstream, destinationReady: upstreamConnected)
        guard forward != .failed else { return finish(.reset, resetDownstream: true, resetUpstream: true) }
        let backward = upstreamConnected
            ? pump(&toDownstream, from: upstream, to: downstream, destinationReady: true) : .idle
        guard backward != .failed else { return finish(.reset, resetDownstream: true, resetUpstream: true) }

        if toUpstream.endForwarded && toDownstream.endForwarded {
            // Both FINs are through and acknowledged-or-not, every byte is delivered: an
            // RST now only spares the downstream a TIME_WAIT (see `closeWithoutTimeWait`).
            return finish(.closed, resetDownstream: settings.closeWithoutTimeWait && downstreamClosedFirstByProxy)
        }
        if (forward == .moreWork || backward == .moreWork) && !resumeQueued {
            resumeQueued = true
            loop.resumeSoon(self)
        }
    }

    /// Moves bytes `source` → buffer → `destination` until neither side can make progress
    /// or the fairness budget is spent.
    private func pump(_ direction: inout Direction, from source: Socket, to destination: Socket,
                      destinationReady: Bool) -> PumpResult {
        let pool = owner.bufferPool
        var budget = Self.fairnessBudget
        do {
            while budget > 0 {
                var progressed = false
                if destinationReady && direction.destinationWritable {
                    progressed = try send(&direction.buffer, to: destination, writable: &direction.destinationWritable,
                                          sent: &direction.bytes, pool: pool)
                }
                progressed = try fill(&direction, from: source, pool: pool) || progressed
                guard progressed else { break }
                lastActivity = loop.now
                budget -= 1
            }
        } catch {
            return .failed
        }
        if direction.sourceEnded && direction.buffer.isEmpty && !direction.endForwarded && destinationReady {
            destination.shutdown(.write)
            direction.endForwarded = true
            if destination == downstream && !toUpstream.sourceEnded { downstreamClosedFirstByProxy = true }
        }
        return budget == 0 ? .moreWork : .idle
    }

    // MARK: Relaying through an L7 session

    /// Operations a session may answer in a row without consuming input or producing
    /// output; past it the session is stuck and the connection ends.
    private static let maximumIdleOperations = 16

    private func pumpSession(_ session: L7Session) {
        let pool = owner.bufferPool
        var rounds = 0
        do {
            while rounds < Self.fairnessBudget {
                var progressed = false
                if let upstream {
                    progressed = try flush(&toUpstream, to: upstream, ready: upstreamConnected, pool: pool) || progressed
                }
                progressed = try flush(&toDownstream, to: downstream, ready: true, pool: pool) || progressed
                if closeAfterReply != nil {
                    // A response the session already let through goes out whole before the
                    // close (its bytes may still be arriving), unless the upstream is gone.
                    let responseOwed = toDownstream.pendingPass > 0 && upstreamConnected && !toDownstream.sourceEnded
                    if responseOwed, let upstream {
                        progressed = try fill(&toDownstream, from: upstream, pool: pool) || progressed
                    }
                    if parse(.response, session, pool: pool) == .moreWork { progressed = true }
                    if toDownstream.output.isEmpty && toDownstream.pendingBytes.isEmpty && !responseOwed {
                        return finish(closeOutcome, resetDownstream: false, resetUpstream: true)
                    }
                    guard progressed else { break }
                    rounds += 1
                    continue
                }
                progressed = try fill(&toUpstream, from: downstream, pool: pool) || progressed
                if let upstream, upstreamConnected {
                    if try fill(&toDownstream, from: upstream, pool: pool) {
                        progressed = true
                        if responseWaitSince != nil { responseWaitSince = loop.now }
                    }
                }
                switch parse(.request, session, pool: pool) {
                case .failed: return finish(.protocolError, resetDownstream: true, resetUpstream: true)
                case .moreWork:
                    progressed = true
                    toDownstream.parseDirty = true
                case .idle: break
                }
                if upstream == nil && closeAfterReply == nil && toUpstream.holdsOutput {
                    // The first request allowed on this connection: only now open the upstream.
                    connectUpstream()
                    if isFinished || upstreamOutcome != nil { return }
                    progressed = true
                }
                switch parse(.response, session, pool: pool) {
                case .failed: return finish(.protocolError, resetDownstream: true, resetUpstream: true)
                case .moreWork:
                    progressed = true
                    toUpstream.parseDirty = true
                case .idle: break
                }
                if closeOutcome == .upstreamProtocolError && upstream != nil {
                    // A response that cannot be relayed: reset the upstream now; the client gets
                    // what is queued for it (valid responses, the session's 502), then a FIN.
                    dropUpstream()
                    toUpstream.buffer.discard(pool: pool)
                    toUpstream.sourceEnded = true
                }
                guard progressed else { break }
                lastActivity = loop.now
                rounds += 1
            }
        } catch {
            return finish(.reset, resetDownstream: true, resetUpstream: true)
        }
        if closeAfterReply != nil { return }
        trackPendingHead()
        trackResponseWait(session)
        if let upstream {
            forwardEndIfDone(&toUpstream, to: upstream, ready: upstreamConnected)
        } else if toUpstream.sourceEnded && toUpstream.buffer.isEmpty && !toUpstream.holdsOutput && !toUpstream.endForwarded {
            // The client ended and nothing of it was ever allowed upstream: there is no server
            // side to close, and no response will come from one.
            toUpstream.endForwarded = true
            toDownstream.sourceEnded = true
            toDownstream.parseDirty = true
            _ = parse(.response, session, pool: pool)
        }
        forwardEndIfDone(&toDownstream, to: downstream, ready: true)
        if toUpstream.endForwarded && toDownstream.endForwarded {
            return finish(.closed, resetDownstream: settings.closeWithoutTimeWait && downstreamClosedFirstByProxy)
        }
        if draining { closeIfIdleWhileDraining() }
        if isFinished { return }
        if rounds == Self.fairnessBudget && !resumeQueued {
            resumeQueued = true
            loop.resumeSoon(self)
        }
    }

    /// Starts the header clock when the client's input holds the start of a message the
    /// session cannot decide yet, and stops it when that input is consumed. The timer is
    /// armed at most once at a time and re-armed lazily when it fires early.
    private func trackPendingHead() {
        // Until the first request's head is consumed, the clock that began at accept runs
        // even while nothing arrives: a client that connects and stays silent is a stalled head.
        let beforeFirstRequest = !requestInputActedOn && !toUpstream.sourceEnded
        let waiting = (!toUpstream.buffer.isEmpty || beforeFirstRequest) && toUpstream.pendingPass == 0
            && toUpstream.pendingDrop == 0 && !toUpstream.blocked
        if !waiting {
            headPendingSince = nil
            return
        }
        if headPendingSince == nil { headPendingSince = loop.now }
        if headerTimer == nil {
            headerTimer = loop.scheduleTimer(after: settings.headerTimeout, handler: self, tag: Tag.headerTimer)
        }
    }

    /// Writes a direction's parsed output to its destination.
    private func flush(_ direction: inout Direction, to destination: Socket, ready: Bool, pool: BufferPool) throws -> Bool {
        guard ready, direction.destinationWritable else { return false }
        return try send(&direction.output, to: destination, writable: &direction.destinationWritable,
                        sent: &direction.bytes, pool: pool)
    }

    /// Writes what `buffer` holds to `destination` once; false when nothing moved.
    private func send(_ buffer: inout RelayBuffer, to destination: Socket, writable: inout Bool, sent: inout UInt64,
                      pool: BufferPool) throws -> Bool {
        guard !buffer.isEmpty else { return false }
        let pending = buffer.readableBytes
        switch try destination.write(from: pending) {
        case .processed(let count):
            buffer.didRead(count, pool: pool)
            sent &+= UInt64(count)
            // A short write means the socket buffer is full; edge-triggered epoll reports
            // when it drains, so don't spend a syscall on the EAGAIN.
            if count < pending.count { writable = false }
            return count > 0
        case .wouldBlock:
            writable = false
            return false
        }
    }

    /// Reads from a direction's source into its input buffer once, if there is room.
    private func fill(_ direction: inout Direction, from source: Socket, pool: BufferPool) throws -> Bool {
        guard direction.sourceReadable, !direction.sourceEnded else { return false }
        let space = direction.buffer.writableSpace(pool: pool)
        defer { direction.buffer.releaseIfEmpty(pool: pool) }
        guard space.count > 0 else { return false }
        switch try source.read(into: space) {
        case .processed(0):
            direction.sourceEnded = true
            direction.parseDirty = true
            return true
        case .processed(let count):
            direction.buffer.didWrite(count)
            direction.parseDirty = true
            // A short read drained the socket; every later arrival raises a new edge, so skip
            // the read that would only say EAGAIN (as nginx does). After FIN, read to the end.
            if count < space.count && !direction.sourceClosing { direction.sourceReadable = false }
            return true
        case .wouldBlock:
            direction.sourceReadable = false
            return false
        }
    }

    /// Runs the session over one direction's input until it needs more bytes or the output
    /// is full.
    private func parse(_ side: TrafficDirection, _ session: L7Session, pool: BufferPool) -> PumpResult {
        if side == .request {
            return parse(&toUpstream, replies: &toDownstream, side: side, session: session, pool: pool)
        }
        return parse(&toDownstream, replies: &toUpstream, side: side, session: session, pool: pool)
    }

    private func parse(_ direction: inout Direction, replies: inout Direction, side: TrafficDirection,
                       session: L7Session, pool: BufferPool) -> PumpResult {
        // Nothing new for this side and nothing half done: the session's answer would be
        // the same "need more" as last time.
        guard direction.parseDirty || direction.pendingPass > 0 || direction.pendingDrop > 0
                || !direction.pendingBytes.isEmpty else { return .idle }
        direction.parseDirty = false
        var progressed = false
        var idleOperations = 0
        while true {
            // Finish what earlier operations started before asking for more.
            if !direction.pendingBytes.isEmpty {
                let target = direction.pendingBytesToSource
                let moved = target ? append(&direction.pendingBytes, to: &replies.output, pool: pool)
                                   : append(&direction.pendingBytes, to: &direction.output, pool: pool)
                guard moved else { break }
                progressed = true
            }
            if direction.pendingDrop > 0 {
                let count = min(direction.pendingDrop, direction.buffer.readableCount)
                direction.buffer.didRead(count, pool: pool)
                direction.pendingDrop -= count
                if count > 0 { progressed = true }
                if direction.pendingDrop > 0 { break }
            }
            if direction.pendingPass > 0 {
                let space = direction.output.writableSpace(pool: pool)
                let count = min(direction.pendingPass, direction.buffer.readableCount, space.count)
                if count > 0 {
                    space.copyMemory(from: UnsafeRawBufferPointer(rebasing: direction.buffer.readableBytes[0..<count]))
                    direction.output.didWrite(count)
                    direction.buffer.didRead(count, pool: pool)
                    direction.pendingPass -= count
                    progressed = true
                }
                direction.output.releaseIfEmpty(pool: pool)
                if direction.pendingPass > 0 { break }
            }
            if closeAfterReply != nil { break }
            if direction.sourceEnded && !direction.endOfInputReported && direction.buffer.isEmpty {
                direction.endOfInputReported = true
                if let operation = session.endOfInput(side, unconsumed: 0) {
                    if !perform(operation, on: &direction, side: side) { return .failed }
                    progressed = true
                    continue
                }
            }
            let operation = session.step(side, direction.buffer.readableBytes)
            direction.blocked = operation == .blocked
            if operation == .blocked {
                // Backpressure: the bytes stay; once the buffer is full this side is not read
                // until the other direction's progress unblocks the session.
                break
            }
            if operation == .needMore {
                if direction.sourceEnded && !direction.buffer.isEmpty {
                    // The source closed in the middle of a message: those bytes never form
                    // one, and none of them was forwarded.
                    if side == .response, !direction.endOfInputReported {
                        direction.endOfInputReported = true
                        if let ending = session.endOfInput(side, unconsumed: direction.buffer.readableCount) {
                            if !perform(ending, on: &direction, side: side) { return .failed }
                            continue
                        }
                    }
                    direction.buffer.discard(pool: pool)
                    progressed = true
                } else if direction.buffer.readableCount >= pool.blockSize {
                    // A message that does not fit the buffer: the session's limits should have
                    // caught it; end rather than wait forever.
                    return .failed
                }
                break
            }
            let before = (direction.pendingPass, direction.pendingDrop, direction.pendingBytes.count)
            if !perform(operation, on: &direction, side: side) { return .failed }
            if (direction.pendingPass, direction.pendingDrop, direction.pendingBytes.count) == before {
                idleOperations += 1
                if idleOperations > Self.maximumIdleOperations { return .failed }
            } else {
                idleOperations = 0
            }
        }
        return progressed ? .moreWork : .idle
    }

    /// Records one operation of the session; false when it ends the connection at once.
    private func perform(_ operation: SessionOperation, on direction: inout Direction, side: TrafficDirection) -> Bool {
        if side == .request, operation != .needMore, operation != .blocked { requestInputActedOn = true }
        switch operation {
        case .needMore, .blocked:
            return true
        case .pass(let count):
            direction.pendingPass += count
        case .drop(let count):
            direction.pendingDrop += count
        case .reply(let bytes):
            direction.pendingBytes += bytes
            direction.pendingBytesToSource = true
        case .forward(let bytes):
            direction.pendingBytes += bytes
            direction.pendingBytesToSource = false
        case .close(let reason):
            // A request-side close follows the answer already queued for the client. A
            // response-side close (a response that cannot be relayed) resets the upstream
            // now and closes once what is queued for the client (valid responses before the
            // fault, the session's 502) has been delivered.
            // (The upstream is dropped by `pumpSession` once this parse returns: both
            // directions are borrowed here.)
            if side == .response { closeOutcome = .upstreamProtocolError }
            closeAfterReply = reason
        }
        return true
    }

    /// Moves `bytes` into `buffer` if they fit whole; false when there is no room yet.
    private func append(_ bytes: inout [UInt8], to buffer: inout RelayBuffer, pool: BufferPool) -> Bool {
        let space = buffer.writableSpace(pool: pool)
        guard space.count >= bytes.count else {
            buffer.releaseIfEmpty(pool: pool)
            return false
        }
        bytes.withUnsafeBytes { space.copyMemory(from: $0) }
        buffer.didWrite(bytes.count)
        bytes.removeAll(keepingCapacity: false)
        return true
    }

    private func forwardEndIfDone(_ direction: inout Direction, to destination: Socket, ready: Bool) {
        guard direction.sourceEnded, direction.buffer.isEmpty, direction.output.isEmpty, direction.pendingPass == 0,
              direction.pendingBytes.isEmpty, !direction.endForwarded, ready else { return }
        destination.shutdown(.write)
        direction.endForwarded = true
        if destination == downstream && !toUpstream.sourceEnded { downstreamClosedFirstByProxy = true }
    }

    // MARK: Ending

    private func finish(_ outcome: ConnectionOutcome, resetDownstream: Bool, resetUpstream: Bool = false) {
        guard !isFinished else { return }
        isFinished = true
        if let connectTimer { loop.cancelTimer(connectTimer) }
        if let idleTimer { loop.cancelTimer(idleTimer) }
        if let headerTimer { loop.cancelTimer(headerTimer) }
        if let responseTimer { loop.cancelTimer(responseTimer) }
        connectTimer = nil
        idleTimer = nil
        headerTimer = nil
        responseTimer = nil
        if let downstreamToken { loop.deregister(downstreamToken) }
        if let upstreamToken { loop.deregister(upstreamToken) }
        if resetDownstream { downstream.setResetOnClose() }
        downstream.close()
        if let upstream {
            if resetUpstream { upstream.setResetOnClose() }
            upstream.close()
        }
        upstream = nil
        let pool = owner.bufferPool
        toUpstream.buffer.discard(pool: pool)
        toDownstream.buffer.discard(pool: pool)
        toUpstream.output.discard(pool: pool)
        toDownstream.output.discard(pool: pool)
        owner.connectionFinished(self, summary: ConnectionSummary(
            listener: listenerName, client: client, destination: destination,
            bytesFromClient: toUpstream.bytes, bytesFromServer: toDownstream.bytes,
            durationNanoseconds: loop.now &- startTime, outcome: outcome))
    }
}
