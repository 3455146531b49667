/// One endpoint's compiled policy in one snapshot, held by the caller.
///
/// `PolicySnapshot.evaluate(...)` finds the subject's policy by its labels on every
/// call; a proxy that already knows which endpoint a connection belongs to takes this
/// handle once (`snapshot.policy(forEndpoint:)`) and evaluates through it, or goes one
/// step further with `connection(_:)`, which also settles the L3/L4 part once for the
/// connection's peer and port so each request on it only runs its L7 rules.
///
/// A handle keeps its snapshot's compiled policy alive: after the holder publishes a
/// new snapshot, a connection keeps answering with the policy it started with until the
/// caller takes a new handle (compare the holder's `version` with the one it took the
/// handle under, as the proxy's `WorkerPolicy` does before each request).
public struct EndpointPolicyHandle: Sendable {
    /// The endpoint whose policy this is; flows given to this handle have it as subject.
    public let subject: Identity
    /// The generation of the snapshot the handle came from.
    public let generation: UInt64
    let policy: EndpointPolicy

    init(subject: Identity, generation: UInt64, policy: EndpointPolicy) {
        self.subject = subject
        self.generation = generation
        self.policy = policy
    }

    /// The policy of one connection of this endpoint: `flow.subject` must be `subject`
    /// (it is not compared, for speed).
    public func connection(_ flow: FlowContext) -> ConnectionPolicy {
        ConnectionPolicy(flow: flow, policy: policy.direction(flow.direction))
    }

    /// Evaluates a connection at L3/L4 (see `PolicySnapshot.evaluate(flow:)`).
    public func evaluate(flow: FlowContext) -> Verdict {
        L4Match(flow: flow, policy: policy.direction(flow.direction)).connectionVerdict()
    }

    /// Evaluates one HTTP request (see `PolicySnapshot.evaluate(flow:http:)`).
    public func evaluate(flow: FlowContext, http request: HTTPRequestFacts) -> Verdict {
        let match = L4Match(flow: flow, policy: policy.direction(flow.direction))
        if let decided = match.requestVerdictAtL4() { return decided }
        let (scanned, hasHTTP, _) = match.httpClauses()
        return match.evaluate(http: request, scanned: scanned, hasHTTP: hasHTTP)
    }

    /// Evaluates one Kafka request (see `PolicySnapshot.evaluate(flow:kafka:)`).
    public func evaluate(flow: FlowContext, kafka request: KafkaRequestFacts) -> Verdict {
        let match = L4Match(flow: flow, policy: policy.direction(flow.direction))
        return match.requestVerdictAtL4() ?? match.evaluate(kafka: request)
    }

    /// Evaluates one DNS question (see `PolicySnapshot.evaluate(flow:dns:)`).
    public func evaluate(flow: FlowContext, dns query: DNSQueryFacts) -> Verdict {
        let match = L4Match(flow: flow, policy: policy.direction(flow.direction))
        return match.requestVerdictAtL4() ?? match.evaluate(dns: query)
    }

    /// The L7 protocols whose rules judge requests on `flow` (see `ConnectionPolicy.l7Protocols`).
    public func l7Protocols(for flow: FlowContext) -> Set<L7Protocol> {
        L4Match(flow: flow, policy: policy.direction(flow.direction)).l7Protocols()
    }
}

/// The policy of one connection (subject, direction, peer, port), with its L3/L4 part
/// decided once: requests on the connection are then checked against the L7 rules of
/// the allow clauses that cover this peer and port, and nothing else. A class, so the
/// proxy keeps one reference per connection.
public final class ConnectionPolicy: Sendable {
    public let flow: FlowContext
    private let match: L4Match
    /// The answer for every request when L3/L4 decides (deny rule, default deny, an
    /// allow without L7 rules); nil when the L7 rules decide.
    private let requestDecision: Verdict?
    private let scannedHTTP: [(entry: Int, rules: [HTTPRule])]
    private let hasHTTP: Bool

