/// Every loaded policy compiled for every known endpoint: immutable, shareable across
/// threads, replaced whole (see `PolicySnapshotHolder`).
///
/// Compilation resolves, for each endpoint of the endpoints file (and the host), which
/// rules select it in each direction, and builds per (direction, port, protocol) the
/// list of applicable port clauses and an index of their HTTP rules. Evaluating a
/// request then touches only the clauses of that port and the HTTP rules the index
/// admits. Endpoints not in the directory (ad-hoc label lists in `policy trace`) are
/// compiled on demand and not kept.
public final class PolicySnapshot: Sendable {
    public let policies: [Policy]
    public let endpoints: EndpointDirectory
    /// Incremented by the holder on each replacement; 0 for a snapshot built alone.
    public let generation: UInt64

    private struct CompiledKey: Hashable {
        let labels: LabelSet
        let namedPorts: [NamedPort]
    }
    private let compiled: [CompiledKey: EndpointPolicy]

    /// Compiles `policies` for every identity of `endpoints` and for the host.
    public init(policies: [Policy], endpoints: EndpointDirectory = EndpointDirectory(), generation: UInt64 = 0) {
        self.policies = policies
        self.endpoints = endpoints
        self.generation = generation
        var compiled: [CompiledKey: EndpointPolicy] = [:]
        for identity in endpoints.identities + [.reserved(.host)] {
            let key = CompiledKey(labels: identity.labels, namedPorts: identity.namedPorts)
            if compiled[key] == nil { compiled[key] = Self.compile(policies: policies, subject: identity) }
        }
        self.compiled = compiled
    }

    /// Number of endpoint policies compiled ahead of time.
    public var compiledEndpointCount: Int { compiled.count }

    func endpointPolicy(for subject: Identity) -> EndpointPolicy {
        compiled[CompiledKey(labels: subject.labels, namedPorts: subject.namedPorts)]
            ?? Self.compile(policies: policies, subject: subject)
    }

    /// True when the rule's subject selector picks `identity`.
    static func selects(_ rule: PolicyRule, _ identity: Identity) -> Bool {
        switch rule.subject {
        case .endpoints(let selector): return identity.isClusterEndpoint && selector.matches(identity.labels)
        case .nodes(let selector): return identity.reservedKind == .host && selector.matches(identity.labels)
        }
    }

    static func compile(policies: [Policy], subject: Identity) -> EndpointPolicy {
        func direction(_ direction: Direction) -> DirectionPolicy {
            var entries: [PortEntry] = []
            var enforced = false
            var requirements: [LabelSelector] = []
            var selecting: [String] = []
            for (policyIndex, policy) in policies.enumerated() {
                var selected = false
                for rule in policy.rules where selects(rule, subject) {
                    let allows = rule.rules(direction, deny: false)
                    let denies = rule.rules(direction, deny: true)
                    if rule.defaultDeny(direction) { enforced = true }
                    if !allows.isEmpty || !denies.isEmpty || rule.defaultDeny(direction) { selected = true }
                    for (isDeny, list) in [(false, allows), (true, denies)] {
                        for peerRule in list {
                            requirements += peerRule.requires
                            let base = RuleReference(policyIndex: policyIndex, policy: policy.qualifiedName, direction: direction,
                                                     isDeny: isDeny, rule: peerRule.index, portRule: nil, l7Rule: nil)
                            if peerRule.portRules.isEmpty {
                                entries.append(PortEntry(reference: base, peers: peerRule.peers, ports: [], icmpTypes: peerRule.icmpTypes, l7: nil))
                            }
                            for portRule in peerRule.portRules {
                                let reference = RuleReference(policyIndex: policyIndex, policy: policy.qualifiedName, direction: direction,
                                                              isDeny: isDeny, rule: peerRule.index, portRule: portRule.index, l7Rule: nil)
                                entries.append(PortEntry(reference: reference, peers: peerRule.peers, ports: portRule.ports, icmpTypes: [], l7: portRule.l7))
                            }
                        }
                    }
                }
                if selected { selecting.append(policy.qualifiedName) }
            }
            return DirectionPolicy(direction: direction, subject: subject, isEnforced: enforced, entries: entries,
                                   requirements: requirements, selectingPolicies: selecting)
        }
        return EndpointPolicy(ingress: direction(.ingress), egress: direction(.egress))
    }

