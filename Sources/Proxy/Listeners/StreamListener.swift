#if canImport(Glibc)
import Glibc
#endif

/// Where a listener's accepted connections go upstream.
public enum UpstreamSelection: Sendable, Equatable {
    /// Explicit mode: every connection goes to one configured address.
    case fixed(SocketAddress)
    /// Transparent mode: each connection goes to its original destination, which the
    /// kernel reports as the accepted socket's local address (TPROXY or `bpf_sk_assign`).
    case originalDestination
}

/// Receives accepted connections from a listener; owned by a worker.
public protocol AcceptDelegate: AnyObject {
    /// Whether the worker can take one more connection now.
    var canAccept: Bool { get }
    func accepted(_ socket: Socket, client: SocketAddress, destination: SocketAddress, listener: StreamListener)
    /// A transparent listener received a connection addressed to itself (not diverted by the
    /// datapath); it was refused to avoid relaying to itself in a loop.
    func refusedLoop(client: SocketAddress, listener: StreamListener)
    /// `accept` failed (out of descriptors or memory); accepting pauses until a connection
    /// closes or the delegate calls `resumeAccepting`.
    func acceptFailed(_ error: Error, listener: StreamListener)
}

/// A TCP listening socket in one worker. Several workers bind the same address with
/// `SO_REUSEPORT` and the kernel spreads connections across them.
public final class StreamListener: EventHandler {
    public let name: String
    public let address: SocketAddress
    public let upstream: UpstreamSelection
    public let settings: RelaySettings
    /// The name and settings its connections share.
    public let profile: RelayProfile
    private let socket: Socket
    private var token: RegistrationToken?
    /// The worker, which owns the listener (unowned(unsafe): no reference counting per accept).
    private unowned(unsafe) let delegate: AcceptDelegate
    /// Set when accepting stopped at the connection limit with connections still queued.
    private var acceptPaused = false
    public private(set) var isClosed = false

    /// Opens, binds and starts listening. Transparent listeners set `IP_TRANSPARENT`.
    public init(name: String, address: SocketAddress, upstream: UpstreamSelection, settings: RelaySettings,
                backlog: Int32, delegate: AcceptDelegate) throws {
        self.name = name
        self.address = address
        self.upstream = upstream
        self.settings = settings
        profile = RelayProfile(listenerName: name, settings: settings)
        self.delegate = delegate
        socket = try Socket.open(.stream, family: address.family)
        do {
            try socket.setReuseAddress()
            try socket.setReusePort()
            if upstream == .originalDestination { try socket.setTransparent(ipv6: address.isIPv6) }
            // Accepted sockets inherit it: no setsockopt per connection.
            try socket.setNoDelay()
            try socket.bind(to: address)
            try socket.listen(backlog: backlog)
        } catch {
            socket.close()
            throw error
        }
    }

    /// Serves `descriptor`, a listening socket the sluice this one replaces handed over
    /// (its options are the ones `init` sets: they travel with the socket). Takes ownership;
    /// throws, closing it, when it is not a TCP socket listening on `address`.
    public init(name: String, address: SocketAddress, upstream: UpstreamSelection, settings: RelaySettings,
                backlog: Int32, delegate: AcceptDelegate, adopting descriptor: Int32) throws {
        self.name = name
        self.address = address
        self.upstream = upstream
        self.settings = settings
        profile = RelayProfile(listenerName: name, settings: settings)
        self.delegate = delegate
        socket = Socket(descriptor: descriptor)
        do {
            try socket.verifyInherited(.stream, boundTo: address)
            // The configured backlog applies from now on (listen again only changes it).
            try socket.listen(backlog: backlog)
        } catch {
            socket.close()
            throw error
        }
    }

    /// The listening socket's descriptor (for registering it with the datapath).
    public var descriptor: Int32 { socket.descriptor }

    /// The bound address (useful when the configured port was 0).
    public func boundAddress() throws -> SocketAddress { try socket.localAddress() }

    public func register(with loop: EventLoop) throws {
        token = try loop.registerForReading(socket.descriptor, handler: self, tag: 0)
    }

    public func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        acceptAll()
    }

    /// Called by the worker when a connection finished after accepting had paused.
    public func resumeAccepting() {
        guard acceptPaused, !isClosed else { return }
        acceptPaused = false
        acceptAll()
    }

    private func acceptAll() {
        while !isClosed {
            guard delegate.canAccept else {
                acceptPaused = true
                return
            }
            let accepted: (Socket, SocketAddress)?
            do {
                accepted = try socket.accept()
            } catch {
                // EMFILE/ENFILE/ENOBUFS: out of descriptors or memory. The connection stays
                // queued; retry when a connection closes or the delegate says so.
                acceptPaused = true
                delegate.acceptFailed(error, listener: self)
                return
            }
            guard let (connection, client) = accepted else { return }
            let destination: SocketAddress
            switch upstream {
            case .fixed(let address):
                destination = address
            case .originalDestination:
                guard let original = try? connection.localAddress(), original != address else {
                    connection.setResetOnClose()
                    connection.close()
                    delegate.refusedLoop(client: client, listener: self)
                    continue
                }
                destination = original
            }
            delegate.accepted(connection, client: client, destination: destination, listener: self)
        }
    }

    /// Stops accepting: deregisters and closes the listening socket. Queued connections that
    /// were not accepted yet are reset by the kernel (another worker's socket takes new ones).
    public func close(loop: EventLoop) {
        guard !isClosed else { return }
        isClosed = true
        if let token { loop.deregister(token) }
        socket.close()
    }
}