    /// The application protocols whose L7 rules judge every request on this connection;
    /// empty when its L3/L4 part decides every request the same way.
    ///
    /// - Empty: a deny rule matches, default deny has no rule for this peer and port, no
    ///   policy enforces the direction, or an allow rule without L7 rules covers this peer
    ///   and port (every request is allowed at L4). `verdict` says which: a proxy relays
    ///   an allowed connection without parsing it, and never sees a denied one.
    /// - Not empty: the connection is allowed only request by request, by the L7 rules of
    ///   the allow rules that cover this peer, port and transport (`flow.transport`: DNS
    ///   rules over UDP and TCP alike); rules for other peers or ports do not count. A
    ///   request of a protocol outside the set is denied (`l7ProtocolMismatch`). A proxy
    ///   that cannot parse one of these protocols must deny and report the connection,
    ///   never relay it unjudged.
    ///
    /// Computed once per `ConnectionPolicy`; reading it is free.
    public let l7Protocols: Set<L7Protocol>
    /// Whether judging an HTTP request here can read its header fields (some rule it may be
    /// judged by has `headers` or `headerMatches`): when not, a proxy need not collect them.
    public var httpReadsHeaders: Bool { !httpHeaderNames.isEmpty }
    /// The header fields (lower-cased names) that judging an HTTP request here can read: a
    /// proxy need collect only these.
    public let httpHeaderNames: Set<String>
    /// Whether L3/L4 decides every request on the connection the same way (`l7Protocols` is
    /// empty), and then whether it allows them: read without copying the verdict, for callers
    /// that need only the decision.
    public let isDecidedAtL4: Bool
    public let isAllowedAtL4: Bool

    init(flow: FlowContext, policy: DirectionPolicy) {
        self.flow = flow
        match = L4Match(flow: flow, policy: policy)
        requestDecision = match.requestVerdictAtL4()
        let clauses = match.httpClauses()
        (scannedHTTP, hasHTTP) = (clauses.scanned, clauses.hasHTTP)
        httpHeaderNames = requestDecision == nil ? clauses.headerNames : []
        l7Protocols = requestDecision == nil ? match.allowedL7Protocols() : []
        isDecidedAtL4 = requestDecision != nil
        isAllowedAtL4 = requestDecision?.isAllowed ?? false
    }

    /// The L3/L4 verdict for the connection (a port with L7 rules is allowed here).
    public var verdict: Verdict { match.connectionVerdict() }

    /// Evaluates one HTTP request on the connection: its verdict, with the rules that decided,
    /// the reason and log messages (callers that record nothing ask `decide(http:)`).
    public func evaluate(http request: HTTPRequestFacts) -> Verdict {
        requestDecision ?? match.evaluate(http: request, scanned: scannedHTTP, hasHTTP: hasHTTP)
    }

    /// What `evaluate(http:)` decides and the header actions it carries, without making the
    /// verdict (no rules, reason or log messages: building them is most of a request's judging
    /// cost), for callers that record nothing.
    public func decide(http request: HTTPRequestFacts) -> HTTPDecision {
        if isDecidedAtL4 { return HTTPDecision(isAllowed: isAllowedAtL4, headerActions: []) }
        return match.decide(http: request, scanned: scannedHTTP, hasHTTP: hasHTTP)
    }

    /// Evaluates one Kafka request on the connection: key, version and client ID must
    /// match a rule, and every topic of the request must be covered by some matching rule.
    public func evaluate(kafka request: KafkaRequestFacts) -> Verdict {
        requestDecision ?? match.evaluate(kafka: request)
    }

    /// Evaluates one DNS question on the connection.
    public func evaluate(dns query: DNSQueryFacts) -> Verdict {
        requestDecision ?? match.evaluate(dns: query)
    }

