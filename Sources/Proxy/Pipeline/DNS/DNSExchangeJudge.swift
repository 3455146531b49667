import L7Parsers
import PolicyEngine

/// The judgement of one client's DNS exchange with one resolver, whatever carries it: the
/// UDP session (`DNSPolicySession`, a datagram a message) and the TCP session
/// (`DNSStreamPolicySession`, messages behind a two-byte length) both hand it whole messages
/// and perform what it answers. It owns the queries in flight, the flow records, the
/// learner call (toFQDNs) and the answers Sluice gives in the resolver's place; it knows no
/// framing and no socket.
///
/// - A query's question is judged against the policy's DNS rules for that peer and port
///   (`matchName`, `matchPattern`): allowed, it is outstanding until answered; denied, it
///   is answered (same ID and question, REFUSED unless configured otherwise).
/// - A query that cannot be read gets FORMERR when its header can be read (RFC 1035 §4.1.1).
/// - An answer is relayed only when it answers an outstanding query (same ID and question:
///   RFC 7766 §7 lets a resolver answer pipelined queries in any order), once; its addresses
///   go to the learner before it is released.
/// - A query whose answer does not come within `responseTimeout` is answered SERVFAIL and
///   forgotten (a late answer is then unsolicited).
struct DNSExchangeJudge {
    /// What to do with a client's message.
    enum QueryVerdict: Equatable {
        /// Relay it to the resolver.
        case relay
        /// Relay nothing; send this (unframed) answer back to the client.
        case answer([UInt8])
        /// Relay nothing and answer nothing (a response from the client).
        case discard(reason: String)
        /// Not even a header could be read: nothing can be answered.
        case unreadable(reason: String)
    }

    /// What to do with a resolver's message.
    enum AnswerVerdict: Equatable {
        case relay
        /// Unreadable, or answering nothing this client asked (or asked and was answered).
        case reject(reason: String)
    }

    private let context: SessionContext
    private var policies: [ConnectionPolicy]
    private var policyVersion: UInt64
    private var identities: ConnectionIdentities
    private var recordParts = L7RecordParts()
    /// The asking endpoint's address, for the learner (the client end never changes).
    private let clientAddress: IPAddress?
    private let deniedRCode: UInt8
    private let responseTimeout: UInt64
    private let learner: FQDNLearning?
    private let clock: () -> UInt64
    /// Queries relayed and not answered yet, oldest first, at most `maximumOutstanding`.
    private var outstanding: [Outstanding] = []
    /// Scratch lists for `learn`.
    private var learnedAddresses: [IPAddress] = []
    private var learnedNames: [String] = []
    private(set) var allowedCount: UInt32 = 0
    private(set) var deniedCount: UInt32 = 0

    /// Queries one client may have in flight; past it the oldest is forgotten (its answer,
    /// should it come, is then dropped like any unsolicited answer).
    static let maximumOutstanding = 256

    private struct Outstanding {
        var id: UInt16
        /// The question's type (QTYPE).
        var type: UInt16
        /// False only in audit mode: the query was denied and relayed anyway.
        var allowed: Bool
        var direction: Direction
        var start: UInt64
        /// The question's name lower-cased without the trailing dot, as the policy judged it.
        var normalized: String
        /// What the client gets should the resolver stay silent: SERVFAIL, same ID and
        /// question as asked (the name in the client's case). It is also where the question
        /// is kept: its name written out at `questionOffset` (for flow records), then its type
        /// and class (the last four bytes), to match the answer against.
        var serverFailure: [UInt8]

        static let questionOffset = DNSMessage.headerLength

        /// Whether `question` (of a message in `bytes`) is this query's: the same name (ASCII
        /// case aside), type and class.
        func isAsked(_ question: DNSQuestion, in bytes: UnsafeRawBufferPointer) -> Bool {
            serverFailure.withUnsafeBytes { asked in
                asked.count >= Self.questionOffset + 5
                    && UInt16(asked[asked.count - 4]) << 8 | UInt16(asked[asked.count - 3]) == question.type
                    && UInt16(asked[asked.count - 2]) << 8 | UInt16(asked[asked.count - 1]) == question.recordClass
                    && DNSWireName.equalIgnoringCase(bytes, at: question.name, asked, at: Self.questionOffset)
            }
        }

