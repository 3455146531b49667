import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// Audit mode (`SessionContext.audit`, for replaying recorded traffic): every message is
/// judged and reported as in the live proxy, and relayed as it was, so that a recorded
/// conversation stays in step with what its server answered.
@Suite struct AuditModeTests {
    final class RecordingLearner: FQDNLearning, @unchecked Sendable {
        var answers: [LearnedAnswer] = []
        func learn(_ answer: LearnedAnswer) { answers.append(answer) }
        func names(learnedBy endpoint: IPAddress, for address: IPAddress) -> [String] { [] }
    }

    static func verdicts(_ collector: Collector) -> [String] {
        collector.records.compactMap { record in
            let text = record.serialized()
            let type = text.contains(#""type":"REQUEST""#) ? "request" : "response"
            guard let range = text.range(of: #""verdict":""#) else { return nil }
            return type + " " + text[range.upperBound...].prefix { $0 != "\"" }
        }
    }

    @Test func httpDenialsAreReportedAndTheRecordedConversationGoesOn() throws {
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(try HTTPPolicySessionTests.snapshot()))
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        let collector = Collector()
        let registry = SessionRegistry.standard(configuration: ProxyConfiguration(workers: 1, listeners: []))
        let session = try #require(registry.streamSession(.http, context: SessionContext(
            identities: identities, policy: policy, reporter: collector, audit: true)))
        var connection = MemoryConnection(session: session)
        let requests = "GET /api/a HTTP/1.1\r\nHost: b\r\n\r\n" + "POST /admin HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi"
            + "GET /api/c HTTP/1.1\r\nHost: b\r\n\r\n"
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        connection.clientSends(Array(requests.utf8))
        for _ in 0..<3 { connection.serverSends(Array(response.utf8)) }
        #expect(String(decoding: connection.deliveredToServer, as: UTF8.self) == requests, "relayed as recorded")
        #expect(String(decoding: connection.deliveredToClient, as: UTF8.self) == String(repeating: response, count: 3),
                "no 403: the recorded answers follow")
        // Pipelined: all three requests are judged before the first response arrives.
        #expect(Self.verdicts(collector) == ["request FORWARDED", "request DROPPED", "request FORWARDED",
                                             "response FORWARDED", "response DROPPED", "response FORWARDED"])
        #expect(connection.closedReason == nil)
    }

    @Test func dnsDenialsAreReportedTheirAnswersTeachNothing() throws {
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(try DNSPolicySessionTests.snapshot()))
        var identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.53:53")!)
        identities.transport = .udp
        let collector = Collector()
        let learner = RecordingLearner()
        let registry = SessionRegistry.standard(configuration: ProxyConfiguration(workers: 1, listeners: []), learner: learner)
        let session = try #require(registry.datagramSession(.dns, context: SessionContext(
            identities: identities, policy: policy, reporter: collector, audit: true)))
        let wire = DNSPolicySessionTests.self
        #expect(wire.query("evil.example.com", id: 1).withUnsafeBytes { session.clientDatagram($0) } == .forward)
        #expect(wire.answer("evil.example.com", id: 1).withUnsafeBytes { session.serverDatagram($0) } == .forward)
        #expect(wire.query("api.stripe.com", id: 2).withUnsafeBytes { session.clientDatagram($0) } == .forward)
        #expect(wire.answer("api.stripe.com", id: 2).withUnsafeBytes { session.serverDatagram($0) } == .forward)
        #expect(Self.verdicts(collector) == ["request DROPPED", "response DROPPED", "request FORWARDED", "response FORWARDED"])
        #expect(learner.answers.map(\.names) == [["api.stripe.com"]], "only the allowed answer teaches an address")
    }

    @Test func theLiveProxyIsNotInAuditMode() throws {
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(try HTTPPolicySessionTests.snapshot()))
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        #expect(SessionContext(identities: identities, policy: policy, reporter: nil).audit == false)
    }
}
