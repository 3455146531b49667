import L7Parsers
import PolicyEngine

/// DNS over UDP under policy, one client's flow to one resolver: each query's question is
/// judged against the policy's DNS rules for that peer and port (`matchName`,
/// `matchPattern`); an allowed query is relayed, a denied one is answered by Sluice (same ID
/// and question, REFUSED unless configured otherwise) and never reaches the resolver, and a
/// query that cannot be read gets FORMERR when its header can be read, else is dropped. An
/// answer is relayed only when it answers a query of this flow still outstanding (same ID
/// and question): Sluice relays nothing a resolver did not send in answer.
///
/// DNS over TCP is not judged yet: a TCP port with DNS rules is still refused (issue 11).
public final class DNSPolicySession: L7DatagramSession {
    private let context: SessionContext
    private var policies: [ConnectionPolicy]
    private var policyVersion: UInt64
    private var identities: ConnectionIdentities
    private let deniedRCode: UInt8
    private let clock: () -> UInt64
    private let learner: FQDNLearning?
    /// Queries relayed and not answered yet, oldest first, at most `maximumOutstanding`.
    private var outstanding: [Outstanding] = []
    public private(set) var allowedCount: UInt32 = 0
    public private(set) var deniedCount: UInt32 = 0

    /// Queries one flow may have in flight; past it the oldest is forgotten (its answer,
    /// should it come, is then dropped like any unsolicited answer).
    public static let maximumOutstanding = 64

    private struct Outstanding {
        var id: UInt16
        /// The question as asked, name lower-cased and uncompressed, type and class.
        var question: [UInt8]
        var name: String
        var start: UInt64
        var direction: Direction
    }

    /// `deniedRCode`: what a denied query is answered (REFUSED by default; NXDOMAIN to look
    /// like a name that does not exist).
    /// `learner` receives the addresses of each allowed answer before it is released (toFQDNs).
    public init(context: SessionContext, deniedRCode: UInt8 = DNSAnswers.refused, learner: FQDNLearning? = nil,
                clock: @escaping () -> UInt64 = MonotonicClock.now) {
        self.learner = learner
        self.context = context
        identities = context.identities
        policyVersion = context.policy?.version ?? 0
        policies = context.policy?.policies(for: context.identities) ?? []
        self.deniedRCode = deniedRCode
        self.clock = clock
    }

    public func clientDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        let message: DNSMessage
        do {
            message = try DNSMessage.parse(bytes)
        } catch {
            return malformed(bytes, because: error.kind)
        }
        guard !message.header.isResponse else { return .drop(reason: "DNS: a response from the client") }
        // RFC 9619: a query carries exactly one question; opcode QUERY is all a name rule judges.
        guard message.header.opcode == 0, message.questions.count == 1,
              let question = message.questions.first,
              let name = try? DNSWireName.text(bytes, at: question.name) else {
            return malformed(bytes, because: "not a standard query with one question")
        }
        refreshPolicies()
        var allowed = true
        var deciding: [RuleReference] = []
        var direction = Direction.egress
        if context.policy != nil {
            let facts = DNSQueryFacts(name: PolicyEngine.DNSName.normalize(name))
            for policy in policies {
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
        let qtype = Self.typeName(question.type)
        if !allowed {
            deniedCount &+= 1
            report(type: .request, verdict: .dropped, direction: direction, query: name, rules: deciding, allowed: false,
                   fields: Self.fields(["qtypes": .array([.string(qtype)])]))
            return .answer(DNSAnswers.response(to: message, in: bytes, rcode: deniedRCode))
        }
        allowedCount &+= 1
        if outstanding.count >= Self.maximumOutstanding { outstanding.removeFirst() }
        outstanding.append(Outstanding(id: message.header.id, question: Self.questionKey(question, in: bytes), name: name,
                                       start: clock(), direction: direction))
        report(type: .request, verdict: .forwarded, direction: direction, query: name, rules: deciding, allowed: true,
               fields: Self.fields(["qtypes": .array([.string(qtype)])]))
        return .forward
    }

    public func serverDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        let received = clock()
        guard let message = try? DNSMessage.parse(bytes), message.header.isResponse,
              message.questions.count == 1, let question = message.questions.first else {
            return .drop(reason: "DNS: an answer that cannot be read")
        }
        let key = Self.questionKey(question, in: bytes)
        guard let index = outstanding.firstIndex(where: { $0.id == message.header.id && $0.question == key }) else {
            return .drop(reason: "DNS: an answer to no outstanding query of this client")
        }
        let query = outstanding.remove(at: index)
        var ips: [JSONObject.Value] = []
        var cnames: [JSONObject.Value] = []
        var rrtypes = Set<String>()
        var ttl: UInt32?
        for record in message.answers {
            rrtypes.insert(Self.typeName(record.type))
            ttl = min(ttl ?? record.ttl, record.ttl)
            let data = UnsafeRawBufferPointer(rebasing: bytes[record.data])
            switch (record.type, record.recordClass) {
            case (DNSRecordType.a, DNSRecordType.internetClass):
                ips.append(.string(data.map(String.init).joined(separator: ".")))
            case (DNSRecordType.aaaa, DNSRecordType.internetClass):
                ips.append(.string((0..<8).map { String(UInt16(data[$0 * 2]) << 8 | UInt16(data[$0 * 2 + 1]), radix: 16) }
                    .joined(separator: ":")))
            case (DNSRecordType.cname, _):
                if let target = try? DNSWireName.text(bytes, at: record.data.lowerBound) { cnames.append(.string(target)) }
            default:
                break
            }
        }
        var fields = Self.fields(["rcode": .unsigned(UInt64(message.header.rcode)),
                                  "qtypes": .array([.string(Self.typeName(question.type))]),
                                  "rrtypes": .array(rrtypes.sorted().map { .string($0) })])
        if !ips.isEmpty { fields["ips"] = .array(ips) }
        if !cnames.isEmpty { fields["cnames"] = .array(cnames) }
        if let ttl { fields["ttl"] = .unsigned(UInt64(ttl)) }
        report(type: .response, verdict: .forwarded, direction: query.direction, query: query.name, rules: [],
               allowed: true, fields: fields, latency: received &- query.start)
        learn(from: message, in: bytes, received: received)
        return .forward
    }

