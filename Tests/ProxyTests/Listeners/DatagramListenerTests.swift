import Dispatch
import Foundation
import PolicyEngine
import Synchronization
import Testing
@testable import Proxy

/// A toy datagram protocol, registered under the `dns` kind: a datagram starting with "deny"
/// is answered "REFUSED" by the proxy and never reaches the server; one starting with "drop"
/// is dropped; every other one is forwarded, and the server's answer is upper-cased on its
/// way back. Each judged datagram is reported through the session's `L7FlowReporter`.
final class ToyDatagramSession: L7DatagramSession {
    private let context: SessionContext
    private let log: ToyLog

    init(context: SessionContext, log: ToyLog) {
        self.context = context
        self.log = log
        log.started.add(1, ordering: .relaxed)
    }

    func clientDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        let text = String(decoding: bytes, as: UTF8.self)
        if text.hasPrefix("deny") {
            report("DENIED", text)
            return .answer(Array("REFUSED".utf8))
        }
        if text.hasPrefix("drop") { return .drop(reason: "toy: dropped \(text)") }
        report("FORWARDED", text)
        return .forward
    }

    func serverDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        .forwardRewritten(Array(String(decoding: bytes, as: UTF8.self).uppercased().utf8))
    }

    func flowEnded() { log.ended.add(1, ordering: .relaxed) }

    private func report(_ verdict: String, _ text: String) {
        var record = JSONObject()
        record["verdict"] = .string(verdict)
        record["toy"] = .string(text)
        record["transport"] = .string(context.identities.transport == .udp ? "UDP" : "TCP")
        context.reporter?.report(record)
    }
}

/// How many toy sessions were made and ended.
final class ToyLog: Sendable {
    let started = Atomic<Int>(0)
    let ended = Atomic<Int>(0)
}

/// A real `Worker` with a transparent UDP listener on its own thread, inside a
/// `TransparentLoopback` namespace, with a `RecordingEchoServer` on the same loop.
final class RunningWorker {
    /// What the worker's thread holds: not the `RunningWorker`, so that dropping it (a test
    /// that throws half-way) stops the thread.
    private final class Thread: @unchecked Sendable {
        var worker: Worker!
        var server: RecordingEchoServer!
        var startError: Error?
        var sessions = SessionRegistry()
        let started = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
    }

    private let thread = Thread()
    private var stopped = false
    let flowLogPath = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-udp-\(UUID()).jsonl").path

    var worker: Worker { thread.worker }
    var server: RecordingEchoServer { thread.server }