    // MARK: Evaluation

    /// The L3/L4 part every evaluation shares.
    private struct L4Match {
        let policy: DirectionPolicy
        let slot: DirectionPolicy.Slot?
        /// Matching allow entries (after requirements), in entry order.
        let allows: [Int]
        let denies: [Int]
        /// Allow entries whose peers match, as a lookup for the HTTP index.
        let allowed: Set<Int>
    }

    private func matchL4(_ flow: FlowContext) -> L4Match {
        let policy = endpointPolicy(for: flow.subject).direction(flow.direction)
        let (covering, slot) = policy.entriesCovering(flow)
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
        return L4Match(policy: policy, slot: slot, allows: allows, denies: denies, allowed: Set(allows))
    }

    /// Decides the parts common to every request type; nil means "L7 rules decide".
    private func decideL4(_ match: L4Match, forRequest: Bool) -> Verdict? {
        if !match.denies.isEmpty {
            return Verdict(isAllowed: false, reason: .deniedByRule, matched: match.denies.map { match.policy.entries[$0].reference })
        }
        if match.allows.isEmpty {
            return match.policy.isEnforced ? Verdict(isAllowed: false, reason: .noRuleAllows) : Verdict(isAllowed: true, reason: .notEnforced)
        }
        let plain = match.allows.filter { match.policy.entries[$0].l7 == nil }
        if !forRequest || !plain.isEmpty {
            // An allow without L7 rules for this peer and port admits every request on it.
            let deciding = plain.isEmpty ? match.allows : plain
            return Verdict(isAllowed: true, reason: .allowedAtL4, matched: deciding.map { match.policy.entries[$0].reference })
        }
        return nil
    }

    /// Evaluates a connection at L3/L4 (a port with L7 rules is allowed here; its requests are checked one by one).
    public func evaluate(flow: FlowContext) -> Verdict {
        decideL4(matchL4(flow), forRequest: false)!
    }

    /// Evaluates one HTTP request on an allowed connection.
    public func evaluate(flow: FlowContext, http request: HTTPRequestFacts) -> Verdict {
        let match = matchL4(flow)
        if let verdict = decideL4(match, forRequest: true) { return verdict }
        var candidates: [(entry: Int, rule: HTTPRule)] = []
        var indexed = Set<Int>()
        if let index = match.slot?.http {
            for item in index.candidates(method: request.method, path: request.path) {
                let entry = index.items[item].entry
                indexed.insert(entry)
                if match.allowed.contains(entry) { candidates.append((entry, index.items[item].rule)) }
            }
        }
        var hasHTTP = false
        for position in match.allows {
            guard case .http(let rules)? = match.policy.entries[position].l7 else { continue }
            hasHTTP = true
            // Entries outside the slot's index (peer-dependent named ports) are scanned.
            if match.slot?.http == nil || !(match.slot!.entries.contains(position)) {
                if !indexed.contains(position) { candidates += rules.map { (position, $0) } }
            }
        }
        guard hasHTTP else { return Verdict(isAllowed: false, reason: .l7ProtocolMismatch(expected: l7Name(match))) }
        var matched: [RuleReference] = []
        var actions: [HeaderAction] = []
        var logs: [String] = []
        for candidate in candidates {
            let outcome = candidate.rule.evaluate(request)
            guard outcome.matched else { continue }
            let reference = match.policy.entries[candidate.entry].reference.with(l7Rule: candidate.rule.index)
            matched.append(reference)
            actions += outcome.headerActions
            logs += outcome.logMessages.map { "\(reference): \($0)" }
        }
        if matched.isEmpty {
            return Verdict(isAllowed: false, reason: .noL7RuleMatches("\(request.method) \(request.path)"))
        }
        return Verdict(isAllowed: true, reason: .allowedAtL7, matched: matched, headerActions: actions, logMessages: logs)
    }

