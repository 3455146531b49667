#if canImport(Glibc)
import Glibc
#endif

/// Settings of a transparent UDP listener.
public struct DatagramSettings: Sendable {
    public var sessionIdleTimeout: UInt64
    public var maxSessions: Int
    public var maxDatagramBytes: Int
    public var upstreamMark: UInt32?

    public init(sessionIdleTimeout: UInt64, maxSessions: Int, maxDatagramBytes: Int, upstreamMark: UInt32?) {
        self.sessionIdleTimeout = sessionIdleTimeout
        self.maxSessions = maxSessions
        self.maxDatagramBytes = maxDatagramBytes
        self.upstreamMark = upstreamMark
    }
}

/// Receives per-datagram events of a UDP listener, for counters and flow records.
public protocol DatagramDelegate: AnyObject {
    func datagramSessionStarted(client: SocketAddress, destination: SocketAddress, listener: DatagramListener)
    func datagramSessionEnded(client: SocketAddress, destination: SocketAddress, datagramsFromClient: UInt64,
                              datagramsFromServer: UInt64, listener: DatagramListener)
    /// Whether a datagram may be relayed under the current policy: nil when it may, else
    /// why it is denied (it is then dropped and reported through `datagramDropped`).
    func datagramDenial(client: SocketAddress, destination: SocketAddress, listener: DatagramListener) -> String?
    /// A datagram was dropped: no original destination, too large, denied, or no session could be made.
    func datagramDropped(client: SocketAddress, destination: SocketAddress?, reason: String, listener: DatagramListener)
}

/// A transparent UDP listener: receives datagrams diverted to it (TPROXY or `bpf_sk_assign`),
/// learns each one's original destination from `IP_ORIGDSTADDR`, and relays it there.
///
/// Each (client, original destination) pair is a session: an upstream socket connected to
/// the destination (with the proxy mark, so the datapath lets it pass) and a reply socket
/// bound with `IP_TRANSPARENT` to the original destination, so answers reach the client from
/// the address it asked. Sessions end after an idle timeout; their number is bounded, and
/// when the table is full the least recently used session is closed to make room (found in
/// O(1): sessions sit in a list ordered by last activity). Every datagram, either way, passes
/// through the listener's one receive buffer: a session holds no buffer of its own.
public final class DatagramListener: EventHandler {
    public let name: String
    public let address: SocketAddress
    private let settings: DatagramSettings
    private let socket: Socket
    private var token: RegistrationToken?
    private unowned let delegate: DatagramDelegate
    private unowned let loop: EventLoop
    /// The one buffer every datagram of this listener passes through, client's or server's
    /// (the loop is single-threaded and a datagram is relayed before the next is read).
    let receiveBuffer: UnsafeMutableRawBufferPointer
    private var sessions: [SessionKey: DatagramSession] = [:]
    /// Sessions by last activity: `leastRecent` is evicted first, `mostRecent` was active last.
    private var leastRecent: DatagramSession?
    private weak var mostRecent: DatagramSession?
    public private(set) var isClosed = false

    struct SessionKey: Hashable {
        let client: SocketAddress
        let destination: SocketAddress
    }

    public init(name: String, address: SocketAddress, settings: DatagramSettings,
                delegate: DatagramDelegate, loop: EventLoop) throws {
        self.name = name
        self.address = address
        self.settings = settings
        self.delegate = delegate
        self.loop = loop
        socket = try Socket.open(.datagram, family: address.family)
        do {
            try socket.setReuseAddress()
            try socket.setReusePort()
            try socket.setTransparent(ipv6: address.isIPv6)
            try socket.setReceiveOriginalDestination(ipv6: address.isIPv6)
            try socket.bind(to: address)
        } catch {
            socket.close()
            throw error
        }
        // One byte more than the limit, so an oversized datagram is seen as truncated.
        receiveBuffer = .allocate(byteCount: settings.maxDatagramBytes + 1, alignment: 16)
    }

    deinit { receiveBuffer.deallocate() }

    public var sessionCount: Int { sessions.count }

    public func register(with loop: EventLoop) throws {
        token = try loop.registerForReading(socket.descriptor, handler: self, tag: 0)
    }