    init(_ namespace: TransparentLoopback, configuration: ProxyConfiguration, policy: PolicySnapshotHolder?,
         sessions: SessionRegistry) throws {
        let flowLogPath = flowLogPath
        let state = thread
        state.sessions = sessions
        Foundation.Thread {
            do {
                try namespace.enter {
                    let flowLog = try FlowLog.open(FlowLogConfiguration(sink: .file(path: flowLogPath)))
                    let worker = try Worker(index: 0, configuration: configuration, flowLog: flowLog, policy: policy,
                                            sessions: state.sessions)
                    state.worker = worker
                    state.server = try RecordingEchoServer(address: namespace.server, loop: worker.loop)
                    state.started.signal()
                    // Flows open their sockets on this thread, so it stays in the namespace.
                    try worker.run()
                    state.server.stop(loop: worker.loop)
                    worker.stopNow()
                }
            } catch {
                state.startError = error
                state.started.signal()
            }
            state.finished.signal()
        }.start()
        state.started.wait()
        if let startError = state.startError {
            stopped = true
            throw startError
        }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: flowLogPath)
    }

    /// Stops the loop and ends every flow (each writes its flow record).
    func stop() {
        guard !stopped else { return }
        stopped = true
        thread.worker.loop.handle.execute { $0.stop() }
        thread.finished.wait()
    }

    /// Flow records written so far, one JSON object per line.
    var flowRecords: [String] {
        ((try? String(contentsOfFile: flowLogPath, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    static func configuration(udpListeners ports: [UInt16] = [15053]) -> ProxyConfiguration {
        var configuration = ProxyConfiguration(
            workers: 1,
            listeners: ports.enumerated().map { index, port in
                ListenerConfiguration(name: "udp\(index)", kind: .transparentUDP,
                                      address: SocketAddress(host: "127.0.0.1", port: port)!)
            })
        configuration.timeouts.udpIdle = 30_000_000_000
        return configuration
    }
}

/// The transparent UDP listener, its flows and the worker's choice per flow, with real
/// sockets: each test starts a private network namespace with nftables TPROXY on loopback
/// (`TransparentLoopback`), a real `Worker`, and a server that records what reached it.
@Suite(.enabled(if: TransparentLoopback.isEnabled, "needs root (network namespaces, nftables, IP_TRANSPARENT)"))
struct DatagramListenerTests {
    static let endpoints = """
        endpoints:
          - {ip: 127.0.0.2, namespace: lab, pod: client, labels: {app: client}}
          - {ip: 127.0.0.1, namespace: lab, pod: server, labels: {app: server}}
        """

    /// The client's egress to the server's UDP port, with `rules` (YAML) on it, or only to
    /// `port` (so 5353 is denied at L3/L4).
    static func snapshot(rules: String? = nil, port: Int = 5353) throws -> PolicySnapshot {
        let text = """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: client, namespace: lab}
            spec:
              endpointSelector: {matchLabels: {app: client}}
              egress:
                - toEndpoints: [{matchLabels: {app: server}}]
                  toPorts:
                    - ports: [{port: "\(port)", protocol: UDP}]
            """ + (rules.map { "\n          rules: \($0)" } ?? "")
        let loaded = PolicyLoader.load(text: text, file: "policy.yaml")
        #expect(loaded.errors.isEmpty, "\(loaded.errors)")
        return PolicySnapshot(policies: loaded.policies,
                              endpoints: try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml"))
    }

    static let dnsRules = #"{dns: [{matchPattern: "*"}]}"#

    static func toyRegistry(_ log: ToyLog) -> SessionRegistry {
        var registry = SessionRegistry()
        registry.register(.dns, datagram: { ToyDatagramSession(context: $0, log: log) })
        return registry
    }

    @Test func toyProtocolAnswersDropsAndRewritesThroughTheRealListener() throws {
        try TransparentLoopback.with { namespace in
            let log = ToyLog()
            let holder = PolicySnapshotHolder(try Self.snapshot(rules: Self.dnsRules))
            let running = try RunningWorker(namespace, configuration: RunningWorker.configuration(), policy: holder,
                                            sessions: Self.toyRegistry(log))
            let client = try LoopbackClient(in: namespace)

            client.send("deny me", to: namespace.server)
            let refused = try #require(client.receive())
            #expect(refused.text == "REFUSED")
            #expect(refused.from == namespace.server, "the answer comes from the address the client asked")
            #expect(client.exchange("hello", with: namespace.server) == "ECHO:HELLO")
            #expect(client.exchange("drop this", with: namespace.server, timeout: 0.3) == nil)
            #expect(client.exchange("hello again", with: namespace.server) == "ECHO:HELLO AGAIN")

            running.stop()
            #expect(running.server.datagrams == ["hello", "hello again"], "denied and dropped datagrams never reach the server")
            #expect(running.worker.counters.datagramsDropped == 1)
            #expect(log.started.load(ordering: .relaxed) == 1 && log.ended.load(ordering: .relaxed) == 1)
            let records = running.flowRecords
            #expect(records.filter { $0.contains(#""toy":"#) } == [
                #"{"verdict":"DENIED","toy":"deny me","transport":"UDP"}"#,
                #"{"verdict":"FORWARDED","toy":"hello","transport":"UDP"}"#,
                #"{"verdict":"FORWARDED","toy":"hello again","transport":"UDP"}"#,
            ])
            #expect(records.contains { $0.contains(#""drop_reason_desc":"toy: dropped drop this""#) })
            #expect(records.contains { $0.contains(#""datagrams_from_client":4,"datagrams_from_server":2"#) },
                    "one flow for the whole exchange: \(records)")
        }
    }

    @Test func aPolicyChangeAppliesToTheNextDatagramOfAnExistingFlow() throws {
        try TransparentLoopback.with { namespace in
            let log = ToyLog()
            let holder = PolicySnapshotHolder(try Self.snapshot())
            let running = try RunningWorker(namespace, configuration: RunningWorker.configuration(), policy: holder,
                                            sessions: Self.toyRegistry(log))
            let client = try LoopbackClient(in: namespace)

            // No L7 rules: relayed as it is.
            #expect(client.exchange("deny 1", with: namespace.server) == "echo:deny 1")
            // DNS rules now: the same flow's next datagram meets the toy session.
            holder.replace(with: try Self.snapshot(rules: Self.dnsRules))
            #expect(client.exchange("deny 2", with: namespace.server) == "REFUSED")
            #expect(client.exchange("hi", with: namespace.server) == "ECHO:HI")
            // A change that keeps DNS rules keeps the session.
            holder.replace(with: try Self.snapshot(rules: Self.dnsRules))
            #expect(client.exchange("hi again", with: namespace.server) == "ECHO:HI AGAIN")
            #expect(log.started.load(ordering: .relaxed) == 1)
            // The rules are gone: relayed again, and the session has ended.
            holder.replace(with: try Self.snapshot())
            #expect(client.exchange("deny 3", with: namespace.server) == "echo:deny 3")
            #expect(log.ended.load(ordering: .relaxed) == 1)
            // Denied at L3/L4 now: dropped, and the flow ends.
            holder.replace(with: try Self.snapshot(port: 9999))
            #expect(client.exchange("deny 4", with: namespace.server, timeout: 0.3) == nil)

            running.stop()
            #expect(running.server.datagrams == ["deny 1", "hi", "hi again", "deny 3"])
            #expect(running.worker.counters.datagramsDropped == 1)
            let records = running.flowRecords
            #expect(records.contains { $0.contains(#""drop_reason_desc":"denied at L3/L4 by policy"#) }, "\(records)")
            // The flow ended at the denial, having seen six datagrams from the client.
            #expect(records.filter { $0.contains(#""datagrams_from_client""#) }.count == 1)
            #expect(records.contains { $0.contains(#""datagrams_from_client":6,"datagrams_from_server":4"#) }, "\(records)")
        }
    }

    @Test func aKindWithNoDatagramSessionStaysDeniedWithTheSameReason() throws {
        try TransparentLoopback.with { namespace in
            let configuration = RunningWorker.configuration()
            let holder = PolicySnapshotHolder(try Self.snapshot(rules: Self.dnsRules))
            // A registry without the DNS session: the kind is known, nothing judges it.
            let running = try RunningWorker(namespace, configuration: configuration, policy: holder,
                                            sessions: SessionRegistry())
            let client = try LoopbackClient(in: namespace)

            #expect(client.exchange("query", with: namespace.server, timeout: 0.3) == nil)
            running.stop()
            #expect(running.server.datagrams.isEmpty)
            #expect(running.worker.counters.datagramsDropped == 1)
            #expect(running.flowRecords.contains {
                $0.contains(#""drop_reason_desc":"DNS rules on UDP port 5353 are not enforced by this sluice yet: denied""#)
            })
        }
    }

    @Test func everyUDPListenerOfAWorkerSharesOneReceiveBuffer() throws {
        try TransparentLoopback.with { namespace in
            var configuration = RunningWorker.configuration(udpListeners: [15053, 15054, 15055])
            configuration.limits.maxDatagramBytes = 1_200
            let running = try RunningWorker(namespace, configuration: configuration, policy: nil, sessions: SessionRegistry())
            running.stop()
            let buffers = running.worker.datagramReceiveBuffers
            #expect(buffers.count == 6, "three listeners on 127.0.0.1, each with its [::1] twin for IPv6 flows")
            #expect(buffers.allSatisfy { $0 === buffers[0] })
            #expect(buffers[0].slotLength == 1_201, "one byte more than the limit, to see truncation")
            #expect(buffers[0].bytes.count == 1_201 * DatagramReceiveBuffer.slotCount, "a slot per datagram of a batch")
        }
    }

    @Test func relayedFlowsWorkWithoutAPolicy() throws {
        try TransparentLoopback.with { namespace in
            let running = try RunningWorker(namespace, configuration: RunningWorker.configuration(), policy: nil,
                                            sessions: SessionRegistry())
            let client = try LoopbackClient(in: namespace)
            let answer = try #require(client.exchange("ping", with: namespace.server))
            #expect(answer == "echo:ping")
            running.stop()
            #expect(running.server.datagrams == ["ping"])
        }
    }
}
