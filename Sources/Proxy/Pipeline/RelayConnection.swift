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
    /// A message the session waited for (HTTP: a request head) did not complete within the
    /// incomplete-message timeout.
    case messageTimeout = "message_timeout"
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

/// The source address of the proxy's upstream sockets on transparent listeners.
public enum UpstreamSource: Sendable, Equatable {
    /// The node's own address, chosen by routing (the server sees the node).
    case node
    /// The client's address (`IP_TRANSPARENT`) and a port chosen for the 4-tuple. The
    /// datapath steers the server's replies back to the proxy's socket.
    case clientAddress
    /// The client's address and, when free, its port as well (the server sees the client's
    /// very 4-tuple); where the port clashes, as `clientAddress`.
    case clientAddressAndPort

    /// Opens a socket of `kind` bound as this source says for a connection from `client`
    /// and connects it to `destination`. A kept client port that clashes (`EADDRINUSE` at
    /// bind, `EADDRNOTAVAIL` at connect: the client's port is the node's own and in use,
    /// or the 4-tuple still lingers in TIME_WAIT) is given up for a chosen one.
    func openConnected(_ kind: Socket.Kind, client: SocketAddress, destination: SocketAddress,
                       mark: UInt32?) throws -> (Socket, ConnectResult) {
        var keepingPort = self == .clientAddressAndPort
        while true {
            let socket = try Socket.open(kind, family: destination.family)
            do {
                if let mark { try socket.setMark(mark) }
                if kind == .stream { try? socket.setNoDelay() }
                // IPv6 needs the outgoing interface's link-local address to be usable (not
                // tentative): the kernel sends a neighbour solicitation from a packet's source
                // only when that address is its own, else from the link-local one, and none
                // while it is tentative, so the first packets from the client's address wait
                // in the neighbour queue (Send-Q) until duplicate address detection is over.
                if self != .node && client.family == destination.family {
                    try socket.bindSource(client, keepingPort: keepingPort, stream: kind == .stream)
                }
                return (socket, try socket.connect(to: destination))
            } catch let error as Errno where keepingPort && (error.code == EADDRINUSE || error.code == EADDRNOTAVAIL) {
                socket.close()
                keepingPort = false
            } catch {
                socket.close()
                throw error
            }
        }
    }
}

/// Settings a connection needs, copied once per listener.
public struct RelaySettings: Sendable {
    public var connectTimeout: UInt64
    public var idleTimeout: UInt64
    /// `SO_MARK` for the upstream socket, nil for none.
    public var upstreamMark: UInt32?
    /// Where upstream connections come from (transparent listeners with a datapath: the client).
    public var upstreamSource: UpstreamSource = .node
    /// Close the downstream without TIME_WAIT when the proxy closed first (transparent
    /// listeners): the socket holds the client's 4-tuple with the original destination as
    /// its local address, and a TIME_WAIT there makes the kernel drop the client's next
    /// SYN on that tuple (its listener is not at that address), costing a 1 s retransmit.
    public var closeWithoutTimeWait: Bool
    /// With an L7 session: how long a message the session waits for (HTTP: a request head)
    /// may take from its first byte (and the first one from the accept).
    public var messageTimeout: UInt64 = 30_000_000_000
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

/// What every connection of one listener shares: its name and settings (one reference
/// per connection instead of a copy of each).
public final class RelayProfile: Sendable {
    public let listenerName: String
    public let settings: RelaySettings

    public init(listenerName: String, settings: RelaySettings) {
        self.listenerName = listenerName
        self.settings = settings
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
    /// One direction's sockets side. At L4 its `buffer` holds the bytes in flight; with an
    /// L7 session the driver's queues do.
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
    }

    private enum Tag {
        static let downstream: UInt32 = 0
        static let upstream: UInt32 = 1
        static let timer: UInt32 = 0
    }

    /// Reads and writes per direction before yielding to other connections.
    private static let fairnessBudget = 16

