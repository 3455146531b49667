import Testing
@testable import Proxy
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SyscallTests {
    @Test func wouldBlockIsAValueNotAnError() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        let left = Socket(descriptor: fds[0]), right = Socket(descriptor: fds[1])
        defer { left.close() }
        var buffer = [UInt8](repeating: 0, count: 16)
        let empty = try buffer.withUnsafeMutableBytes { try left.read(into: $0) }
        #expect(empty == .wouldBlock)
        let sent = try [UInt8]("hi".utf8).withUnsafeBytes { try right.write(from: $0) }
        #expect(sent == .processed(2))
        right.close()
        #expect(try buffer.withUnsafeMutableBytes { try left.read(into: $0) } == .processed(2))
        #expect(try buffer.withUnsafeMutableBytes { try left.read(into: $0) } == .processed(0), "end of stream reads 0")
    }

    @Test func errorsNameTheSyscallAndTheAddress() throws {
        let first = try Socket.open(.stream, family: AF_INET)
        defer { first.close() }
        try first.bind(to: SocketAddress("127.0.0.1:0")!)
        try first.listen(backlog: 1)
        let bound = try first.localAddress()
        let second = try Socket.open(.stream, family: AF_INET)
        defer { second.close() }
        do {
            try second.bind(to: bound)
            Issue.record("binding a listening port twice must fail")
        } catch let error as Errno {
            #expect(error.code == EADDRINUSE)
            #expect(error.syscall == "bind(\(bound))")
            #expect(error.description.contains("Address already in use"))
        }
    }

    @Test func writingToAResetPeerIsAConnectionReset() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        let left = Socket(descriptor: fds[0])
        Socket(descriptor: fds[1]).close()
        defer { left.close() }
        do {
            _ = try [UInt8]("x".utf8).withUnsafeBytes { try left.write(from: $0) }
            Issue.record("write to a closed peer must fail (and must not raise SIGPIPE)")
        } catch let error as Errno {
            #expect(error.isConnectionReset)
            #expect(error.syscall == "write")
        }
    }

    @Test func acceptOnAnEmptyListenerReturnsNil() throws {
        let listener = try Socket.open(.stream, family: AF_INET)
        defer { listener.close() }
        try listener.bind(to: SocketAddress("127.0.0.1:0")!)
        try listener.listen(backlog: 4)
        #expect(try listener.accept() == nil)
    }

    @Test func nonBlockingConnectReportsProgressThenTheRefusal() throws {
        // Find a port nobody listens on: bind, read the port, close.
        let probe = try Socket.open(.stream, family: AF_INET)
        try probe.bind(to: SocketAddress("127.0.0.1:0")!)
        let closedPort = try probe.localAddress()
        probe.close()
        let client = try Socket.open(.stream, family: AF_INET)
        defer { client.close() }
        do {
            let result = try client.connect(to: closedPort)
            if result == .inProgress {
                var poller = pollfd(fd: client.descriptor, events: Int16(POLLOUT), revents: 0)
                _ = poll(&poller, 1, 1000)
                #expect(client.pendingError() == ECONNREFUSED)
            }
        } catch let error as Errno {
            #expect(error.code == ECONNREFUSED)
            #expect(error.syscall.hasPrefix("connect("))
        }
    }
}

@Suite struct SocketAddressTests {
    @Test(arguments: [
        ("127.0.0.1:80", "127.0.0.1", UInt16(80), false),
        ("[::1]:8080", "::1", UInt16(8080), true),
        ("10.0.0.5:65535", "10.0.0.5", UInt16(65535), false),
        ("[fd00::1:2]:1", "fd00::1:2", UInt16(1), true),
    ])
    func parsesNumericAddresses(text: String, host: String, port: UInt16, ipv6: Bool) throws {
        let address = try #require(SocketAddress(text))
        #expect(address.host == host)
        #expect(address.port == port)
        #expect(address.isIPv6 == ipv6)
        #expect(address.description == text)
        #expect(SocketAddress(address.description) == address)
    }

    @Test(arguments: ["", "127.0.0.1", "127.0.0.1:", "127.0.0.1:70000", "localhost:80", "::1:80", "[::1]80", "1.2.3.4:-1", "[::1]:"])
    func rejectsAnythingElse(text: String) {
        #expect(SocketAddress(text) == nil)
    }

    @Test func hashingFollowsEquality() {
        let a = SocketAddress("10.1.2.3:53")!, b = SocketAddress("10.1.2.3:53")!, c = SocketAddress("10.1.2.3:54")!
        #expect(Set([a, b, c]).count == 2)
    }
}
