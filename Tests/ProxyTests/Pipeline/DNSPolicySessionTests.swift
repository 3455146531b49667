import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// The DNS session without sockets: datagrams in, verdicts and flow records out, under a real
/// compiled policy.
@Suite struct DNSPolicySessionTests {
    static func policy(names: String, transport: String = "UDP") -> String {
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: dns-egress, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: frontend}}
          egress:
            - toEndpoints: [{matchLabels: {app: resolver, "k8s:io.kubernetes.pod.namespace": kube-system}}]
              toPorts:
                - ports: [{port: "53", protocol: \(transport)}]
                  rules:
                    dns:
        \(names)
        """
    }
    static let allowList = """
                          - {matchPattern: "*.svc.cluster.local"}
                          - {matchName: "api.stripe.com"}
        """
    static let endpoints = """
        endpoints:
          - {ip: 10.0.0.1, namespace: shop, pod: frontend, labels: {app: frontend}}
          - {ip: 10.0.0.53, namespace: kube-system, pod: resolver, labels: {app: resolver}}
        """

    static func snapshot(_ names: String = allowList, transport: String = "UDP") throws -> PolicySnapshot {
        let loaded = PolicyLoader.load(text: policy(names: names, transport: transport), file: "policy.yaml")
        #expect(loaded.errors.isEmpty, "\(loaded.errors)")
        return PolicySnapshot(policies: loaded.policies,
                              endpoints: try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml"))
    }

    static func session(_ holder: PolicySnapshotHolder,
                        clock: @escaping () -> UInt64 = MonotonicClock.now) -> (DNSPolicySession, Collector) {
        let policy = WorkerPolicy(holder: holder)
        var identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.53:53")!)
        identities.transport = .udp
        let collector = Collector()
        return (DNSPolicySession(context: SessionContext(identities: identities, policy: policy, reporter: collector),
                                 clock: clock), collector)
    }

    static func name(_ text: String) -> [UInt8] {
        text.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
    }

    static func query(_ text: String, id: UInt16 = 0xbeef, type: UInt16 = 1) -> [UInt8] {
        [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + name(text) + [0, UInt8(type), 0, 1]
    }

    static func answer(_ text: String, id: UInt16 = 0xbeef, address: [UInt8] = [192, 0, 2, 7], ttl: UInt8 = 60) -> [UInt8] {
        [UInt8(id >> 8), UInt8(id & 0xff), 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0] + name(text) + [0, 1, 0, 1]
            + [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, ttl, 0, 4] + address
    }

    static func call(_ session: DNSPolicySession, client bytes: [UInt8]) -> DatagramVerdict {
        bytes.withUnsafeBytes { session.clientDatagram($0) }
    }

    static func call(_ session: DNSPolicySession, server bytes: [UInt8]) -> DatagramVerdict {
        bytes.withUnsafeBytes { session.serverDatagram($0) }
    }

    @Test func anAllowedQueryIsRelayedAndItsAnswerReported() throws {
        let (session, collector) = Self.session(PolicySnapshotHolder(try Self.snapshot()))
        #expect(Self.call(session, client: Self.query("API.Stripe.com")) == .forward)
        #expect(Self.call(session, client: Self.query("db.svc.cluster.local", id: 7)) == .forward)
        #expect(Self.call(session, server: Self.answer("api.stripe.com")) == .forward, "the answer's name case may differ")
        let records = collector.records.map { $0.serialized() }
        #expect(records.count == 3)
        #expect(records[0].contains(#""verdict":"FORWARDED""#) && records[0].contains(#""query":"API.Stripe.com.""#))
        #expect(records[0].contains(#""egress_allowed_by":[{"namespace":"shop","name":"dns-egress"}]"#))
        #expect(records[2].contains(#""ips":["192.0.2.7"]"#) && records[2].contains(#""ttl":60"#))
        #expect(records[2].contains(#""l4":{"UDP""#))
    }

    @Test func aDeniedQueryIsAnsweredRefusedAndNeverRelayed() throws {
        let (session, collector) = Self.session(PolicySnapshotHolder(try Self.snapshot()))
        let query = Self.query("evil.example.com")
        guard case .answer(let answer) = Self.call(session, client: query) else {
            Issue.record("a denied query must be answered by the proxy")
            return
        }
        let parsed = try answer.withUnsafeBytes { bytes in try DNSMessage.parse(bytes) }
        #expect(parsed.header.id == 0xbeef && parsed.header.isResponse && parsed.header.rcode == DNSAnswers.refused)
        #expect(answer.withUnsafeBytes { try? DNSWireName.text($0, at: parsed.questions[0].name) } == "evil.example.com.")
        #expect(collector.records.first?.serialized().contains(#""verdict":"DROPPED""#) == true)
        #expect(session.deniedCount == 1 && session.allowedCount == 0)
    }

    @Test func theStandardRegistryAnswersDenialsAsConfigured() throws {
        var configuration = ProxyConfiguration(workers: 1, listeners: [])
        configuration.dns.deniedAnswer = .nameError
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(try Self.snapshot()))
        var identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.53:53")!)
        identities.transport = .udp
        let session = try #require(SessionRegistry.standard(configuration: configuration).datagramSession(
            .dns, context: SessionContext(identities: identities, policy: policy, reporter: nil)))
        guard case .answer(let answer) = Self.query("evil.example.com").withUnsafeBytes({ session.clientDatagram($0) }) else {
            Issue.record("a denied query must be answered")
            return
        }
        #expect(answer[3] & 0x0f == DNSAnswers.nameError)
    }

    /// Names a resolver reads differently from their text cannot pass for an allowed one: a
    /// label holding a dot byte ("api.stripe" + "com"), a NUL inside a label, a trailing
    /// extra label. Each is judged by its escaped text and denied.
    static let lookalikes: [[UInt8]] = [
        Array("\u{0a}api.stripe\u{03}com\u{00}".utf8),
        Array("\u{03}api\u{07}stripe\u{00}\u{03}com\u{00}".utf8),
        Array("\u{03}api\u{06}stripe\u{03}com\u{01}x\u{00}".utf8),
    ]

    @Test(arguments: lookalikes)
    func lookalikeNamesAreDenied(_ wireName: [UInt8]) throws {
        let (session, _) = Self.session(PolicySnapshotHolder(try Self.snapshot()))
        let query: [UInt8] = [0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + wireName + [0, 1, 0, 1]
        guard case .answer(let answer) = Self.call(session, client: query) else {
            Issue.record("a lookalike of an allowed name must not be relayed")
            return
        }
        #expect(answer[3] & 0x0f == DNSAnswers.refused)
    }

    @Test func onlyAnswersToOutstandingQueriesAreRelayed() throws {
        let (session, _) = Self.session(PolicySnapshotHolder(try Self.snapshot()))
        #expect(Self.call(session, server: Self.answer("api.stripe.com")) != .forward, "nothing was asked")
        #expect(Self.call(session, client: Self.query("api.stripe.com")) == .forward)
        #expect(Self.call(session, server: Self.answer("api.stripe.com", id: 0xdead)) != .forward, "another ID")
        #expect(Self.call(session, server: Self.answer("web.stripe.com")) != .forward, "another question")
        #expect(Self.call(session, server: Self.answer("api.stripe.com")) == .forward)
        #expect(Self.call(session, server: Self.answer("api.stripe.com")) != .forward, "answered once only")
    }

    @Test func unreadableQueriesGetFormerrOrAreDropped() throws {
        let (session, _) = Self.session(PolicySnapshotHolder(try Self.snapshot()))
        var loop = Self.query("api.stripe.com")
        loop.replaceSubrange(12..<13, with: [0xc0, 12])   // the name points at itself
        guard case .answer(let answer) = Self.call(session, client: loop) else {
            Issue.record("a query with a readable header gets FORMERR")
            return
        }
        #expect(answer[0] == 0xbe && answer[1] == 0xef && answer[3] & 0x0f == DNSAnswers.formatError)
        guard case .drop = Self.call(session, client: [1, 2, 3]) else {
            Issue.record("less than a header is dropped")
            return
        }
    }

    @Test func aPolicyChangeAppliesToTheNextQuery() throws {
        let holder = PolicySnapshotHolder(try Self.snapshot())
        let (session, _) = Self.session(holder)
        #expect(Self.call(session, client: Self.query("api.stripe.com")) == .forward)
        holder.replace(with: try Self.snapshot("""
                          - {matchName: "only.example.com"}
        """))
        guard case .answer = Self.call(session, client: Self.query("api.stripe.com", id: 2)) else {
            Issue.record("the new policy no longer allows the name")
            return
        }
        #expect(Self.call(session, client: Self.query("only.example.com", id: 3)) == .forward)
    }

    /// A truncated answer (TC) is relayed as the resolver sent it, so the client retries
    /// over TCP.
    @Test func aTruncatedAnswerIsRelayedUnchanged() throws {
        let (session, _) = Self.session(PolicySnapshotHolder(try Self.snapshot()))
        #expect(Self.call(session, client: Self.query("api.stripe.com")) == .forward)
        var truncated = Self.answer("api.stripe.com")
        truncated[2] |= 0x02   // TC
        #expect(Self.call(session, server: truncated) == .forward, "relayed as it is (no rewritten bytes)")
    }

    /// The resolver stays silent: at `responseTimeout` after the query the client gets
    /// SERVFAIL (same ID, the question as it asked it) and the query is forgotten, so a late
    /// answer is dropped.
    @Test func aSilentResolverGetsTheClientServfail() throws {
        let clock = FakeClock()
        let (session, collector) = Self.session(PolicySnapshotHolder(try Self.snapshot()), clock: { clock.now })
        #expect(session.nextDeadline == nil)
        #expect(Self.call(session, client: Self.query("API.stripe.com", id: 1)) == .forward)
        clock.now = 2_000_000_000
        #expect(Self.call(session, client: Self.query("db.svc.cluster.local", id: 2)) == .forward)
        #expect(session.nextDeadline == 5_000_000_000, "the oldest query's deadline (5 s by default)")
        #expect(session.timedOut(now: 4_999_999_999).isEmpty)
        let first = session.timedOut(now: 5_000_000_000)
        #expect(first.count == 1)
        let answer = try #require(first.first)
        let parsed = try answer.withUnsafeBytes { try DNSMessage.parse($0) }
        #expect(parsed.header.id == 1 && parsed.header.isResponse && parsed.header.rcode == DNSAnswers.serverFailure)
        #expect(answer.withUnsafeBytes { try? DNSWireName.text($0, at: parsed.questions[0].name) } == "API.stripe.com.")
        #expect(session.nextDeadline == 7_000_000_000)
        guard case .drop = Self.call(session, server: Self.answer("api.stripe.com", id: 1)) else {
            Issue.record("a late answer to a query answered SERVFAIL must be dropped")
            return
        }
        #expect(Self.call(session, server: Self.answer("db.svc.cluster.local", id: 2)) == .forward)
        #expect(session.nextDeadline == nil)
        #expect(collector.records.contains { $0.serialized().contains(#""rcode":2"#) }, "the SERVFAIL is a flow record")
    }
}

/// A clock the test moves by hand.
final class FakeClock: @unchecked Sendable {
    var now: UInt64 = 0
}