    // The worker outlives its connections; unowned(unsafe) spares a reference-count round
    // trip through its side table on every buffer access.
    private unowned(unsafe) let owner: ConnectionOwner
    /// The worker's buffer pool (held here: one load instead of a call through `owner`).
    private let pool: BufferPool
    private let loop: EventLoop
    private let profile: RelayProfile
    public var settings: RelaySettings { profile.settings }
    /// The listener that accepted the connection.
    public var listenerName: String { profile.listenerName }
    /// The L7 half (nil: an L4 relay): the session and its byte queues, without sockets.
    private var driver: StreamDriver?
    /// How the connection is reported once the driver's close has flushed, when the relay
    /// (not the session) decided it.
    private var closeOutcome: ConnectionOutcome?
    /// Set when the upstream failed and only an answer to the client remains to be sent.
    private var upstreamOutcome: ConnectionOutcome?
    public let client: SocketAddress
    public let destination: SocketAddress
    private let downstream: Socket
    private var upstream: Socket?
    private var downstreamToken: RegistrationToken?
    private var upstreamToken: RegistrationToken?
    private var upstreamConnected = false
    private var toUpstream = Direction()
    private var toDownstream = Direction()
    /// The connection's one timer: never later than the earliest of its clocks (connect,
    /// idle, incomplete message, response), and re-armed lazily when it fires before any of
    /// them is due, so I/O never touches the timer heap.
    private var timer = DeadlineTimer()
    /// The clocks below are monotonic instants, 0 while the clock is not running (the
    /// monotonic clock never reads 0), so none needs an optional's extra word.
    /// When the upstream connect must have completed (0 once connected).
    private var connectDeadline: UInt64 = 0
    private let startTime: UInt64
    private var lastActivity: UInt64
    private var resumeQueued = false
    /// When the client's input began holding an incomplete message (L7 only; 0: it does not).
    private var messagePendingSince: UInt64 = 0
    /// L7: when the upstream last sent something while a response was owed (or when the
    /// wait began); 0 while no response is owed.
    private var responseWaitSince: UInt64 = 0
    /// The proxy is draining: the connection closes as soon as it is idle between requests.
    private var draining = false
    /// The session took the drain over (`closeIfIdleWhileDraining`): it closes the connection.
    private var sessionEndsDrain = false
    /// The proxy sent its FIN to the client before the client's FIN arrived.
    private var downstreamClosedFirstByProxy = false
    public private(set) var isFinished = false

    /// Takes ownership of `downstream` and starts connecting to `destination`.
    public init(downstream: Socket, client: SocketAddress, destination: SocketAddress, profile: RelayProfile,
                session: L7Session? = nil, owner: ConnectionOwner, loop: EventLoop) {
        driver = session.map(StreamDriver.init(session:))
        hasSession = session != nil
        self.downstream = downstream
        self.client = client
        self.destination = destination
        self.profile = profile
        self.owner = owner
        pool = owner.bufferPool
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
            // TCP_NODELAY comes from the listening socket (accepted sockets inherit it).
            downstreamToken = try loop.register(downstream.descriptor, handler: self, tag: Tag.downstream)
        } catch {
            finish(.reset, resetDownstream: true)
            return
        }
        if hasSession {
            messagePendingSince = loop.now
            armTimer()
            pumpBoth()
            return
        }
        connectUpstream()
        if !isFinished { armTimer() }
        if !isFinished && upstreamConnected { pumpBoth() }
    }

    /// Opens the upstream socket (with the proxy mark, from the configured source) and starts connecting it.
    private func connectUpstream() {
        do {
            let (socket, connection) = try settings.upstreamSource.openConnected(
                .stream, client: client, destination: destination, mark: settings.upstreamMark)
            upstream = socket
            upstreamToken = try loop.register(socket.descriptor, handler: self, tag: Tag.upstream)
            if connection == .connected {
                upstreamConnected = true
            } else {
                connectDeadline = loop.now &+ settings.connectTimeout
                armTimer()
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
                // A failed connect reports an error or a hang-up (with writability); writable
                // alone means connected, without asking the socket (one syscall fewer).
                if readiness.contains(.error) || readiness.contains(.hangup) {
                    upstreamFailed(.upstreamUnreachable)
                    return
                }
                guard readiness.wantsWrite else { return }
                upstreamConnected = true
                connectDeadline = 0
            }
            if readiness.wantsRead { toDownstream.sourceReadable = true }
            if closing { toDownstream.sourceClosing = true }
            if readiness.wantsWrite { toUpstream.destinationWritable = true }
        }
        pumpBoth()
    }