    /// Whether `evaluate(dns:)` allows the question, without making its verdict (no rule
    /// references, no reason): for callers that record nothing.
    public func allows(dns query: DNSQueryFacts) -> Bool {
        if let requestDecision { return requestDecision.isAllowed }
        return match.allows(dns: query)
    }
}

/// The L3/L4 part every evaluation shares: which clauses cover the port, and which of
/// them match the peer.
final class L4Match: Sendable {
    let policy: DirectionPolicy
    let slot: DirectionPolicy.Slot?
    /// Matching allow entries (after requirements), in entry order.
    let allows: [Int]
    let denies: [Int]
    /// `allows` as a set, built only when there are many: the HTTP index asks for each
    /// candidate whether its clause is allowed, and a short list is faster to scan.
    private let allowedSet: Set<Int>?

    init(flow: FlowContext, policy: DirectionPolicy) {
        self.policy = policy
        let (covering, slot) = policy.entriesCovering(flow)
        self.slot = slot
        let meetsRequirements = policy.requirements.allSatisfy { $0.matches(flow.remote.labels) }
        var allows: [Int] = []
        var denies: [Int] = []
        for position in covering where policy.entries[position].selects(flow.remote) {
            if policy.entries[position].isDeny {
                denies.append(position)
            } else if meetsRequirements {
                allows.append(position)
            }
        }
        self.allows = allows
        self.denies = denies
        allowedSet = allows.count > 8 ? Set(allows) : nil
    }

    /// True when clause `entry` is among the matching allow clauses.
    func isAllowed(_ entry: Int) -> Bool {
        allowedSet?.contains(entry) ?? allows.contains(entry)
    }

    /// The verdict for the connection itself: deny rules, default deny, or allowed (a
    /// port with L7 rules is allowed here; its requests are judged one by one).
    func connectionVerdict() -> Verdict {
        if let decided = decisionWithoutAllows() { return decided }
        let plain = allows.filter { policy.entries[$0].l7 == nil }
        let deciding = plain.isEmpty ? allows : plain
        return Verdict(isAllowed: true, reason: .allowedAtL4, matched: deciding.map { policy.entries[$0].reference })
    }

    /// The verdict for every request on the connection when L3/L4 decides it (deny rule,
    /// default deny, no enforcement, an allow without L7 rules); nil when the L7 rules of
    /// the matching allow rules decide each request.
    func requestVerdictAtL4() -> Verdict? {
        if let decided = decisionWithoutAllows() { return decided }
        let plain = allows.filter { policy.entries[$0].l7 == nil }
        guard !plain.isEmpty else { return nil }
        // An allow without L7 rules for this peer and port admits every request on it.
        return Verdict(isAllowed: true, reason: .allowedAtL4, matched: plain.map { policy.entries[$0].reference })
    }

    /// Deny rules, then default deny (or no enforcement) when no allow matches; nil when
    /// some allow rule matches the peer and port.
    private func decisionWithoutAllows() -> Verdict? {
        if !denies.isEmpty {
            return Verdict(isAllowed: false, reason: .deniedByRule, matched: denies.map { policy.entries[$0].reference })
        }
        if allows.isEmpty {
            return policy.isEnforced ? Verdict(isAllowed: false, reason: .noRuleAllows) : Verdict(isAllowed: true, reason: .notEnforced)
        }
        return nil
    }

    /// See `ConnectionPolicy.l7Protocols`.
    func l7Protocols() -> Set<L7Protocol> {
        requestVerdictAtL4() == nil ? allowedL7Protocols() : []
    }

    /// The protocols of the L7 rules among the matching allow clauses.
    func allowedL7Protocols() -> Set<L7Protocol> {
        Set(allows.compactMap { policy.entries[$0].l7?.l7Protocol })
    }

    var l7Name: String {
        let names = Set(allows.compactMap { policy.entries[$0].l7?.typeName.uppercased() })
        return names.sorted().joined(separator: "/")
    }
}

