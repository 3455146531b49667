/// Every loaded policy compiled for every known endpoint: immutable, shareable across
/// threads, replaced whole (see `PolicySnapshotHolder`).
///
/// Compilation resolves, for each endpoint of the endpoints file (and the host), which
/// rules select it in each direction, and builds per (direction, port, protocol) the
/// list of applicable port clauses and an index of their HTTP rules (`HTTPRuleIndex`).
/// Evaluating a request then touches only the clauses of that port and the HTTP rules
/// the index admits. Endpoints not in the directory (ad-hoc label lists in `policy
/// trace`) are compiled on demand and not kept.
///
/// `evaluate(...)` finds the subject's compiled policy on every call; the proxy holds
/// `policy(forEndpoint:)` per endpoint, or its `connection(_:)` per connection, and
/// evaluates through those (same answers, without the lookup and the L3/L4 part).
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
                            // A rule that selects no peer (`ingress: [{}]`, `fromEndpoints: []`)
                            // allows or denies nothing; its section still turned default deny on.
                            if let peers = peerRule.peers, peers.isEmpty { continue }
                            let base = RuleReference(policyIndex: policyIndex, policy: policy.qualifiedName, direction: direction,
                                                     isDeny: isDeny, rule: peerRule.index, portRule: nil, l7Rule: nil)
                            if peerRule.portRules.isEmpty {
                                entries.append(PortEntry(reference: base, peers: peerRule.peers, ports: [], icmpTypes: peerRule.icmpTypes, l7: nil))
                            }
                            // A port rule without ports (`toPorts: [{}]`) covers no port.
                            for portRule in peerRule.portRules where !portRule.ports.isEmpty {
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

    /// A handle on `subject`'s compiled policy in this snapshot, for a caller that
    /// evaluates many flows or requests of the same endpoint (the proxy keeps one per
    /// connection, or a `ConnectionPolicy` from it): it skips finding the endpoint's
    /// policy by its labels on every call. An endpoint unknown to the snapshot's
    /// directory is compiled here, once per handle.
    public func policy(forEndpoint subject: Identity) -> EndpointPolicyHandle {
        EndpointPolicyHandle(subject: subject, generation: generation, policy: endpointPolicy(for: subject))
    }

    /// Evaluates a connection at L3/L4 (a port with L7 rules is allowed here; its requests are checked one by one).
    public func evaluate(flow: FlowContext) -> Verdict {
        policy(forEndpoint: flow.subject).evaluate(flow: flow)
    }

    /// Evaluates one HTTP request on an allowed connection.
    public func evaluate(flow: FlowContext, http request: HTTPRequestFacts) -> Verdict {
        policy(forEndpoint: flow.subject).evaluate(flow: flow, http: request)
    }

    /// Evaluates one Kafka request: key, version and client ID must match a rule, and
    /// every topic of the request must be covered by some matching rule.
    public func evaluate(flow: FlowContext, kafka request: KafkaRequestFacts) -> Verdict {
        policy(forEndpoint: flow.subject).evaluate(flow: flow, kafka: request)
    }

    /// Evaluates one DNS question (egress to a DNS server, or the same matcher for toFQDNs peers).
    public func evaluate(flow: FlowContext, dns query: DNSQueryFacts) -> Verdict {
        policy(forEndpoint: flow.subject).evaluate(flow: flow, dns: query)
    }

    /// The application protocols whose L7 rules judge requests on `flow`; empty when the
    /// L3/L4 part decides them all (see `ConnectionPolicy.l7Protocols`, the same answer
    /// kept per connection). Works for any transport: a DNS port over UDP answers `[.dns]`.
    public func l7Protocols(for flow: FlowContext) -> Set<L7Protocol> {
        policy(forEndpoint: flow.subject).l7Protocols(for: flow)
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