    public func handleTimer(tag: UInt32, loop: EventLoop) {
        timer.fired()
        guard !isFinished else { return }
        let now = loop.now
        if connectDeadline != 0, now >= connectDeadline {
            return upstreamFailed(.connectTimeout)
        }
        if responseWaitSince != 0, let session = session, now &- responseWaitSince >= responseTimeout(session) {
            responseWaitSince = 0
            if session.isAwaitingResponse, upstream != nil {
                // The upstream stayed silent while a response was owed: the client gets the
                // session's answer (HTTP: 504, when nothing of that response reached it yet)
                // and the connection closes; the upstream is reset.
                dropUpstream()
                return endWithAnswer(session.responseTimedOut(), reason: "response timeout", outcome: .responseTimeout)
            }
        }
        if messagePendingSince != 0, now &- messagePendingSince >= settings.messageTimeout, let session = session {
            // A message that never completes (a slow or stalled client): answer if we may, then close.
            return endWithAnswer(session.incompleteMessageTimedOut(), reason: "incomplete message timeout",
                                 outcome: .messageTimeout)
        }
        if now &- lastActivity >= settings.idleTimeout {
            return finish(.idleTimeout, resetDownstream: false)
        }
        armTimer()
    }

    /// The earliest moment one of the connection's clocks runs out.
    private var nextDeadline: UInt64 {
        var deadline = lastActivity &+ settings.idleTimeout
        if connectDeadline != 0 { deadline = min(deadline, connectDeadline) }
        if messagePendingSince != 0 { deadline = min(deadline, messagePendingSince &+ settings.messageTimeout) }
        if responseWaitSince != 0, let session { deadline = min(deadline, responseWaitSince &+ responseTimeout(session)) }
        return deadline
    }

    /// Makes sure the timer fires no later than `nextDeadline` (it may fire earlier: the
    /// clocks are checked then, and it is re-armed).
    private func armTimer() {
        timer.arm(noLaterThan: nextDeadline, handler: self, tag: Tag.timer, loop: loop)
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
        guard hasSession, let answer = inDriver({ $0.session }).upstreamFailed(reason: reason) else {
            return finish(outcome, resetDownstream: true)
        }
        dropUpstream()
        upstreamOutcome = outcome
        driver!.answerClient(answer)
        driver!.close(reason: outcome.rawValue)
        flushAnswerAndFinish()
    }

    /// Closes the upstream with a reset and forgets it (the client side goes on).
    private func dropUpstream() {
        if let upstreamToken { loop.forgetClosing(upstreamToken) }
        upstreamToken = nil
        connectDeadline = 0
        upstream?.setResetOnClose()
        upstream?.close()
        upstream = nil
        upstreamConnected = false
    }

    /// Stops reading the client, queues `answer` for it (sent if it fits behind what is
    /// queued already; the close follows either way), and closes once that is delivered.
    private func endWithAnswer(_ answer: [UInt8]?, reason: String, outcome: ConnectionOutcome) {
        stopReadingClient()
        if let answer { driver?.answerClient(answer) }
        driver?.close(reason: reason)
        closeOutcome = outcome
        pumpBoth()
    }

    /// The client's further bytes are not wanted (a close is coming): drop what is held.
    private func stopReadingClient() {
        toUpstream.sourceEnded = true
        driver?.discardInput(.request, pool: pool)
    }

    /// Starts the response clock when the session owes a response and stops it when none
    /// is owed; upstream bytes move it on (see `fill`). Armed at most once at a time.
    private func trackResponseWait(_ session: L7Session) {
        guard session.isAwaitingResponse, upstream != nil else {
            responseWaitSince = 0
            return
        }
        if responseWaitSince == 0 {
            responseWaitSince = loop.now
            armTimer()
        }
    }

    /// The proxy is draining: an L7 connection idle between requests closes now, and any
    /// other as soon as it becomes idle; L4 relays run until the drain deadline. A
    /// connection whose first request has not arrived yet is not idle but young: its client
    /// is about to send that request (which closing would answer with a reset the client
    /// cannot tell from a failure), so it is served first. A session that can tell its client
    /// to stop (HTTP/2: GOAWAY, `L7Session.beginDrain`) ends the connection itself: an HTTP/2
    /// client keeps a connection busy with streams opened as others end, and one opened just
    /// as an idle connection closed would be lost.
    public func beginDrain() {
        guard !isFinished else { return }
        draining = true
        closeIfIdleWhileDraining()
    }

    /// Pumps again on the loop's next turn (once, however often asked before then).
    private func resumeSoon() {
        guard !resumeQueued else { return }
        resumeQueued = true
        loop.resumeSoon(self)
    }

    private func closeIfIdleWhileDraining() {
        guard draining, hasSession, !sessionEndsDrain else { return }
        if inDriver({ $0.session }).beginDrain() {
            sessionEndsDrain = true
            // What the session now has for its client (GOAWAY) leaves on the next pump.
            driver!.sessionChanged()
            resumeSoon()
            return
        }
        guard inDriver({ $0.isIdle && $0.hasActedOnRequest }) else { return }
        finish(.drained, resetDownstream: false, resetUpstream: false)
    }

