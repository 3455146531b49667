import Dispatch
import Foundation
import L7Parsers
import PolicyEngine
import Synchronization
import Testing
@testable import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// A toy line protocol, registered under the `kafka` kind in a registry of its own (in place of Sluice's Kafka session):
/// each request is one line; a line starting with "deny" is answered "DENIED" by the proxy
/// and dropped, every other line goes to the server whole. Responses pass as they come. Lines
/// up to 2 MiB are allowed: a line must be seen whole before it is judged.
final class ToyLineSession: L7Session {
    private let reporter: L7FlowReporter?
    private var dropNext = 0

    init(context: SessionContext) { reporter = context.reporter }

    var maximumMessageBytes: Int { 2 << 20 }

    func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        guard direction == .request else { return bytes.isEmpty ? .needMore(minimumBytes: 1) : .pass(bytes.count) }
        if dropNext > 0 {
            defer { dropNext = 0 }
            return .drop(dropNext)
        }
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return .needMore(minimumBytes: 1) }
        let line = newline + 1
        var record = JSONObject()
        if bytes.starts(with: "deny".utf8) {
            dropNext = line
            record["verdict"] = .string("DROPPED")
            reporter?.report(record)
            return .reply(Array("DENIED\n".utf8))
        }
        record["verdict"] = .string("FORWARDED")
        reporter?.report(record)
        return .pass(line)
    }

    func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? { nil }
    func incompleteMessageTimedOut() -> [UInt8]? { Array("TIMEOUT\n".utf8) }
    func upstreamFailed(reason: String) -> [UInt8]? { nil }
    var isAwaitingResponse: Bool { false }
    func responseTimedOut() -> [UInt8]? { nil }
    var isIdle: Bool { true }
}

/// A blocking loopback TCP server on its own thread: records every byte it receives and
/// answers each line "ok:<line>".
final class LineEchoServer: @unchecked Sendable {
    let port: UInt16
    private let descriptor: Int32
    private let state = Mutex<(received: [UInt8], connections: Int)>(([], 0))

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.descriptor = descriptor
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var one: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(descriptor, 16) == 0 else { throw Errno(code: errno, syscall: "bind") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        port = UInt16(bigEndian: address.sin_port)
        let listening = descriptor
        Thread { [self] in
            while true {
                let connection = accept(listening, nil, nil)
                guard connection >= 0 else { return }
                state.withLock { $0.connections += 1 }
                Thread { [self] in serve(connection) }.start()
            }
        }.start()
    }

    private func serve(_ connection: Int32) {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            state.withLock { $0.received += chunk[0..<count] }
            pending += chunk[0..<count]
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[...newline])
                pending.removeFirst(line.count)
                let answer = Array("ok:".utf8) + (line.count > 64 ? Array("\(line.count - 1) bytes\n".utf8) : line)
                _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
        }
        close(connection)
    }

    var received: [UInt8] { state.withLock { $0.received } }
    var connections: Int { state.withLock { $0.connections } }

    func stop() {
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
    }
}

/// A blocking client socket with a receive timeout.
struct LineClient {
    let descriptor: Int32

    init(port: UInt16) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = port.bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw Errno(code: errno, syscall: "connect") }
    }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { return }
            offset += sent
        }
    }

    /// Reads until `expected` bytes came, the peer closed or reset (`ended`), or 5 s passed.
    func receive(_ expected: Int) -> (bytes: [UInt8], ended: Bool) {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < expected {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count < 0 { return (bytes, errno == ECONNRESET) }
            if count == 0 { return (bytes, true) }
            bytes += chunk[0..<count]
        }
        return (bytes, false)
    }

    func close() { Glibc.close(descriptor) }
}