    /// Evaluates one Kafka request: key, version and client ID must match a rule, and
    /// every topic of the request must be covered by some matching rule.
    public func evaluate(flow: FlowContext, kafka request: KafkaRequestFacts) -> Verdict {
        let match = matchL4(flow)
        if let verdict = decideL4(match, forRequest: true) { return verdict }
        var rules: [(entry: Int, rule: KafkaRule)] = []
        var hasKafka = false
        for position in match.allows {
            guard case .kafka(let list)? = match.policy.entries[position].l7 else { continue }
            hasKafka = true
            rules += list.map { (position, $0) }
        }
        guard hasKafka else { return Verdict(isAllowed: false, reason: .l7ProtocolMismatch(expected: l7Name(match))) }
        let applicable = rules.filter { $0.rule.matchesIgnoringTopic(request) }
        var matched: [RuleReference] = []
        if request.topics.isEmpty {
            matched = applicable.map { match.policy.entries[$0.entry].reference.with(l7Rule: $0.rule.index) }
        } else {
            var references = Set<RuleReference>()
            for topic in request.topics {
                let covering = applicable.filter { $0.rule.topic == nil || $0.rule.topic == topic }
                if covering.isEmpty {
                    return Verdict(isAllowed: false, reason: .noL7RuleMatches("\(KafkaAPIKeys.name(of: request.apiKey)) topic \(topic) not covered"))
                }
                for item in covering { references.insert(match.policy.entries[item.entry].reference.with(l7Rule: item.rule.index)) }
            }
            matched = Array(references)
        }
        if matched.isEmpty {
            return Verdict(isAllowed: false, reason: .noL7RuleMatches("\(KafkaAPIKeys.name(of: request.apiKey)) v\(request.apiVersion)"))
        }
        return Verdict(isAllowed: true, reason: .allowedAtL7, matched: matched)
    }

    /// Evaluates one DNS question (egress to a DNS server, or the same matcher for toFQDNs peers).
    public func evaluate(flow: FlowContext, dns query: DNSQueryFacts) -> Verdict {
        let match = matchL4(flow)
        if let verdict = decideL4(match, forRequest: true) { return verdict }
        var matched: [RuleReference] = []
        var hasDNS = false
        for position in match.allows {
            guard case .dns(let matchers)? = match.policy.entries[position].l7 else { continue }
            hasDNS = true
            for (index, matcher) in matchers.enumerated() where matcher.matches(query.name) {
                matched.append(match.policy.entries[position].reference.with(l7Rule: index))
            }
        }
        guard hasDNS else { return Verdict(isAllowed: false, reason: .l7ProtocolMismatch(expected: l7Name(match))) }
        if matched.isEmpty { return Verdict(isAllowed: false, reason: .noL7RuleMatches("query \(DNSName.normalize(query.name))")) }
        return Verdict(isAllowed: true, reason: .allowedAtL7, matched: matched)
    }

    private func l7Name(_ match: L4Match) -> String {
        let names = Set(match.allows.compactMap { match.policy.entries[$0].l7?.typeName.uppercased() })
        return names.sorted().joined(separator: "/")
    }
}

extension KafkaRule {
    /// Key (or role), version and client ID; the topic is checked by the caller.
    func matchesIgnoringTopic(_ request: KafkaRequestFacts) -> Bool {
        if let apiKeys, !apiKeys.contains(request.apiKey) { return false }
        if let apiVersion, apiVersion != request.apiVersion { return false }
        if let clientID, clientID != request.clientID { return false }
        return true
    }
}