    public func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        while !isClosed {
            let datagram: Socket.Datagram?
            do {
                datagram = try socket.receiveDatagram(into: receiveBuffer)
            } catch {
                return
            }
            guard let datagram else { return }
            guard !datagram.truncated, datagram.length <= settings.maxDatagramBytes else {
                delegate.datagramDropped(client: datagram.source, destination: datagram.originalDestination,
                                         reason: "datagram larger than \(settings.maxDatagramBytes) bytes", listener: self)
                continue
            }
            guard let destination = datagram.originalDestination, destination != address else {
                delegate.datagramDropped(client: datagram.source, destination: nil,
                                         reason: "no original destination (not diverted to the proxy)", listener: self)
                continue
            }
            if let denial = delegate.datagramDenial(client: datagram.source, destination: destination, listener: self) {
                delegate.datagramDropped(client: datagram.source, destination: destination, reason: denial, listener: self)
                continue
            }
            let key = SessionKey(client: datagram.source, destination: destination)
            let session: DatagramSession
            if let existing = sessions[key] {
                session = existing
            } else {
                if sessions.count >= settings.maxSessions { evictLeastRecentlyUsed() }
                do {
                    session = try DatagramSession(key: key, settings: settings, listener: self, loop: loop)
                } catch {
                    delegate.datagramDropped(client: datagram.source, destination: destination,
                                             reason: "cannot open session: \(error)", listener: self)
                    continue
                }
                sessions[key] = session
                append(session)
                delegate.datagramSessionStarted(client: key.client, destination: key.destination, listener: self)
            }
            touch(session)
            session.forwardToServer(UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<datagram.length]))
        }
    }

    private func evictLeastRecentlyUsed() {
        leastRecent?.end()
    }

    // MARK: Activity order (a doubly linked list: the older link owns, the newer is weak)

    private func append(_ session: DatagramSession) {
        session.lessRecent = mostRecent
        if let mostRecent { mostRecent.moreRecent = session } else { leastRecent = session }
        mostRecent = session
    }

    private func unlink(_ session: DatagramSession) {
        let older = session.lessRecent
        let newer = session.moreRecent
        if let newer { newer.lessRecent = older } else { mostRecent = older }
        if let older { older.moreRecent = newer } else { leastRecent = newer }
        session.lessRecent = nil
        session.moreRecent = nil
    }

    /// The session was active now: it moves to the most recent end.
    func touch(_ session: DatagramSession) {
        guard mostRecent !== session else { return }
        unlink(session)
        append(session)
    }

    func sessionEnded(_ session: DatagramSession) {
        unlink(session)
        sessions[session.key] = nil
        delegate.datagramSessionEnded(client: session.key.client, destination: session.key.destination,
                                      datagramsFromClient: session.datagramsFromClient,
                                      datagramsFromServer: session.datagramsFromServer, listener: self)
    }

    /// Stops receiving and ends every session.
    public func close(loop: EventLoop) {
        guard !isClosed else { return }
        isClosed = true
        if let token { loop.deregister(token) }
        socket.close()
        for session in Array(sessions.values) { session.end() }
    }
}

/// One client's exchange with one original destination through a transparent UDP listener.
final class DatagramSession: EventHandler {
    let key: DatagramListener.SessionKey
    private let upstream: Socket
    private let reply: Socket
    private var upstreamToken: RegistrationToken?
    private var idleTimer: TimerID?
    private unowned let listener: DatagramListener
    private unowned let loop: EventLoop
    private let settings: DatagramSettings
    private(set) var lastActivity: UInt64
    /// Neighbours in the listener's activity order (see `DatagramListener.touch`): the
    /// more recent one holds the less recent one, so the list holds no cycle.
    var lessRecent: DatagramSession?
    weak var moreRecent: DatagramSession?
    private(set) var datagramsFromClient: UInt64 = 0
    private(set) var datagramsFromServer: UInt64 = 0
    private var ended = false

    init(key: DatagramListener.SessionKey, settings: DatagramSettings, listener: DatagramListener, loop: EventLoop) throws {
        self.key = key
        self.settings = settings
        self.listener = listener
        self.loop = loop
        lastActivity = loop.now
        upstream = try Socket.open(.datagram, family: key.destination.family)
        do {
            reply = try Socket.open(.datagram, family: key.destination.family)
        } catch {
            upstream.close()
            throw error
        }
        do {
            if let mark = settings.upstreamMark {
                try upstream.setMark(mark)
                try reply.setMark(mark)
            }
            _ = try upstream.connect(to: key.destination)
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
        idleTimer = loop.scheduleTimer(after: settings.sessionIdleTimeout, handler: self, tag: 0)
    }

    func forwardToServer(_ payload: UnsafeRawBufferPointer) {
        lastActivity = loop.now
        datagramsFromClient &+= 1
        // UDP may drop; a full socket buffer or an ICMP error from the server is such a drop.
        _ = try? upstream.write(from: payload)
    }

    func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        let buffer = listener.receiveBuffer
        while !ended {
            let result: IOResult
            do {
                result = try upstream.read(into: buffer)
            } catch let error as Errno where error.code == Errno.connectionRefused {
                // An ICMP port-unreachable from the server, reported once: keep reading.
                continue
            } catch {
                return
            }
            guard case .processed(let count) = result else { return }
            guard count <= settings.maxDatagramBytes else { continue }
            lastActivity = loop.now
            listener.touch(self)
            datagramsFromServer &+= 1
            _ = try? reply.send(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), to: key.client)
        }
    }

    func handleTimer(tag: UInt32, loop: EventLoop) {
        idleTimer = nil
        let idleFor = loop.now &- lastActivity
        if idleFor >= settings.sessionIdleTimeout {
            end()
        } else {
            idleTimer = loop.scheduleTimer(after: settings.sessionIdleTimeout - idleFor, handler: self, tag: 0)
        }
    }

    func end() {
        guard !ended else { return }
        ended = true
        if let idleTimer { loop.cancelTimer(idleTimer) }
        if let upstreamToken { loop.deregister(upstreamToken) }
        upstream.close()
        reply.close()
        listener.sessionEnded(self)
    }
}