/// The protocol seam end to end: a protocol registered for an L7 kind runs through the real
/// worker, relay and driver on loopback sockets; the same kind unregistered is refused.
@Suite struct ProtocolSeamTests {
    static func policy(port: UInt16) -> String {
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: backend, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
            - fromEntities: [all]
              toPorts:
                - ports: [{port: "\(port)", protocol: TCP}]
                  rules:
                    kafka:
                      - {role: produce, topic: orders}
        """
    }

    static func freePort() -> UInt16 {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(probe, pointer, length)
                return getsockname(probe, pointer, &length)
            }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Runs a one-worker proxy in front of `backend` with the Kafka-rules policy and
    /// `sessions`, calls `body` with the listening port, then stops it.
    static func withProxy(backend: LineEchoServer, sessions: SessionRegistry,
                          _ body: (UInt16) throws -> Void) throws {
        let loaded = PolicyLoader.load(text: policy(port: backend.port), file: "policy.yaml")
        #expect(loaded.errors.isEmpty)
        let endpoints = try EndpointDirectory.load(
            text: "endpoints:\n  - {ip: 127.0.0.1, namespace: shop, pod: backend, labels: {app: backend}}\n",
            file: "endpoints.yaml")
        let holder = PolicySnapshotHolder(PolicySnapshot(policies: loaded.policies, endpoints: endpoints))
        let port = freePort()
        let configuration = ProxyConfiguration(
            workers: 1,
            listeners: [ListenerConfiguration(name: "toy", kind: .explicit(upstream: SocketAddress(host: "127.0.0.1", port: backend.port)!),
                                              address: SocketAddress(host: "127.0.0.1", port: port)!)],
            policy: PolicySourceConfiguration(paths: ["policy.yaml"], endpoints: "endpoints.yaml"))
        let server = ProxyServer(configuration: configuration, flowLog: .disabled(), policy: holder, sessions: sessions)
        try server.start()
        defer {
            server.stopNow()
            server.join()
        }
        try body(port)
    }

    @Test func aKindWithoutARegisteredSessionIsRefused() throws {
        let backend = try LineEchoServer()
        defer { backend.stop() }
        try Self.withProxy(backend: backend, sessions: SessionRegistry.standard(configuration: .init(workers: 1, listeners: []))) { port in
            let client = try LineClient(port: port)
            defer { client.close() }
            client.send(Array("hello\n".utf8))
            let answer = client.receive(1)
            // The reset may reach the client before its send, which then takes the error: the
            // read sees the end of the connection rather than the reset itself.
            #expect(answer.bytes.isEmpty && answer.ended, "refused, nothing relayed")
        }
        #expect(backend.connections == 0 && backend.received.isEmpty)
    }

    @Test func aRegisteredToyProtocolJudgesEveryLineThroughTheRealDriver() throws {
        let backend = try LineEchoServer()
        defer { backend.stop() }
        var sessions = SessionRegistry()
        sessions.register(.kafka, stream: { ToyLineSession(context: $0) })
        let large = Array(repeating: UInt8(ascii: "z"), count: 1 << 20) + [UInt8(ascii: "\n")]
        try Self.withProxy(backend: backend, sessions: sessions) { port in
            let client = try LineClient(port: port)
            defer { client.close() }
            // One line at a time: the toy answers a denial at once, not in response order.
            for (line, expected) in [("hello\n", "ok:hello\n"), ("deny this\n", "DENIED\n"), ("again\n", "ok:again\n")] {
                client.send(Array(line.utf8))
                #expect(String(decoding: client.receive(expected.utf8.count).bytes, as: UTF8.self) == expected)
            }
            // A 1 MiB line, held whole before it is judged (16 blocks of 64 KiB), reaches the
            // server in one piece.
            client.send(large)
            let big = client.receive("ok:1048576 bytes\n".utf8.count)
            #expect(String(decoding: big.bytes, as: UTF8.self) == "ok:1048576 bytes\n")
        }
        // Compared as one Bool: on a mismatch, `#expect` on the arrays themselves would diff a
        // megabyte element by element, for longer than the whole run takes.
        let received = backend.received
        let expected = Array("hello\nagain\n".utf8) + large
        let same = received == expected
        #expect(same, "the denied line never reached the server: got \(received.count) bytes, expected \(expected.count); first 40: \(received.prefix(40))")
    }
}