    /// Writes what is queued for the client, then closes (used once the upstream is gone).
    private func flushAnswerAndFinish() {
        guard hasSession else { return finish(upstreamOutcome ?? .reset, resetDownstream: true) }
        do {
            while true {
                if case .failed = driver!.advance(.response, pool: pool) { break }
                guard try flushL7(.response, to: downstream, ready: true) else { break }
            }
        } catch {
            return finish(upstreamOutcome ?? .reset, resetDownstream: true)
        }
        guard !inDriver({ $0.holdsOutput(.response) }) else { return }
        // Bytes the client sent that nobody read would turn the close into a reset, which
        // can destroy the answer before the client reads it: read and drop them first.
        for _ in 0..<8 {
            let space = driver!.inputSpace(.request, pool: pool)
            guard space.count > 0, case .processed(let count)? = try? downstream.read(into: space), count > 0 else { break }
            driver!.received(.request, count: count)
            driver!.discardInput(.request, pool: pool)
        }
        driver!.discardInput(.request, pool: pool)
        finish(upstreamOutcome ?? .protocolError, resetDownstream: false)
    }

    /// Ends the connection now with resets on both sides (drain deadline, shutdown, a
    /// policy change the relay cannot apply).
    public func abort(outcome: ConnectionOutcome = .aborted) {
        guard !isFinished else { return }
        finish(outcome, resetDownstream: true, resetUpstream: true)
    }

    /// True when requests are judged by an L7 session (false: an L4 relay).
    public let hasSession: Bool

    /// Reads or changes the driver in place: a call on `driver!` itself would copy it (and
    /// retain everything it holds) first.
    @inline(__always)
    private func inDriver<R>(_ body: (inout StreamDriver) -> R) -> R { body(&driver!) }

    private var session: L7Session? { hasSession ? inDriver({ $0.session }) : nil }

    /// The session's own response timeout (DNS), else the listener's.
    private func responseTimeout(_ session: L7Session) -> UInt64 {
        session.responseTimeout ?? settings.responseTimeout
    }

    // MARK: Relaying

    private enum PumpResult { case idle, moreWork, failed }

    private func pumpBoth() {
        if upstreamOutcome != nil { return flushAnswerAndFinish() }
        if hasSession { return pumpSession() }
        guard let upstream else { return }
        // Until the connect completes, the upstream socket has nothing to read (and a read
        // would report the connect's failure as if it were a reset).
        let forward = pump(&toUpstream, from: downstream, to: upstream, destinationReady: upstreamConnected,
                           otherEndForwarded: toDownstream.endForwarded)
        guard forward != .failed else { return finish(.reset, resetDownstream: true, resetUpstream: true) }
        let backward = upstreamConnected
            ? pump(&toDownstream, from: upstream, to: downstream, destinationReady: true,
                   otherEndForwarded: toUpstream.endForwarded) : .idle
        guard backward != .failed else { return finish(.reset, resetDownstream: true, resetUpstream: true) }

        if toUpstream.endForwarded && toDownstream.endForwarded {
            // Both FINs are through and acknowledged-or-not, every byte is delivered: an
            // RST now only spares the downstream a TIME_WAIT (see `closeWithoutTimeWait`).
            return finish(.closed, resetDownstream: settings.closeWithoutTimeWait && downstreamClosedFirstByProxy)
        }
        if forward == .moreWork || backward == .moreWork { resumeSoon() }
    }

