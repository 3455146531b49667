import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// DNS over TCP through the real driver from memory (`MemoryConnection`): framed queries
/// and answers in, what reached the resolver and the client out, under a real policy.
@Suite struct DNSStreamPolicySessionTests {
    typealias Wire = DNSPolicySessionTests

    /// Records what the session taught toFQDNs.
    final class RecordingLearner: FQDNLearning, @unchecked Sendable {
        var answers: [LearnedAnswer] = []
        func learn(_ answer: LearnedAnswer) { answers.append(answer) }
        func names(learnedBy endpoint: IPAddress, for address: IPAddress) -> [String] { [] }
    }

    static func connection(learner: FQDNLearning? = nil, blockSize: Int = 65536,
                           clock: @escaping () -> UInt64 = MonotonicClock.now) throws
        -> (MemoryConnection, DNSStreamPolicySession, Collector) {
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(try Wire.snapshot(transport: "TCP")))
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.53:53")!)
        let collector = Collector()
        let session = DNSStreamPolicySession(context: SessionContext(identities: identities, policy: policy,
                                                                     reporter: collector),
                                             learner: learner, clock: clock)
        return (MemoryConnection(session: session, blockSize: blockSize), session, collector)
    }

    static func framed(_ message: [UInt8]) -> [UInt8] { DNSStreamFraming.framed(message) }

    /// The framed messages of a stream, unframed.
    static func messages(_ stream: [UInt8]) -> [[UInt8]] {
        var messages: [[UInt8]] = []
        var rest = stream[...]
        while rest.count >= 2 {
            let length = Int(rest[rest.startIndex]) << 8 | Int(rest[rest.startIndex + 1])
            messages.append(Array(rest.dropFirst(2).prefix(length)))
            rest = rest.dropFirst(2 + length)
        }
        return messages
    }

    /// (id, rcode) of each framed answer in `stream`.
    static func verdicts(_ stream: [UInt8]) -> [[Int]] {
        messages(stream).map { [Int($0[0]) << 8 | Int($0[1]), Int($0[3] & 0x0f)] }
    }

    static func loopingQuery(id: UInt16) -> [UInt8] {
        var query = Wire.query("api.stripe.com", id: id)
        query.replaceSubrange(12..<13, with: [0xc0, 12])   // the name points at itself
        return query
    }

    /// Allowed, denied, allowed and unreadable queries back to back.
    static let queries = framed(Wire.query("api.stripe.com", id: 1)) + framed(Wire.query("evil.example.com", id: 2))
        + framed(Wire.query("db.svc.cluster.local", id: 3)) + framed(loopingQuery(id: 4))

    /// Feeds `stream` from the client in slices; returns what reached each side.
    static func feed(_ slices: [ArraySlice<UInt8>]) throws -> (server: [UInt8], client: [UInt8], closed: String?) {
        var (connection, _, _) = try connection()
        for slice in slices { connection.clientSends(slice) }
        return (connection.deliveredToServer, connection.deliveredToClient, connection.closedReason)
    }

    @Test func queriesAreJudgedOneFrameAtATime() throws {
        let whole = try Self.feed([Self.queries[...]])
        #expect(whole.server == Self.framed(Wire.query("api.stripe.com", id: 1))
            + Self.framed(Wire.query("db.svc.cluster.local", id: 3)), "only the allowed queries, whole")
        #expect(Self.verdicts(whole.client) == [[2, Int(DNSAnswers.refused)], [4, Int(DNSAnswers.formatError)]])
        #expect(whole.closed == nil)
    }

    /// The split-feed idea through the real driver: the verdicts and bytes do not depend on
    /// how the stream was cut.
    @Test func everySplitOfTheStreamGivesTheSameVerdicts() throws {
        let whole = try Self.feed([Self.queries[...]])
        for offset in 0...Self.queries.count {
            let split = try Self.feed([Self.queries[..<offset], Self.queries[offset...]])
            #expect(split.server == whole.server && split.client == whole.client && split.closed == nil, "split at \(offset)")
        }
        let byteByByte = try Self.feed(Self.queries.indices.map { Self.queries[$0...$0] })
        #expect(byteByByte.server == whole.server && byteByByte.client == whole.client && byteByByte.closed == nil)
    }

    @Test func answersSplitAnywhereAndOutOfOrderReachTheClientWhole() throws {
        let answers = Self.framed(Wire.answer("db.svc.cluster.local", id: 3)) + Self.framed(Wire.answer("API.stripe.com", id: 1))
        for offset in 0...answers.count {
            var (connection, session, _) = try Self.connection()
            connection.clientSends(Self.queries)
            let denials = connection.deliveredToClient
            #expect(session.isAwaitingResponse)
            connection.serverSends(answers[..<offset])
            connection.serverSends(answers[offset...])
            #expect(connection.deliveredToClient == denials + answers, "split at \(offset)")
            #expect(connection.closedReason == nil)
            #expect(!session.isAwaitingResponse && session.isIdle)
        }
    }

    @Test func theLargestMessageIsHeldWholeAndJudged() throws {
        // An allowed query padded (EDNS0 padding, RFC 7830) to 65535 bytes, the most a
        // two-byte length can say; the driver's blocks are far smaller.
        var query = Wire.query("api.stripe.com", id: 9)
        query[11] = 1   // ARCOUNT
        let optionLength = 65535 - query.count - 11 - 4
        query += [0, 0, 41, 0x10, 0, 0, 0, 0, 0] + [UInt8((optionLength + 4) >> 8), UInt8((optionLength + 4) & 0xff)]
            + [0, 12, UInt8(optionLength >> 8), UInt8(optionLength & 0xff)] + [UInt8](repeating: 0, count: optionLength)
        #expect(query.count == 65535)
        var (connection, _, _) = try Self.connection(blockSize: 4096)
        connection.clientSends(Self.framed(query))
        #expect(connection.closedReason == nil)
        #expect(connection.deliveredToServer == Self.framed(query))
    }

    @Test func aFrameTooShortForAHeaderClosesTheConnection() throws {
        var (connection, _, _) = try Self.connection()
        connection.clientSends([0, 3, 1, 2, 3] + Self.framed(Wire.query("api.stripe.com")))
        #expect(connection.closedReason != nil)
        #expect(connection.deliveredToServer.isEmpty && connection.deliveredToClient.isEmpty)
    }

    @Test func aStreamEndingInsideAFrameForwardsNothingOfIt() throws {
        var (connection, _, _) = try Self.connection()
        connection.clientSends(Array(Self.framed(Wire.query("api.stripe.com")).dropLast()))
        connection.clientCloses()
        #expect(connection.deliveredToServer.isEmpty)
    }

    /// A hostile resolver: answers nobody asked for never reach the client, and the
    /// connection ends (see `DNSStreamPolicySession`).
    @Test(arguments: [
        ("unsolicited", Wire.answer("api.stripe.com", id: 0xdead)),
        ("another question", Wire.answer("web.stripe.com", id: 1)),
        ("garbage", [UInt8](repeating: 0xff, count: 40)),
    ])
    func anAnswerToNothingAskedEndsTheConnection(_ label: String, _ forged: [UInt8]) throws {
        var (connection, _, _) = try Self.connection()
        connection.clientSends(Self.framed(Wire.query("api.stripe.com", id: 1)))
        connection.serverSends(Self.framed(forged) + Self.framed(Wire.answer("api.stripe.com", id: 1)))
        #expect(connection.deliveredToClient.isEmpty, "\(label): nothing after the forged answer either")
        #expect(connection.closedReason?.contains("DNS") == true, "\(label)")
    }

    @Test func anAnswerIsRelayedOnceOnly() throws {
        var (connection, _, _) = try Self.connection()
        connection.clientSends(Self.framed(Wire.query("api.stripe.com", id: 1)))
        let answer = Self.framed(Wire.answer("api.stripe.com", id: 1))
        connection.serverSends(answer + answer)
        #expect(connection.deliveredToClient == answer)
        #expect(connection.closedReason != nil)
    }

    /// TCP flow records carry the same l7.dns fields as UDP ones, and the learner is told
    /// before the answer goes.
    @Test func flowRecordsAndLearningMatchUDP() throws {
        let learner = RecordingLearner()
        var (connection, _, collector) = try Self.connection(learner: learner)
        connection.clientSends(Self.framed(Wire.query("api.stripe.com", id: 1)) + Self.framed(Wire.query("evil.example.com", id: 2)))
        // api.stripe.com CNAME edge.stripe.com, edge.stripe.com A 192.0.2.7 (compressed).
        var answer = Wire.answer("api.stripe.com", id: 1)
        answer[7] = 2
        let edgeOffset = answer.count - 16 + 12
        answer.removeLast(16)
        answer += [0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 120, 0, 7, 4] + Array("edge".utf8) + [0xc0, 16]
        answer += [0xc0, UInt8(edgeOffset), 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 7]
        connection.serverSends(Self.framed(answer))
        #expect(connection.closedReason == nil)
        let records = collector.records.map { $0.serialized() }
        #expect(records.count == 3)
        #expect(records[0].contains(#""verdict":"FORWARDED""#) && records[0].contains(#""query":"api.stripe.com.""#)
            && records[0].contains(#""qtypes":["A"]"#) && records[0].contains(#""l4":{"TCP""#))
        #expect(records[1].contains(#""verdict":"DROPPED""#) && records[1].contains(#""query":"evil.example.com.""#))
        #expect(records[2].contains(#""ips":["192.0.2.7"]"#) && records[2].contains(#""ttl":30"#)
            && records[2].contains(#""cnames":["edge.stripe.com."]"#) && records[2].contains(#""rcode":0"#)
            && records[2].contains(#""rrtypes":["A","CNAME"]"#), "\(records[2])")
        #expect(learner.answers == [LearnedAnswer(endpoint: IPAddress("10.0.0.1")!, names: ["api.stripe.com", "edge.stripe.com"],
                                                  addresses: [IPAddress("192.0.2.7")!], ttl: 30,
                                                  received: learner.answers.first?.received ?? 0)])
    }

    /// The resolver stays silent: the relay's response clock (set to `dns.responseTimeout`)
    /// asks the session, which answers SERVFAIL for every outstanding query, framed.
    @Test func aSilentResolverGetsEveryOutstandingQueryServfail() throws {
        var (connection, session, _) = try Self.connection()
        #expect(session.responseTimeout == DNSSettings().responseTimeout)
        connection.clientSends(Self.framed(Wire.query("API.stripe.com", id: 1)) + Self.framed(Wire.query("db.svc.cluster.local", id: 3)))
        #expect(session.isAwaitingResponse && !session.isIdle)
        let answer = try #require(session.responseTimedOut())
        #expect(Self.verdicts(answer) == [[1, Int(DNSAnswers.serverFailure)], [3, Int(DNSAnswers.serverFailure)]])
        let first = Self.messages(answer)[0]
        let parsed = try first.withUnsafeBytes { try DNSMessage.parse($0) }
        #expect(first.withUnsafeBytes { try? DNSWireName.text($0, at: parsed.questions[0].name) } == "API.stripe.com.")
        #expect(!session.isAwaitingResponse)
        #expect(session.responseTimedOut() == nil, "nothing is owed any more")
    }
}