extension L4Match {
    /// Allow clauses with HTTP rules that the slot's index does not cover (egress named
    /// ports resolved per peer, ports without a slot): their rules are checked one by
    /// one. Whether any allow clause has HTTP rules at all, and the header fields (lower-cased
    /// names) that those rules read (`headers`, `headerMatches`).
    func httpClauses() -> (scanned: [(entry: Int, rules: [HTTPRule])], hasHTTP: Bool, headerNames: Set<String>) {
        var scanned: [(entry: Int, rules: [HTTPRule])] = []
        var hasHTTP = false
        var headerNames = Set<String>()
        for position in allows {
            guard case .http(let rules)? = policy.entries[position].l7 else { continue }
            hasHTTP = true
            for rule in rules {
                for header in rule.headers { headerNames.insert(header.name.lowercased()) }
                for match in rule.headerMatches { headerNames.insert(match.name.lowercased()) }
            }
            // Rules of a clause the slot's index holds are found through the index.
            if let slot, slot.http != nil, slot.entries.contains(position) { continue }
            scanned.append((position, rules))
        }
        return (scanned, hasHTTP, headerNames)
    }

    /// Calls `body` with every HTTP rule of the matching allow clauses that matches the request
    /// (its clause, the rule, what it said), in index then clause order.
    private func forEachMatchingRule(http request: HTTPRequestFacts, scanned scannedHTTP: [(entry: Int, rules: [HTTPRule])],
                                     _ body: (_ entry: Int, _ rule: HTTPRule, _ outcome: HTTPRuleOutcome) -> Void) {
        func consider(entry: Int, rule: HTTPRule, isMethodKnown: Bool, isPathKnown: Bool) {
            let outcome = rule.evaluate(request, isMethodKnown: isMethodKnown, isPathKnown: isPathKnown)
            if outcome.matched { body(entry, rule, outcome) }
        }
        if let index = slot?.http {
            if let method = request.method, let path = request.path {
                index.forEachCandidate(method: method, path: path) { item, isMethodKnown, isPathKnown in
                    let candidate = index.items[item]
                    guard isAllowed(candidate.entry) else { return }
                    consider(entry: candidate.entry, rule: candidate.rule, isMethodKnown: isMethodKnown, isPathKnown: isPathKnown)
                }
            } else {
                // The index is keyed by method and path; without one (a trace that gives
                // neither) every rule is checked, and those testing the absent fact fail.
                for candidate in index.items where isAllowed(candidate.entry) {
                    consider(entry: candidate.entry, rule: candidate.rule, isMethodKnown: false, isPathKnown: false)
                }
            }
        }
        for (entry, rules) in scannedHTTP {
            for rule in rules { consider(entry: entry, rule: rule, isMethodKnown: false, isPathKnown: false) }
        }
    }

    /// Evaluates one HTTP request once `decide(forRequest: true)` left it to the L7 rules.
    func evaluate(http request: HTTPRequestFacts, scanned scannedHTTP: [(entry: Int, rules: [HTTPRule])], hasHTTP: Bool)
        -> Verdict {
        guard hasHTTP else { return Verdict(isAllowed: false, reason: .l7ProtocolMismatch(expected: l7Name)) }
        var matched: [RuleReference] = []
        var matchedCount = 0
        var actions: [HeaderAction] = []
        var logs: [String] = []
        let entries = policy.entries
        forEachMatchingRule(http: request, scanned: scannedHTTP) { entry, rule, outcome in
            matchedCount += 1
            // (Appending an empty list to the empty one would still make a new array.)
            if !outcome.headerActions.isEmpty { actions += outcome.headerActions }
            let reference = entries[entry].reference.with(l7Rule: rule.index)
            matched.append(reference)
            logs += outcome.logMessages.map { "\(reference): \($0)" }
        }
        if matchedCount == 0 {
            return Verdict(isAllowed: false, reason: .noL7RuleMatches("\(request.method ?? "(no method)") \(request.path ?? "(no path)")"))
        }
        return Verdict(isAllowed: true, reason: .allowedAtL7, matched: matched, headerActions: actions, logMessages: logs)
    }