        /// The question's name as the client wrote it (`DNSWireName.text`), for flow records.
        var name: String {
            serverFailure.withUnsafeBytes { (try? DNSWireName.text($0, at: Self.questionOffset)) ?? normalized }
        }
    }

    init(context: SessionContext, deniedRCode: UInt8, responseTimeout: UInt64, learner: FQDNLearning?,
         clock: @escaping () -> UInt64) {
        self.context = context
        identities = context.identities
        clientAddress = learner == nil ? nil : IPAddress(context.identities.client.host)
        policyVersion = context.policy?.version ?? 0
        policies = context.policy?.policies(for: context.identities) ?? []
        self.deniedRCode = deniedRCode
        self.responseTimeout = responseTimeout
        self.learner = learner
        self.clock = clock
    }

    /// Whether an allowed query still waits for its answer.
    var isAwaitingAnswer: Bool { !outstanding.isEmpty }

    /// When the oldest outstanding query's answer is overdue (`clock` nanoseconds); nil when
    /// none is outstanding.
    var nextDeadline: UInt64? { outstanding.first.map { $0.start &+ responseTimeout } }

    // MARK: Queries

    /// Judges one whole message from the client.
    mutating func judgeQuery(_ bytes: UnsafeRawBufferPointer) -> QueryVerdict {
        let message: DNSMessage
        do {
            message = try DNSMessage.parse(bytes)
        } catch {
            return malformed(bytes, because: error.kind)
        }
        guard !message.header.isResponse else { return .discard(reason: "DNS: a response from the client") }
        // RFC 9619: a query carries exactly one question; opcode QUERY is all a name rule judges.
        guard message.header.opcode == 0, message.questions.count == 1,
              let question = message.questions.first,
              let normalized = Self.normalizedName(bytes, at: question.name) else {
            return malformed(bytes, because: "not a standard query with one question")
        }
        refreshPolicies()
        // Nothing is made for flow records unless they are written.
        let reporting = context.reporter != nil
        var allowed = true
        var deciding: [RuleReference] = []
        var direction = Direction.egress
        if context.policy != nil {
            let facts = DNSQueryFacts(name: normalized)
            for policy in policies {
                guard reporting else {
                    // The same decision, without the rule references only a record shows.
                    if !policy.allows(dns: facts) {
                        allowed = false
                        direction = policy.flow.direction
                        break
                    }
                    continue
                }
                let verdict = policy.evaluate(dns: facts)
                if !verdict.isAllowed {
                    allowed = false
                    deciding = verdict.matched
                    direction = policy.flow.direction
                    break
                }
                deciding += verdict.matched
            }
        }
        if !allowed {
            deniedCount &+= 1
            if reporting {
                report(type: .request, verdict: .dropped, direction: direction, query: Self.name(bytes, question, normalized),
                       rules: deciding, allowed: false,
                       fields: Self.fields(["qtypes": .array([.string(Self.typeName(question.type))])]))
            }
            // Audit (replay): reported, and relayed as recorded so that its recorded answer matches.
            if !context.audit { return .answer(DNSAnswers.response(to: message, in: bytes, rcode: deniedRCode)) }
        } else {
            allowedCount &+= 1
        }
        if outstanding.count >= Self.maximumOutstanding { outstanding.removeFirst() }
        outstanding.append(Outstanding(
            id: message.header.id, type: question.type, allowed: allowed, direction: direction, start: clock(),
            normalized: normalized,
            serverFailure: DNSAnswers.response(to: message, in: bytes, rcode: DNSAnswers.serverFailure)))
        if allowed && reporting {
            report(type: .request, verdict: .forwarded, direction: direction, query: Self.name(bytes, question, normalized),
                   rules: deciding, allowed: true,
                   fields: Self.fields(["qtypes": .array([.string(Self.typeName(question.type))])]))
        }
        return .relay
    }

