#if canImport(Glibc)
import Glibc
#endif
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
        didSet {
            headerNames = Self.headerNames(policy: policy, policies)
            recent.removeAll()
        }
    }
    private var policyVersion: UInt64
    /// The header fields a request's verdict can depend on (checked before each request with
    /// `needsHeaders` or `fieldsToRead`): the session turns only these into facts.
    private var headerNames: HTTPHeaderNames
    /// What the rules said of this connection's last few distinct requests, under the
    /// policies above (emptied when they change). Kept only while no rule reads a header
    /// field: a judgement is then a function of method, path and host, so a request asked
    /// again (a client calling the same gRPC method, polling the same URL) is not run through
    /// the rules again (HAProxy likewise keeps an LRU cache of pattern-match results,
    /// `tune.pattern.cache-size`).
    private var recent = RecentJudgements()

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
        refreshPolicies()
        guard policy != nil else { return Judgement() }
        // Header fields that no rule reads are not facts (the callers drop them), and with
        // none read the facts are method, path and host alone.
        guard headerNames.isEmpty else { return evaluate(facts, references: references) }
        if let known = recent.judgement(of: facts, references: references) { return known }
        let judgement = evaluate(facts, references: references)
        recent.remember(judgement, of: facts, references: references)
        return judgement
    }

    /// Whether the judgement of `facts` was taken from the recent ones (for tests).
    func isRecent(_ facts: HTTPRequestFacts, references: Bool) -> Bool {
        recent.judgement(of: facts, references: references) != nil
    }

    /// The rules' judgement of `facts` under the current policies.
    private func evaluate(_ facts: HTTPRequestFacts, references: Bool) -> Judgement {
        var judgement = Judgement()
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
        // Asked through the optional (binding the policy to a name would count a reference).
        guard policy?.isCurrent(policyVersion) == false, let policy else { return }
        identities = policy.identities(client: identities.client, server: identities.server)
        policies = policy.policies(for: identities)
        policyVersion = policy.version
    }
}

/// The judgements of a connection's last few distinct requests (method, path, host, and
/// whether rule references were asked for, compared byte for byte), replaced oldest first.
/// Bounded: `capacity` entries, and a request whose method, path and host are longer than
/// `maximumKeyBytes` together is not kept. A connection's first request is not kept: one
/// that asks once and then idles (most of those a node holds) costs no memory for it.
struct RecentJudgements {
    static let capacity = 4
    static let maximumKeyBytes = 512

    private struct Entry {
        let method: String?
        let path: String?
        let host: String?
        let references: Bool
        let judgement: HTTPRequestJudge.Judgement
    }

    private var entries: [Entry] = []
    /// The entry replaced next once all are used.
    private var oldest = 0
    /// A judgement was offered before (the connection's first is not kept).
    private var offered = false

    func judgement(of facts: HTTPRequestFacts, references: Bool) -> HTTPRequestJudge.Judgement? {
        for index in entries.indices {
            if entries[index].references == references, Self.sameBytes(entries[index].path, facts.path),
               Self.sameBytes(entries[index].method, facts.method), Self.sameBytes(entries[index].host, facts.host) {
                return entries[index].judgement
            }
        }
        return nil
    }

    /// Byte for byte: `String`'s `==` holds canonically equivalent texts equal ("é" and "e"
    /// with a combining accent), which the rules, matching bytes, may tell apart.
    static func sameBytes(_ left: String?, _ right: String?) -> Bool {
        guard let left, let right else { return left == nil && right == nil }
        // Two strings whose two words are the same are the same bytes: one storage, or the
        // same small string (up to 15 bytes held in the words themselves, as most methods,
        // hosts and paths are). Read without counting a reference; anything else is compared below.
        if unsafeBitCast(left, to: (UInt64, UInt64).self) == unsafeBitCast(right, to: (UInt64, UInt64).self) {
            return true
        }
        guard left.utf8.count == right.utf8.count else { return false }
        let compared = left.utf8.withContiguousStorageIfAvailable { leftBytes in
            right.utf8.withContiguousStorageIfAvailable { rightBytes in
                leftBytes.isEmpty || memcmp(leftBytes.baseAddress!, rightBytes.baseAddress!, leftBytes.count) == 0
            }
        }
        return (compared ?? nil) ?? left.utf8.elementsEqual(right.utf8)
    }

    mutating func remember(_ judgement: HTTPRequestJudge.Judgement, of facts: HTTPRequestFacts, references: Bool) {
        guard offered else { return offered = true }
        let keyBytes = (facts.method?.utf8.count ?? 0) + (facts.path?.utf8.count ?? 0) + (facts.host?.utf8.count ?? 0)
        guard keyBytes <= Self.maximumKeyBytes else { return }
        let entry = Entry(method: facts.method, path: facts.path, host: facts.host, references: references,
                          judgement: judgement)
        if entries.count < Self.capacity {
            entries.append(entry)
        } else {
            entries[oldest] = entry
            oldest = (oldest + 1) % Self.capacity
        }
    }

    mutating func removeAll() {
        entries.removeAll()
        oldest = 0
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