    /// `evaluate(http:)`'s decision and header actions, without a verdict.
    func decide(http request: HTTPRequestFacts, scanned scannedHTTP: [(entry: Int, rules: [HTTPRule])], hasHTTP: Bool)
        -> HTTPDecision {
        var decision = HTTPDecision(isAllowed: false, headerActions: [])
        guard hasHTTP else { return decision }
        forEachMatchingRule(http: request, scanned: scannedHTTP) { _, _, outcome in
            decision.isAllowed = true
            if !outcome.headerActions.isEmpty { decision.headerActions += outcome.headerActions }
        }
        return decision
    }

    /// Evaluates one Kafka request once `decide(forRequest: true)` left it to the L7 rules: key, version and client ID must
    /// match a rule, and every topic of the request must be covered by some matching rule.
    func evaluate(kafka request: KafkaRequestFacts) -> Verdict {
        let entries = policy.entries
        var rules: [(entry: Int, rule: KafkaRule)] = []
        var hasKafka = false
        for position in allows {
            guard case .kafka(let list)? = entries[position].l7 else { continue }
            hasKafka = true
            rules += list.map { (position, $0) }
        }
        guard hasKafka else { return Verdict(isAllowed: false, reason: .l7ProtocolMismatch(expected: l7Name)) }
        let applicable = rules.filter { $0.rule.matchesIgnoringTopic(request) }
        var matched: [RuleReference] = []
        if request.topics.isEmpty {
            matched = applicable.map { entries[$0.entry].reference.with(l7Rule: $0.rule.index) }
        } else {
            var references = Set<RuleReference>()
            for topic in request.topics {
                let covering = applicable.filter { $0.rule.topic == nil || $0.rule.topic == topic }
                if covering.isEmpty {
                    return Verdict(isAllowed: false, reason: .noL7RuleMatches("\(KafkaAPIKeys.name(of: request.apiKey)) topic \(topic) not covered"))
                }
                for item in covering { references.insert(entries[item.entry].reference.with(l7Rule: item.rule.index)) }
            }
            matched = Array(references)
        }
        if matched.isEmpty {
            return Verdict(isAllowed: false, reason: .noL7RuleMatches("\(KafkaAPIKeys.name(of: request.apiKey)) \(request.apiVersion.map { "v\($0)" } ?? "(no version)")"))
        }
        return Verdict(isAllowed: true, reason: .allowedAtL7, matched: matched)
    }

    /// `evaluate(dns:).isAllowed`: some DNS rule of an allowing clause matches the name.
    func allows(dns query: DNSQueryFacts) -> Bool {
        let entries = policy.entries
        for position in allows {
            guard case .dns(let matchers)? = entries[position].l7 else { continue }
            for matcher in matchers where matcher.matches(query.name) { return true }
        }
        return false
    }

    /// Evaluates one DNS question once `decide(forRequest: true)` left it to the L7 rules.
    func evaluate(dns query: DNSQueryFacts) -> Verdict {
        let entries = policy.entries
        var matched: [RuleReference] = []
        var hasDNS = false
        for position in allows {
            guard case .dns(let matchers)? = entries[position].l7 else { continue }
            hasDNS = true
            for (index, matcher) in matchers.enumerated() where matcher.matches(query.name) {
                matched.append(entries[position].reference.with(l7Rule: index))
            }
        }
        guard hasDNS else { return Verdict(isAllowed: false, reason: .l7ProtocolMismatch(expected: l7Name)) }
        if matched.isEmpty { return Verdict(isAllowed: false, reason: .noL7RuleMatches("query \(DNSName.normalize(query.name))")) }
        return Verdict(isAllowed: true, reason: .allowedAtL7, matched: matched)
    }
}