    /// The name at `offset` as the policy judges it: lower-cased, without the trailing dot
    /// (`PolicyEngine.DNSName.normalize` of `DNSWireName.text`, made directly when the name
    /// needs no escape).
    private static func normalizedName(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> String? {
        if let plain = DNSWireName.plainLowercasedText(bytes, at: offset) { return plain }
        return (try? DNSWireName.text(bytes, at: offset)).map(PolicyEngine.DNSName.normalize)
    }

    /// The question's name as the client wrote it, for flow records.
    private static func name(_ bytes: UnsafeRawBufferPointer, _ question: DNSQuestion, _ normalized: String) -> String {
        (try? DNSWireName.text(bytes, at: question.name)) ?? normalized
    }

    /// FORMERR when a header can be read (RFC 1035 §4.1.1), else unreadable.
    private mutating func malformed(_ bytes: UnsafeRawBufferPointer, because reason: String) -> QueryVerdict {
        guard let answer = DNSAnswers.formatError(forHeaderOf: bytes) else { return .unreadable(reason: "DNS: \(reason)") }
        deniedCount &+= 1
        return .answer(answer)
    }

    // MARK: Answers

    /// Judges one whole message from the resolver; an answer it relays has been reported and
    /// its addresses learned when this returns. Truncated answers (TC) are relayed as they
    /// are: the client retries over TCP.
    mutating func judgeAnswer(_ bytes: UnsafeRawBufferPointer) -> AnswerVerdict {
        let received = clock()
        guard let message = try? DNSMessage.parse(bytes), message.header.isResponse,
              message.questions.count == 1, let question = message.questions.first else {
            return .reject(reason: "DNS: an answer that cannot be read")
        }
        let id = message.header.id
        guard let index = outstanding.firstIndex(where: { $0.id == id && $0.isAsked(question, in: bytes) }) else {
            return .reject(reason: "DNS: an answer to no outstanding query of this client")
        }
        let query = outstanding.remove(at: index)
        // In audit mode the answer to a denied query is relayed as recorded, reported as one
        // the client would not have had, and teaches nothing.
        if context.reporter != nil {
            report(type: .response, verdict: query.allowed ? .forwarded : .dropped, direction: query.direction,
                   query: query.name, rules: [], allowed: query.allowed,
                   fields: Self.answerFields(message, in: bytes, qtype: Self.typeName(query.type)),
                   latency: received &- query.start)
        }
        if query.allowed { learn(from: message, in: bytes, asked: query.normalized, received: received) }
        return .relay
    }

    // MARK: Clocks

    /// SERVFAIL answers (unframed, oldest first) for every query outstanding since
    /// `responseTimeout` before `now`; those queries are forgotten.
    mutating func expire(now: UInt64) -> [[UInt8]] {
        var answers: [[UInt8]] = []
        while let oldest = outstanding.first, now &- oldest.start >= responseTimeout {
            answers.append(serverFailure(outstanding.removeFirst()))
        }
        return answers
    }

    /// SERVFAIL answers for every outstanding query (the resolver went silent or away);
    /// all are forgotten.
    mutating func expireAll() -> [[UInt8]] {
        defer { outstanding.removeAll() }
        return outstanding.map { serverFailure($0) }
    }

    /// The exchange ended: what is outstanding will not be answered through it.
    mutating func end() {
        outstanding.removeAll()
    }

    private mutating func serverFailure(_ query: Outstanding) -> [UInt8] {
        if context.reporter != nil {
            let name = query.name
            report(type: .response, verdict: .forwarded, direction: query.direction, query: name, rules: [],
                   allowed: true, fields: Self.fields(["rcode": .unsigned(UInt64(DNSAnswers.serverFailure)),
                                                       "qtypes": .array([.string(Self.typeName(query.type))])]),
                   latency: clock() &- query.start, summary: "DNS answer \(name) timed out: SERVFAIL")
        }
        return query.serverFailure
    }

    // MARK: Helpers

    /// Hands the answer's addresses to the learner; returns once the datapath holds them.
    /// `asked` is the question's name as the policy judged it (the answer's question is the
    /// same name: it matched the outstanding query).
    private mutating func learn(from message: DNSMessage, in bytes: UnsafeRawBufferPointer, asked: String,
                                received: UInt64) {
        guard let learner, let endpoint = clientAddress,
              let chain = DNSAnswerChain(message, in: bytes, questionName: asked), !chain.addresses.isEmpty,
              let ttl = chain.ttl else { return }
        // The lists are the judge's own, emptied and filled again for every answer: the
        // learner lets go of them when it returns, so they are reused, not allocated anew.
        learnedAddresses.removeAll(keepingCapacity: true)
        for range in chain.addresses {
            if let address = IPAddress(networkBytes: UnsafeRawBufferPointer(rebasing: bytes[range])) {
                learnedAddresses.append(address)
            }
        }
        learnedNames.removeAll(keepingCapacity: true)
        learnedNames.append(asked)
        for name in chain.names.dropFirst() { learnedNames.append(PolicyEngine.DNSName.normalize(name)) }
        learner.learn(LearnedAnswer(endpoint: endpoint, names: learnedNames, addresses: learnedAddresses, ttl: ttl,
                                    received: received))
    }

    private mutating func refreshPolicies() {
        guard let policy = context.policy, !policy.isCurrent(policyVersion) else { return }
        var fresh = policy.identities(client: identities.client, server: identities.server)
        fresh.transport = identities.transport
        identities = fresh
        policies = policy.policies(for: identities)
        policyVersion = policy.version
    }

    /// `l7.dns` of an answer: rcode, qtypes, rrtypes, and the ips, cnames and smallest ttl
    /// its answer section carries.
    private static func answerFields(_ message: DNSMessage, in bytes: UnsafeRawBufferPointer, qtype: String) -> JSONObject {
        var ips: [JSONObject.Value] = []
        var cnames: [JSONObject.Value] = []
        var rrtypes = Set<String>()
        var ttl: UInt32?
        for record in message.answers {
            rrtypes.insert(typeName(record.type))
            ttl = min(ttl ?? record.ttl, record.ttl)
            let data = UnsafeRawBufferPointer(rebasing: bytes[record.data])
            switch (record.type, record.recordClass) {
            case (DNSRecordType.a, DNSRecordType.internetClass):
                ips.append(.string(data.map(String.init).joined(separator: ".")))
            case (DNSRecordType.aaaa, DNSRecordType.internetClass):
                // RFC 5952 text (zeros compressed), as the flow's own IPv6 addresses are written.
                if let address = IPAddress(networkBytes: data) { ips.append(.string(address.description)) }
            case (DNSRecordType.cname, _):
                if let target = try? DNSWireName.text(bytes, at: record.data.lowerBound) { cnames.append(.string(target)) }
            default:
                break
            }
        }
        var fields = Self.fields(["rcode": .unsigned(UInt64(message.header.rcode)), "qtypes": .array([.string(qtype)]),
                                  "rrtypes": .array(rrtypes.sorted().map { .string($0) })])
        if !ips.isEmpty { fields["ips"] = .array(ips) }
        if !cnames.isEmpty { fields["cnames"] = .array(cnames) }
        if let ttl { fields["ttl"] = .unsigned(UInt64(ttl)) }
        return fields
    }

    private static func fields(_ pairs: KeyValuePairs<String, JSONObject.Value>) -> JSONObject {
        var object = JSONObject()
        for (key, value) in pairs { object[key] = value }
        return object
    }

    static func typeName(_ type: UInt16) -> String {
        switch type {
        case 1: return "A"
        case 2: return "NS"
        case 5: return "CNAME"
        case 6: return "SOA"
        case 12: return "PTR"
        case 15: return "MX"
        case 16: return "TXT"
        case 28: return "AAAA"
        case 33: return "SRV"
        case 65: return "HTTPS"
        default: return "TYPE\(type)"
        }
    }

    private mutating func report(type: L7FlowType, verdict: FlowVerdict, direction: Direction, query: String,
                        rules: [RuleReference], allowed: Bool, fields: @autoclosure () -> JSONObject, latency: UInt64? = nil,
                        summary: String? = nil) {
        guard let reporter = context.reporter else { return }
        var dns = fields()
        dns["query"] = .string(query)
        let what = type == .request ? "query" : "answer"
        reporter.report(FlowRecords.l7Draft(verdict: verdict, connection: identities, parts: &recordParts,
                                            time: context.clock.wall(), direction: direction, type: type,
                                            latency: latency, protocolName: "dns", fields: dns, rules: rules,
                                            allowed: allowed,
                                            summary: summary ?? "DNS \(what) \(query) \(verdict.rawValue.lowercased())"))
    }
}
