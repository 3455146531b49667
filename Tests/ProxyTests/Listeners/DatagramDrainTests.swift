import Foundation
import PolicyEngine
import Synchronization
import Testing
@testable import Proxy

/// A session that owes the client an answer from the moment it forwards a datagram: the
/// server's echo is dropped, and only its clock answers ("LATE") after `wait` nanoseconds.
/// Stands for a DNS query the resolver has not answered yet.
final class OwingDatagramSession: L7DatagramSession {
    private let wait: UInt64
    private var owedSince: UInt64?
    private let log: ToyLog

    init(wait: UInt64, log: ToyLog) {
        self.wait = wait
        self.log = log
        log.started.add(1, ordering: .relaxed)
    }

    func clientDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        owedSince = MonotonicClock.now()
        return .forward
    }

    func serverDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict { .drop(reason: "not yet") }

    var nextDeadline: UInt64? { owedSince.map { $0 + wait } }

    func timedOut(now: UInt64) -> [[UInt8]] {
        guard let since = owedSince, now >= since + wait else { return [] }
        owedSince = nil
        return [Array("LATE".utf8)]
    }

    func flowEnded() { log.ended.add(1, ordering: .relaxed) }
}

/// A draining worker (SIGTERM, or a hand-over to a successor) stops reading its UDP
/// listener at once but keeps each flow until it owes nothing: the answer to a query in
/// flight still reaches the client. Real sockets in a private namespace, as
/// `DatagramListenerTests`.
@Suite(.enabled(if: TransparentLoopback.isEnabled, "needs root (network namespaces, nftables, IP_TRANSPARENT)"))
struct DatagramDrainTests {
    @Test func aFlowThatOwesAnAnswerOutlivesTheListenerUntilItIsAnswered() throws {
        try TransparentLoopback.with { namespace in
            let log = ToyLog()
            var registry = SessionRegistry()
            registry.register(.dns, datagram: { _ in OwingDatagramSession(wait: 400_000_000, log: log) })
            let holder = PolicySnapshotHolder(try DatagramListenerTests.snapshot(rules: DatagramListenerTests.dnsRules))
            let running = try RunningWorker(namespace, configuration: RunningWorker.configuration(), policy: holder,
                                            sessions: registry)
            let client = try LoopbackClient(in: namespace)
            client.send("query", to: namespace.server)
            // The server got it: the flow now owes the client its answer.
            let deadline = Date().addingTimeInterval(3)
            while running.server.datagrams.isEmpty && Date() < deadline { usleep(10_000) }
            #expect(running.server.datagrams == ["query"])
            nonisolated(unsafe) let worker = running.worker
            let drainStarted = Date()
            worker.loop.handle.execute { _ in worker.beginDrain(deadline: 5_000_000_000) }
            let answer = client.receive(timeout: 3)
            #expect(answer?.text == "LATE", "the flow outlived its listener and answered")
            #expect(Date().timeIntervalSince(drainStarted) < 2, "answered by the session's clock, not the drain deadline")
            // Owing nothing, the flow ended, and with it the drain (the deadline is 5 s away).
            let ended = Date().addingTimeInterval(2)
            while log.ended.load(ordering: .relaxed) == 0 && Date() < ended { usleep(10_000) }
            #expect(log.ended.load(ordering: .relaxed) == 1)
            running.stop()
        }
    }
}
