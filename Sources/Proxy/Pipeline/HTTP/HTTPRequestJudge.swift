import PolicyEngine

/// Phase "evaluate" for HTTP requests, whatever their wire format (HTTP/1.1 heads, HTTP/2
/// streams): one connection's requests judged by the compiled HTTP rules of the policies its
/// peer and port pass, under the current policy.
struct HTTPRequestJudge {
    /// The worker's view of the policy; nil: no policy section, every request is allowed.
    let policy: WorkerPolicy?
    /// The connection's ends, as the policy in force last saw them.
    private(set) var identities: ConnectionIdentities
    /// The connection's policy questions with their L3/L4 part settled, under the policy
    /// version `policyVersion`: each request only runs the L7 rules that apply to this
    /// peer and port, and a request after a policy change takes fresh ones first.
    private var policies: [ConnectionPolicy] {
        didSet { readsHeaders = policy == nil ? false : policies.contains { $0.httpReadsHeaders } }
    }
    private var policyVersion: UInt64
    /// Whether a request's header fields can matter to its verdict (checked before each
    /// request with `needsHeaders`): when not, the session need not turn them into facts.
    private var readsHeaders = true

    /// What the rules said of one request.
    struct Judgement {
        var allowed = true
        /// The rules that decided (the denying one, or every allowing one).
        var rules: [RuleReference] = []
        /// Header actions of the allowing rules, to apply before forwarding.
        var actions: [HeaderAction] = []
        /// Which policy direction decided (for the flow record).
        var direction = Direction.ingress
    }

    init(policy: WorkerPolicy?, identities: ConnectionIdentities) {
        self.policy = policy
        self.identities = identities
        policyVersion = policy?.version ?? 0
        policies = policy?.policies(for: identities) ?? []
        readsHeaders = policy == nil ? false : policies.contains { $0.httpReadsHeaders }
    }

    /// Whether the next request's header fields can matter to its verdict (under the policy
    /// in force now: call right before building the request's facts).
    mutating func needsHeaders() -> Bool {
        refreshPolicies()
        return readsHeaders
    }

    /// Judges one request; every policy the connection passes must allow it.
    mutating func judge(_ facts: HTTPRequestFacts) -> Judgement {
        var judgement = Judgement()
        refreshPolicies()
        guard policy != nil else { return judgement }
        for policy in policies {
            let flow = policy.flow
            let verdict = policy.evaluate(http: facts)
            if !verdict.isAllowed {
                judgement.allowed = false
                judgement.rules = verdict.matched
                judgement.direction = flow.direction
                break
            }
            judgement.rules += verdict.matched
            judgement.actions += verdict.headerActions
            if case .allowedAtL7 = verdict.reason { judgement.direction = flow.direction }
        }
        return judgement
    }

    /// Takes fresh identities and policy questions when the policy changed since they
    /// were taken (one atomic load when it did not).
    private mutating func refreshPolicies() {
        guard let policy, !policy.isCurrent(policyVersion) else { return }
        identities = policy.identities(client: identities.client, server: identities.server)
        policies = policy.policies(for: identities)
        policyVersion = policy.version
    }
}
