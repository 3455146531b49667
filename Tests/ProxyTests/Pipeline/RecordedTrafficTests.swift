import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// Recorded conversations judged as live (what `sluice replay` runs on the decoded capture).
@Suite struct RecordedTrafficTests {
    static func traffic(_ snapshot: PolicySnapshot) -> (RecordedTraffic, Collector) {
        let collector = Collector()
        let registry = SessionRegistry.standard(configuration: ProxyConfiguration(workers: 1, listeners: []))
        return (RecordedTraffic(policy: WorkerPolicy(holder: PolicySnapshotHolder(snapshot)), registry: registry,
                                reporter: collector), collector)
    }

    static func send(_ traffic: RecordedTraffic, _ id: Int, client: Bool, _ text: String) {
        Array(text.utf8).withUnsafeBytes { traffic.streamData(id, fromClient: client, $0) }
    }

    @Test func aRecordedHTTPConnectionIsJudgedRequestByRequestInRecordedOrder() throws {
        let (traffic, collector) = Self.traffic(try HTTPPolicySessionTests.snapshot())
        let outcome = traffic.streamOpened(1, client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        #expect(outcome == .judged(.http))
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        // Split anywhere, as segments come: the verdicts do not depend on it.
        Self.send(traffic, 1, client: true, "GET /api/a HT")
        Self.send(traffic, 1, client: true, "TP/1.1\r\nHost: b\r\n\r\n")
        Self.send(traffic, 1, client: false, ok)
        Self.send(traffic, 1, client: true, "DELETE /api/a HTTP/1.1\r\nHost: b\r\n\r\n")
        Self.send(traffic, 1, client: false, "HTTP/1.1 204 No Content\r\n\r\n")
        Self.send(traffic, 1, client: true, "GET /api/b HTTP/1.1\r\nHost: b\r\n\r\n")
        Self.send(traffic, 1, client: false, ok)
        traffic.streamEnded(1)
        #expect(AuditModeTests.verdicts(collector) == ["request FORWARDED", "response FORWARDED", "request DROPPED",
                                                       "response DROPPED", "request FORWARDED", "response FORWARDED"])
        let urls = collector.records.map { $0.serialized() }.filter { $0.contains(#""type":"REQUEST""#) }
        #expect(urls[1].contains(#""method":"DELETE""#) && urls[1].contains(#""verdict":"DROPPED""#))
        #expect(traffic.counters.judged == 1 && traffic.counters.endedBySession.isEmpty)
    }

    @Test func aConnectionTheL3L4PolicyDropsIsReportedAndNotParsed() throws {
        let (traffic, collector) = Self.traffic(try HTTPPolicySessionTests.snapshot())
        #expect(traffic.streamOpened(2, client: SocketAddress("192.0.2.9:40000")!, server: SocketAddress("10.0.0.2:8080")!)
                == .deniedAtLayer4)
        Self.send(traffic, 2, client: true, "GET /api/a HTTP/1.1\r\nHost: b\r\n\r\n")
        traffic.finish()
        let records = collector.records.map { $0.serialized() }
        #expect(records.count == 1 && records[0].contains(#""verdict":"DROPPED""#) && records[0].contains("POLICY_DENIED"))
        #expect(traffic.counters.deniedAtLayer4 == 1)
    }

    @Test func recordedDNSDatagramsAreJudgedByName() throws {
        let (traffic, collector) = Self.traffic(try DNSPolicySessionTests.snapshot())
        let client = SocketAddress("10.0.0.1:40000")!, resolver = SocketAddress("10.0.0.53:53")!
        let wire = DNSPolicySessionTests.self
        wire.query("api.stripe.com", id: 1).withUnsafeBytes { traffic.datagram(from: client, to: resolver, $0) }
        wire.query("evil.example.com", id: 2).withUnsafeBytes { traffic.datagram(from: client, to: resolver, $0) }
        wire.answer("evil.example.com", id: 2).withUnsafeBytes { traffic.datagram(from: resolver, to: client, $0) }
        wire.answer("api.stripe.com", id: 1).withUnsafeBytes { traffic.datagram(from: resolver, to: client, $0) }
        traffic.finish()
        #expect(AuditModeTests.verdicts(collector) == ["request FORWARDED", "request DROPPED", "response DROPPED",
                                                       "response FORWARDED"])
        #expect(traffic.counters.datagrams == 4 && traffic.counters.connections == 1)
    }

    @Test func recordedDNSOverTCPIsJudgedByName() throws {
        let (traffic, collector) = Self.traffic(try DNSPolicySessionTests.snapshot(transport: "TCP"))
        #expect(traffic.streamOpened(4, client: SocketAddress("10.0.0.1:40002")!, server: SocketAddress("10.0.0.53:53")!)
                == .judged(.dns))
        let wire = DNSPolicySessionTests.self
        func framed(_ message: [UInt8]) -> [UInt8] { [UInt8(message.count >> 8), UInt8(message.count & 0xff)] + message }
        // Two queries in one segment, their answers split across segments in another order.
        let queries = framed(wire.query("api.stripe.com", id: 1)) + framed(wire.query("evil.example.com", id: 2))
        queries.withUnsafeBytes { traffic.streamData(4, fromClient: true, $0) }
        let answers = framed(wire.answer("evil.example.com", id: 2)) + framed(wire.answer("api.stripe.com", id: 1))
        answers[..<7].withUnsafeBytes { traffic.streamData(4, fromClient: false, UnsafeRawBufferPointer($0)) }
        answers[7...].withUnsafeBytes { traffic.streamData(4, fromClient: false, UnsafeRawBufferPointer($0)) }
        traffic.streamEnded(4)
        #expect(AuditModeTests.verdicts(collector) == ["request FORWARDED", "request DROPPED", "response DROPPED",
                                                       "response FORWARDED"])
        #expect(traffic.counters.endedBySession.isEmpty)
    }

    @Test func unreadableTrafficOnAJudgedPortEndsThatConnectionOnly() throws {
        let (traffic, _) = Self.traffic(try HTTPPolicySessionTests.snapshot())
        traffic.streamOpened(3, client: SocketAddress("10.0.0.1:40001")!, server: SocketAddress("10.0.0.2:8080")!)
        Self.send(traffic, 3, client: true, "\u{16}\u{03}\u{01} not http at all\r\n\r\n")
        traffic.streamEnded(3)
        #expect(traffic.counters.endedBySession.values.reduce(0, +) == 1)
    }
}
