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
        didSet { headerNames = Self.headerNames(policy: policy, policies) }
    }
    private var policyVersion: UInt64
    /// The header fields a request's verdict can depend on (checked before each request with
    /// `needsHeaders` or `fieldsToRead`): the session turns only these into facts.
    private var headerNames: HTTPHeaderNames

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
        headerNames = Self.headerNames(policy: policy, policies)
    }

    private static func headerNames(policy: WorkerPolicy?, _ policies: [ConnectionPolicy]) -> HTTPHeaderNames {
        guard policy != nil else { return HTTPHeaderNames([]) }
        return HTTPHeaderNames(policies.reduce(into: Set<String>()) { $0.formUnion($1.httpHeaderNames) })
    }

    /// Whether the next request's header fields can matter to its verdict (under the policy
    /// in force now: call right before building the request's facts).
    mutating func needsHeaders() -> Bool {
        refreshPolicies()
        return !headerNames.isEmpty
    }

    /// The header fields the next request's verdict can depend on, by name (under the policy
    /// in force now: call right before building the request's facts). Fields not named by
    /// any rule cannot change a verdict, so they need not become facts.
    mutating func fieldsToRead() -> HTTPHeaderNames {
        refreshPolicies()
        return headerNames
    }

    /// Judges one request; every policy the connection passes must allow it.
    /// With `references` false (nothing records the request) an allowed request's judgement
    /// names no rules; its decision and actions are the same.
    mutating func judge(_ facts: HTTPRequestFacts, references: Bool = true) -> Judgement {
        var judgement = Judgement()
        refreshPolicies()
        guard policy != nil else { return judgement }
        if !references {
            // Nothing records the request: its decision and actions, without verdicts.
            for policy in policies {
                let decision = policy.decide(http: facts)
                if !decision.isAllowed {
                    judgement.allowed = false
                    judgement.direction = policy.flow.direction
                    break
                }
                if !decision.headerActions.isEmpty { judgement.actions += decision.headerActions }
                if !policy.isDecidedAtL4 { judgement.direction = policy.flow.direction }
            }
            return judgement
        }
        for policy in policies {
            let verdict = policy.evaluate(http: facts)
            if !verdict.isAllowed {
                judgement.allowed = false
                judgement.rules = verdict.matched
                judgement.direction = policy.flow.direction
                break
            }
            // The first allowing policy's lists are taken as they are (no copy into empty ones).
            if judgement.rules.isEmpty { judgement.rules = verdict.matched } else { judgement.rules += verdict.matched }
            if judgement.actions.isEmpty {
                judgement.actions = verdict.headerActions
            } else {
                judgement.actions += verdict.headerActions
            }
            if case .allowedAtL7 = verdict.reason { judgement.direction = policy.flow.direction }
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

/// Lower-cased header field names, compared with the bytes of a field's name without
/// making text of it (ASCII case-insensitively: field names are tokens, RFC 9110 §5.1).
struct HTTPHeaderNames {
    private let names: [[UInt8]]

    init(_ names: Set<String>) {
        self.names = names.map { Array($0.lowercased().utf8) }.sorted { $0.lexicographicallyPrecedes($1) }
    }

    var isEmpty: Bool { names.isEmpty }

    /// Whether `name` is one of the names, in any letter case.
    func contains(_ name: UnsafeRawBufferPointer) -> Bool {
        for candidate in names where candidate.count == name.count {
            var equal = true
            for index in 0..<name.count {
                let byte = name[index]
                let lowered = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
                if lowered != candidate[index] { equal = false; break }
            }
            if equal { return true }
        }
        return false
    }
}