    public func flowEnded() {
        outstanding.removeAll()
    }

    // MARK: Helpers

    /// Hands the answer's addresses to the learner; returns once the datapath holds them.
    private func learn(from message: DNSMessage, in bytes: UnsafeRawBufferPointer, received: UInt64) {
        guard let learner, let endpoint = IPAddress(identities.client.host),
              let chain = DNSAnswerChain(message, in: bytes), !chain.addresses.isEmpty, let ttl = chain.ttl else { return }
        let addresses = chain.addresses.compactMap { IPAddress(networkBytes: UnsafeRawBufferPointer(rebasing: bytes[$0])) }
        learner.learn(LearnedAnswer(endpoint: endpoint, names: chain.names.map(PolicyEngine.DNSName.normalize),
                                    addresses: addresses, ttl: ttl, received: received))
    }

    /// FORMERR when a header can be read (RFC 1035 §4.1.1), else a drop.
    private func malformed(_ bytes: UnsafeRawBufferPointer, because reason: String) -> DatagramVerdict {
        guard let answer = DNSAnswers.formatError(forHeaderOf: bytes) else { return .drop(reason: "DNS: \(reason)") }
        deniedCount &+= 1
        return .answer(answer)
    }

    private func refreshPolicies() {
        guard let policy = context.policy, !policy.isCurrent(policyVersion) else { return }
        var fresh = policy.identities(client: identities.client, server: identities.server)
        fresh.transport = identities.transport
        identities = fresh
        policies = policy.policies(for: identities)
        policyVersion = policy.version
    }

    /// The question as a comparable key: the name lower-cased, uncompressed, then type and class.
    private static func questionKey(_ question: DNSQuestion, in bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var key: [UInt8] = []
        try? DNSWireName.forEachLabel(bytes, at: question.name) { label in
            key.append(UInt8(label.count))
            for byte in label { key.append(byte >= 0x41 && byte <= 0x5a ? byte | 0x20 : byte) }
        }
        key += [0, UInt8(question.type >> 8), UInt8(question.type & 0xff),
                UInt8(question.recordClass >> 8), UInt8(question.recordClass & 0xff)]
        return key
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

    private func report(type: L7FlowType, verdict: FlowVerdict, direction: Direction, query: String,
                        rules: [RuleReference], allowed: Bool, fields: JSONObject, latency: UInt64? = nil) {
        guard let reporter = context.reporter else { return }
        var dns = fields
        dns["query"] = .string(query)
        let what = type == .request ? "query" : "answer"
        reporter.report(FlowRecords.l7(verdict: verdict, connection: identities, direction: direction, type: type,
                                       latency: latency, protocolName: "dns", fields: dns, rules: rules, allowed: allowed,
                                       summary: "DNS \(what) \(query) \(verdict.rawValue.lowercased())"))
    }
}