    /// Moves bytes `source` → buffer → `destination` until neither side can make progress
    /// or the fairness budget is spent.
    private func pump(_ direction: inout Direction, from source: Socket, to destination: Socket,
                      destinationReady: Bool, otherEndForwarded: Bool) -> PumpResult {
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
            // With the other end already forwarded the connection closes right after, and the
            // close sends this FIN (one syscall fewer).
            if !otherEndForwarded { destination.shutdown(.write) }
            direction.endForwarded = true
            if destination == downstream && !toUpstream.sourceEnded { downstreamClosedFirstByProxy = true }
        }
        return budget == 0 ? .moreWork : .idle
    }

    // MARK: Relaying through an L7 session

    private func pumpSession() {
        var rounds = 0
        do {
            while rounds < Self.fairnessBudget {
                var progressed = false
                if let upstream {
                    progressed = try flushL7(.request, to: upstream, ready: upstreamConnected) || progressed
                }
                progressed = try flushL7(.response, to: downstream, ready: true) || progressed
                if let closing = inDriver({ $0.closing }) {
                    // A response the session already let through goes out whole before the
                    // close (its bytes may still be arriving), unless the upstream is gone.
                    let responseOwed = inDriver({ $0.isPassing(.response) }) && upstreamConnected && !toDownstream.sourceEnded
                    if responseOwed, let upstream {
                        progressed = try fillL7(.response, from: upstream) || progressed
                    }
                    switch driver!.advance(.response, pool: pool) {
                    case .failed: return finish(.protocolError, resetDownstream: true, resetUpstream: true)
                    case .moreWork: progressed = true
                    case .idle: break
                    }
                    if !inDriver({ $0.holdsOutput(.response) }) && !responseOwed {
                        let outcome = closeOutcome ?? (sessionEndsDrain ? .drained
                            : closing.byResponse ? .upstreamProtocolError : .protocolError)
                        return finish(outcome, resetDownstream: false, resetUpstream: true)
                    }
                    guard progressed else { break }
                    rounds += 1
                    continue
                }
                progressed = try fillL7(.request, from: downstream) || progressed
                if let upstream, upstreamConnected {
                    if try fillL7(.response, from: upstream) {
                        progressed = true
                        if responseWaitSince != 0 { responseWaitSince = loop.now }
                    }
                }
                switch driver!.advance(.request, pool: pool) {
                case .failed: return finish(.protocolError, resetDownstream: true, resetUpstream: true)
                case .moreWork: progressed = true
                case .idle: break
                }
                if upstream == nil && inDriver({ $0.closing }) == nil && inDriver({ $0.holdsOutput(.request) }) {
                    // The first request allowed on this connection: only now open the upstream.
                    connectUpstream()
                    if isFinished || upstreamOutcome != nil { return }
                    progressed = true
                }
                switch driver!.advance(.response, pool: pool) {
                case .failed: return finish(.protocolError, resetDownstream: true, resetUpstream: true)
                case .moreWork: progressed = true
                case .idle: break
                }
                if inDriver({ $0.closing })?.byResponse == true && upstream != nil {
                    // A response that cannot be relayed: reset the upstream now; the client gets
                    // what is queued for it (valid responses, the session's 502), then a FIN.
                    dropUpstream()
                    stopReadingClient()
                }
                guard progressed else { break }
                lastActivity = loop.now
                rounds += 1
            }
        } catch {
            return finish(.reset, resetDownstream: true, resetUpstream: true)
        }
        if inDriver({ $0.closing }) != nil { return }
        trackPendingMessage()
        trackResponseWait(inDriver({ $0.session }))
        if let upstream {
            forwardEndIfDelivered(.request, to: upstream, ready: upstreamConnected)
        } else if inDriver({ $0.isDelivered(.request) }) && !toUpstream.endForwarded {
            // The client ended and nothing of it was ever allowed upstream: there is no server
            // side to close, and no response will come from one.
            toUpstream.endForwarded = true
            toDownstream.sourceEnded = true
            driver!.inputEnded(.response)
            _ = driver!.advance(.response, pool: pool)
        }
        forwardEndIfDelivered(.response, to: downstream, ready: true)
        if toUpstream.endForwarded && toDownstream.endForwarded {
            return finish(.closed, resetDownstream: settings.closeWithoutTimeWait && downstreamClosedFirstByProxy)
        }
        if draining { closeIfIdleWhileDraining() }
        if isFinished { return }
        if rounds == Self.fairnessBudget { resumeSoon() }
    }

    /// Starts the incomplete-message clock when the client's input holds the start of a
    /// message the session cannot decide yet (or, before the first request, nothing at all),
    /// and stops it when that input is consumed. Armed at most once at a time and re-armed
    /// lazily when it fires early.
    private func trackPendingMessage() {
        guard inDriver({ $0.awaitsMessage }) else {
            messagePendingSince = 0
            return
        }
        if messagePendingSince == 0 {
            messagePendingSince = loop.now
            armTimer()
        }
    }

    /// Writes what the driver holds for `side`'s destination once; false when nothing moved.
    private func flushL7(_ side: TrafficDirection, to destination: Socket, ready: Bool) throws -> Bool {
        let writable = side == .request ? toUpstream.destinationWritable : toDownstream.destinationWritable
        guard ready, writable else { return false }
        let pending = inDriver({ $0.output(side) })
        guard !pending.isEmpty else { return false }
        switch try destination.write(from: pending) {
        case .processed(let count):
            driver!.sent(side, count: count, pool: pool)
            // A short write means the socket buffer is full; edge-triggered epoll reports
            // when it drains, so don't spend a syscall on the EAGAIN.
            if side == .request {
                toUpstream.bytes &+= UInt64(count)
                if count < pending.count { toUpstream.destinationWritable = false }
            } else {
                toDownstream.bytes &+= UInt64(count)
                if count < pending.count { toDownstream.destinationWritable = false }
            }
            return count > 0
        case .wouldBlock:
            if side == .request { toUpstream.destinationWritable = false } else { toDownstream.destinationWritable = false }
            return false
        }
    }

    /// Reads from `side`'s source into the driver's input once, if there is room.
    private func fillL7(_ side: TrafficDirection, from source: Socket) throws -> Bool {
        let direction = side == .request ? toUpstream : toDownstream
        guard direction.sourceReadable, !direction.sourceEnded else { return false }
        let space = driver!.inputSpace(side, pool: pool)
        guard space.count > 0 else {
            driver!.releaseInputIfEmpty(side, pool: pool)
            return false
        }
        let result: IOResult
        do {
            result = try source.read(into: space)
        } catch {
            driver!.releaseInputIfEmpty(side, pool: pool)
            throw error
        }
        switch result {
        case .processed(0):
            driver!.releaseInputIfEmpty(side, pool: pool)
            driver!.inputEnded(side)
            if side == .request { toUpstream.sourceEnded = true } else { toDownstream.sourceEnded = true }
            return true
        case .processed(let count):
            driver!.received(side, count: count)
            // A short read drained the socket; every later arrival raises a new edge, so skip
            // the read that would only say EAGAIN (as nginx does). After FIN, read to the end.
            if count < space.count && !direction.sourceClosing {
                if side == .request { toUpstream.sourceReadable = false } else { toDownstream.sourceReadable = false }
            }
            return true
        case .wouldBlock:
            driver!.releaseInputIfEmpty(side, pool: pool)
            if side == .request { toUpstream.sourceReadable = false } else { toDownstream.sourceReadable = false }
            return false
        }
    }

    /// Forwards the end of `side`'s stream to its destination once everything from it was
    /// delivered.
    private func forwardEndIfDelivered(_ side: TrafficDirection, to destination: Socket, ready: Bool) {
        let forwarded = side == .request ? toUpstream.endForwarded : toDownstream.endForwarded
        guard ready, !forwarded, inDriver({ $0.isDelivered(side) }) else { return }
        // With the other end already forwarded the connection closes right after, and the
        // close sends this FIN (one syscall fewer).
        let otherForwarded = side == .request ? toDownstream.endForwarded : toUpstream.endForwarded
        if !otherForwarded { destination.shutdown(.write) }
        if side == .request { toUpstream.endForwarded = true } else { toDownstream.endForwarded = true }
        if destination == downstream && !toUpstream.sourceEnded { downstreamClosedFirstByProxy = true }
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
            return true
        case .processed(let count):
            direction.buffer.didWrite(count)
            // A short read drained the socket; every later arrival raises a new edge, so skip
            // the read that would only say EAGAIN (as nginx does). After FIN, read to the end.
            if count < space.count && !direction.sourceClosing { direction.sourceReadable = false }
            return true
        case .wouldBlock:
            direction.sourceReadable = false
            return false
        }
    }

    // MARK: Ending

    private func finish(_ outcome: ConnectionOutcome, resetDownstream: Bool, resetUpstream: Bool = false) {
        guard !isFinished else { return }
        isFinished = true
        timer.cancel(loop: loop)
        // Both descriptors are closed right below, which takes them out of epoll.
        if let downstreamToken { loop.forgetClosing(downstreamToken) }
        if let upstreamToken { loop.forgetClosing(upstreamToken) }
        if resetDownstream { downstream.setResetOnClose() }
        downstream.close()
        if let upstream {
            if resetUpstream { upstream.setResetOnClose() }
            upstream.close()
        }
        upstream = nil
        toUpstream.buffer.discard(pool: pool)
        toDownstream.buffer.discard(pool: pool)
        driver?.release(pool: pool)
        owner.connectionFinished(self, summary: ConnectionSummary(
            listener: profile.listenerName, client: client, destination: destination,
            bytesFromClient: toUpstream.bytes, bytesFromServer: toDownstream.bytes,
            durationNanoseconds: loop.now &- startTime, outcome: outcome))
    }
}
