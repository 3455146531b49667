import Foundation
import Synchronization
import Testing
@testable import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// A private network namespace (`ip netns add`) whose loopback diverts one UDP port to a
/// transparent listener with nftables TPROXY, as the datapath does on a node: a client at
/// 127.0.0.2 sending to 127.0.0.1:`serverPort` reaches the listener at
/// 127.0.0.1:`listenerPort`, with `IP_ORIGDSTADDR` naming 127.0.0.1:`serverPort`.
///
/// Starts: `ip netns add/exec/delete` and `nft`. Needs root; see `isEnabled`.
final class TransparentLoopback: Sendable {
    /// Root-only tests run as root; under CI=true they run (and fail) regardless, because CI
    /// runs as root and a skip there would hide a break.
    static var isEnabled: Bool { getuid() == 0 || ProcessInfo.processInfo.environment["CI"] == "true" }

    static let client = SocketAddress("127.0.0.2:0")!
    private static let counter = Atomic<Int>(0)

    let name: String
    let listenerPort: UInt16
    let serverPort: UInt16

    private init(listenerPort: UInt16, serverPort: UInt16) throws {
        name = "sluice-udp-\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
        self.listenerPort = listenerPort
        self.serverPort = serverPort
        try Self.run("ip", "netns", "add", name)
        do {
            try Self.run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
            try Self.run("ip", "netns", "exec", name, "nft", "-f", "-", input: """
                table ip sluice_test {
                  chain prerouting {
                    type filter hook prerouting priority mangle; policy accept;
                    ip saddr 127.0.0.2 udp dport \(serverPort) tproxy to 127.0.0.1:\(listenerPort) accept
                  }
                }
                """)
        } catch {
            try? Self.run("ip", "netns", "delete", name)
            throw error
        }
    }

    /// Runs `body` with a fresh namespace and deletes the namespace afterwards, whatever
    /// `body` did (sockets still open in it keep it alive until they close; its name goes).
    static func with<T>(listenerPort: UInt16 = 15053, serverPort: UInt16 = 5353,
                        _ body: (TransparentLoopback) throws -> T) throws -> T {
        let namespace = try TransparentLoopback(listenerPort: listenerPort, serverPort: serverPort)
        defer { try? run("ip", "netns", "delete", namespace.name) }
        return try body(namespace)
    }

    var server: SocketAddress { SocketAddress(host: "127.0.0.1", port: serverPort)! }

    /// Runs `body` with the calling thread in the namespace: sockets it opens live there for
    /// good, whichever thread uses them later.
    func enter<T>(_ body: () throws -> T) throws -> T {
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        let target = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        defer { close(original); close(target) }
        guard original >= 0, target >= 0, Self.setns(target, Self.newNetworkNamespace) == 0 else {
            throw Errno.current("setns")
        }
        defer { precondition(Self.setns(original, Self.newNetworkNamespace) == 0, "cannot leave the test namespace") }
        return try body()
    }

    /// setns(2): Glibc declares it only with _GNU_SOURCE, which the Swift module lacks.
    private static let setns: @convention(c) (Int32, Int32) -> Int32 = {
        guard let symbol = dlsym(nil, "setns") else { fatalError("no setns in libc") }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
    }()
    private static let newNetworkNamespace: Int32 = 0x4000_0000 // CLONE_NEWNET

    struct CommandFailed: Error, CustomStringConvertible {
        var description: String
    }

    static func run(_ arguments: String..., input: String? = nil) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let stdin = Pipe()
        let stderr = Pipe()
        process.standardInput = stdin
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
        try stdin.fileHandleForWriting.close()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw CommandFailed(description: "\(arguments.joined(separator: " ")): \(message)")
        }
    }
}

/// A UDP server on the worker's loop that records every datagram that reached it and answers
/// "echo:" followed by the datagram. Bound to device `lo`, so the kernel prefers it over the
/// proxy's reply socket, which is bound (transparently) to the same address in the same
/// namespace — on a node the two live in different namespaces.
final class RecordingEchoServer: EventHandler {
    private let socket: Socket
    private var token: RegistrationToken?
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)
    private let received = Mutex<[String]>([])

    init(address: SocketAddress, loop: EventLoop) throws {
        socket = try Socket.open(.datagram, family: AF_INET)
        try socket.setReuseAddress()
        let device = "lo"
        guard setsockopt(socket.descriptor, SOL_SOCKET, SO_BINDTODEVICE, device, socklen_t(device.utf8.count)) == 0 else {
            throw Errno.current("setsockopt(SO_BINDTODEVICE)")
        }
        try socket.bind(to: address)
        token = try loop.registerForReading(socket.descriptor, handler: self, tag: 0)
    }

    deinit {
        socket.close()
        buffer.deallocate()
    }

    /// What reached the server, in order.
    var datagrams: [String] { received.withLock { $0 } }

    func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        while let datagram = try? socket.receiveDatagram(into: buffer) {
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: buffer[0..<datagram.length]), as: UTF8.self)
            received.withLock { $0.append(text) }
            _ = Array("echo:\(text)".utf8).withUnsafeBytes { try? socket.send($0, to: datagram.source) }
        }
    }

    func stop(loop: EventLoop) {
        if let token { loop.deregister(token) }
        token = nil
    }
}

/// A blocking UDP client at 127.0.0.2 inside the namespace.
final class LoopbackClient {
    let descriptor: Int32

    init(in namespace: TransparentLoopback) throws {
        descriptor = try namespace.enter {
            let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else { throw Errno.current("socket") }
            let bound = TransparentLoopback.client.withSockaddr { bind(descriptor, $0, $1) }
            guard bound == 0 else { throw Errno.current("bind") }
            return descriptor
        }
    }

    deinit { close(descriptor) }

    func send(_ text: String, to address: SocketAddress) {
        let sent = Array(text.utf8).withUnsafeBytes { bytes in
            address.withSockaddr { sendto(descriptor, bytes.baseAddress, bytes.count, 0, $0, $1) }
        }
        precondition(sent == text.utf8.count, "sendto failed")
    }

    /// The next datagram and its sender, or nil when none came within `timeout` seconds.
    func receive(timeout: Double = 3) -> (text: String, from: SocketAddress)? {
        var interval = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var source = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let count = buffer.withUnsafeMutableBytes { bytes in
            withUnsafeMutablePointer(to: &source) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(descriptor, bytes.baseAddress, bytes.count, 0, $0, &length)
                }
            }
        }
        guard count >= 0 else { return nil }
        return (String(decoding: buffer[0..<count], as: UTF8.self), SocketAddress(storage: source))
    }

    /// Sends `text` and waits for one answer.
    func exchange(_ text: String, with address: SocketAddress, timeout: Double = 3) -> String? {
        send(text, to: address)
        return receive(timeout: timeout)?.text
    }
}
