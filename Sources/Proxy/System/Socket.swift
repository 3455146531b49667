#if canImport(Glibc)
import Glibc
#endif
import CSluiceShims

/// The outcome of a non-blocking `connect`.
public enum ConnectResult: Equatable, Sendable {
    case connected
    case inProgress
}

/// Tier 3 of the syscall layer: a socket descriptor with a throwing, labelled API.
///
/// A `Socket` does not close itself: its owner (a listener or a connection) calls
/// `close()` exactly once. Every call that can block is meant for non-blocking sockets
/// and reports `EAGAIN` as `.wouldBlock`.
public struct Socket: Equatable, Hashable, Sendable {
    public let descriptor: Int32

    public init(descriptor: Int32) { self.descriptor = descriptor }

    public enum Kind: Sendable { case stream, datagram }

    /// Opens a non-blocking, close-on-exec socket of the address family of `family`.
    public static func open(_ kind: Kind, family: Int32) throws -> Socket {
        let type = (kind == .stream ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue))
            | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let descriptor = try retryingInterrupts("socket") { Glibc.socket(family, type, 0) }.get()
        return Socket(descriptor: descriptor)
    }

    // MARK: Options

    public func setOption(level: Int32, name: Int32, value: Int32, _ label: String) throws {
        var value = value
        _ = try retryingInterrupts("setsockopt(\(label))") {
            setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }.get()
    }

    public func setReuseAddress() throws {
        try setOption(level: SOL_SOCKET, name: SO_REUSEADDR, value: 1, "SO_REUSEADDR")
    }

    /// Lets several sockets (one per worker) bind the same address; the kernel spreads
    /// new connections or datagrams across them.
    public func setReusePort() throws {
        try setOption(level: SOL_SOCKET, name: SO_REUSEPORT, value: 1, "SO_REUSEPORT")
    }

    /// Lets the socket accept traffic for, or bind to, addresses that are not local
    /// (needs CAP_NET_ADMIN). Required on transparent listeners even with `bpf_sk_assign`.
    public func setTransparent(ipv6: Bool) throws {
        if ipv6 {
            try setOption(level: Int32(IPPROTO_IPV6), name: sluice_ipv6_transparent, value: 1, "IPV6_TRANSPARENT")
        } else {
            try setOption(level: Int32(IPPROTO_IP), name: sluice_ip_transparent, value: 1, "IP_TRANSPARENT")
        }
    }

    /// Asks the kernel to attach each datagram's original destination as a control message.
    public func setReceiveOriginalDestination(ipv6: Bool) throws {
        if ipv6 {
            try setOption(level: Int32(IPPROTO_IPV6), name: sluice_ipv6_recvorigdstaddr, value: 1, "IPV6_RECVORIGDSTADDR")
        } else {
            try setOption(level: Int32(IPPROTO_IP), name: sluice_ip_recvorigdstaddr, value: 1, "IP_RECVORIGDSTADDR")
        }
    }

    /// Sets the packet mark (`SO_MARK`, needs CAP_NET_ADMIN); the datapath lets marked
    /// packets of the proxy's own upstream connections pass without redirecting them again.
    public func setMark(_ mark: UInt32) throws {
        try setOption(level: SOL_SOCKET, name: SO_MARK, value: Int32(bitPattern: mark), "SO_MARK")
    }

    public func setNoDelay() throws {
        try setOption(level: Int32(IPPROTO_TCP), name: Int32(TCP_NODELAY), value: 1, "TCP_NODELAY")
    }

    /// Makes the next `close()` send RST instead of FIN (SO_LINGER with a zero timeout).
    public func setResetOnClose() {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }

    /// Reads and clears the pending socket error (`SO_ERROR`); 0 means none.
    public func pendingError() -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &value, &length) != 0 { return errno }
        return value
    }

    // MARK: Addresses

    public func bind(to address: SocketAddress) throws {
        _ = try retryingInterrupts("bind(\(address))") {
            address.withSockaddr { Glibc.bind(descriptor, $0, $1) }
        }.get()
    }

    /// Binds an upstream socket to the client's own address (`IP_TRANSPARENT`: the address
    /// need not be the node's), so the server sees the client. With `keepingPort` the
    /// client's port too (with `SO_REUSEADDR`, so connections of one client port to several
    /// servers may share it; a clash shows as `EADDRINUSE` here or `EADDRNOTAVAIL` at
    /// connect). Without, a stream socket takes its port at connect
    /// (`IP_BIND_ADDRESS_NO_PORT`: chosen for the 4-tuple, not reserved for the address alone).
    public func bindSource(_ client: SocketAddress, keepingPort: Bool, stream: Bool) throws {
        try setTransparent(ipv6: client.isIPv6)
        if keepingPort {
            try setReuseAddress()
            try bind(to: client)
            return
        }
        if stream {
            try setOption(level: Int32(IPPROTO_IP), name: sluice_ip_bind_address_no_port, value: 1, "IP_BIND_ADDRESS_NO_PORT")
        }
        try bind(to: client.withPort(0))
    }

    /// An integer socket option (`SO_TYPE`, `SO_ACCEPTCONN`, ...).
    public func option(level: Int32, name: Int32, _ label: String) throws -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try retryingInterrupts("getsockopt(\(label))") { getsockopt(descriptor, level, name, &value, &length) }.get()
        return value
    }

    /// Checks that a socket received from elsewhere (a hand-over) is of `kind`, bound to
    /// `address`, and for a stream socket listening; throws a description of the mismatch.
    public func verifyInherited(_ kind: Kind, boundTo address: SocketAddress) throws {
        let type = try option(level: SOL_SOCKET, name: SO_TYPE, "SO_TYPE")
        let expected = kind == .stream ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)
        guard type == expected else { throw InheritedSocketMismatch(problem: "socket type \(type), expected \(expected)") }
        if kind == .stream, try option(level: SOL_SOCKET, name: SO_ACCEPTCONN, "SO_ACCEPTCONN") == 0 {
            throw InheritedSocketMismatch(problem: "not listening")
        }
        let bound = try localAddress()
        guard bound == address else { throw InheritedSocketMismatch(problem: "bound to \(bound), expected \(address)") }
    }

    public func listen(backlog: Int32) throws {
        _ = try retryingInterrupts("listen") { Glibc.listen(descriptor, backlog) }.get()
    }

    /// The local address; for a connection accepted by a transparent listener, the
    /// client's original destination.
    public func localAddress() throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try retryingInterrupts("getsockname") {
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
            }
        }.get()
        return SocketAddress(storage: storage)
    }

    // MARK: Connections

    /// Accepts one connection as a non-blocking, close-on-exec socket; nil when none is pending.
    public func accept() throws -> (Socket, SocketAddress)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        while true {
            let descriptor = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sluice_accept_nonblocking(self.descriptor, $0, &length)
                }
            }
            if descriptor >= 0 { return (Socket(descriptor: descriptor), SocketAddress(storage: storage)) }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return nil
            // The peer gave up between SYN and accept: not our failure, try the next one.
            case ECONNABORTED, EPROTO: continue
            default: throw Errno.current("accept4")
            }
        }
    }

    public func connect(to address: SocketAddress) throws -> ConnectResult {
        while true {
            let result = address.withSockaddr { Glibc.connect(descriptor, $0, $1) }
            if result == 0 { return .connected }
            switch errno {
            case EINTR: continue
            case EINPROGRESS: return .inProgress
            default: throw Errno.current("connect(\(address))")
            }
        }
    }

    /// Reads what the socket holds, up to `buffer.count` bytes. `recv`, not `read`: a read
    /// goes through the file layer first (position lock, `vfs_read`, `sock_read_iter`),
    /// which cost about 1.5% of a proxied HTTP/2 request's CPU (perf, closed loop).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult {
        try retryingInterruptsNonBlocking("recv") {
            Glibc.recv(descriptor, buffer.baseAddress, buffer.count, 0)
        }.get()
    }

    public func write(from buffer: UnsafeRawBufferPointer) throws -> IOResult {
        try retryingInterruptsNonBlocking("write") {
            Glibc.send(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL))
        }.get()
    }

    public func send(_ buffer: UnsafeRawBufferPointer, to address: SocketAddress) throws -> IOResult {
        try retryingInterruptsNonBlocking("sendto(\(address))") {
            address.withSockaddr { Glibc.sendto(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), $0, $1) }
        }.get()
    }

    /// A received datagram: its length, sender, original destination (when the socket asked
    /// for it) and whether it was cut to fit the buffer.
    public struct Datagram: Sendable {
        public var length: Int
        public var source: SocketAddress
        public var originalDestination: SocketAddress?
        public var truncated: Bool
    }

    /// Receives one datagram with its original destination; nil when none is pending.
    public func receiveDatagram(into buffer: UnsafeMutableRawBufferPointer) throws -> Datagram? {
        var source = sockaddr_storage()
        var destination = sockaddr_storage()
        var truncated: Int32 = 0
        while true {
            let count = sluice_recv_with_original_destination(
                descriptor, buffer.baseAddress, buffer.count, &source, &destination, &truncated)
            if count >= 0 {
                return Datagram(length: count, source: SocketAddress(storage: source),
                                originalDestination: destination.ss_family == 0 ? nil : SocketAddress(storage: destination),
                                truncated: truncated != 0)
            }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return nil
            default: throw Errno.current("recvmsg")
            }
        }
    }

    /// Receives up to `buffer.slotCount` datagrams at once (recvmmsg), datagram `i` into
    /// slot `i` of `buffer`, with each one's sender and original destination when
    /// `withAddresses` (a transparent listener) and not otherwise (a connected socket: the
    /// peer is known). Returns how many were received, 0 when none was pending.
    public func receiveDatagrams(into buffer: DatagramReceiveBuffer, withAddresses: Bool) throws -> Int {
        let count = sluice_recv_batch(descriptor, buffer.bytes.baseAddress, buffer.slotLength, Int32(buffer.slotCount),
                                      buffer.lengths, buffer.truncatedFlags,
                                      withAddresses ? buffer.sources : nil, withAddresses ? buffer.destinations : nil)
        if count >= 0 { return Int(count) }
        switch errno {
        case EAGAIN, EWOULDBLOCK: return 0
        default: throw Errno.current("recvmmsg")
        }
    }

    /// Sends `datagrams` in as few calls as the kernel allows (sendmmsg), to `address`, or to
    /// the connected peer when nil. UDP may drop, and so does this, silently: the rest when
    /// the socket's buffer is full, and a datagram the kernel refuses (an error an ICMP
    /// message left on a connected socket). At most `SLUICE_DATAGRAM_BATCH` datagrams.
    public func sendDatagrams(_ datagrams: UnsafeBufferPointer<iovec>, to address: SocketAddress?) {
        guard let base = datagrams.baseAddress else { return }
        var start = 0
        while start < datagrams.count {
            let remaining = Int32(datagrams.count - start)
            let sent = if let address {
                address.withSockaddr { sluice_send_batch(descriptor, base + start, remaining, $0, $1) }
            } else {
                sluice_send_batch(descriptor, base + start, remaining, nil, 0)
            }
            if sent > 0 {
                start += Int(sent)
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                return
            } else {
                start += 1
            }
        }
    }

    public enum ShutdownDirection: Sendable { case write, read }

    /// Half-closes the connection: `.write` sends FIN and keeps reading possible.
    public func shutdown(_ direction: ShutdownDirection) {
        _ = Glibc.shutdown(descriptor, direction == .write ? Int32(SHUT_WR) : Int32(SHUT_RD))
    }

    public func close() {
        // close(2) must not be retried on EINTR on Linux: the descriptor is already gone.
        _ = Glibc.close(descriptor)
    }
}

/// A socket handed over that is not what its description said.
public struct InheritedSocketMismatch: Error, CustomStringConvertible {
    public var problem: String
    public var description: String { "handed-over socket: \(problem)" }
}
