/// What the proxy asks about and what it is told. Plain Swift values, no wire formats.

/// The local endpoint, the direction, the peer and the port of a connection.
public struct FlowContext: Sendable, Hashable {
    /// The endpoint whose policy applies (source for egress, destination for ingress).
    public let subject: Identity
    public let direction: Direction
    /// The other end (destination for egress, source for ingress).
    public let remote: Identity
    /// Destination port (ICMP: the ICMP type).
    public let port: UInt16
    public let transport: TransportProtocol

    public init(subject: Identity, direction: Direction, remote: Identity, port: UInt16, transport: TransportProtocol) {
        self.subject = subject
        self.direction = direction
        self.remote = remote
        self.port = port
        self.transport = transport
    }
}

/// An HTTP request as policy sees it (HTTP/1.1 or HTTP/2 alike).
///
/// A fact that is absent (nil: `policy trace` without `--http-method`, a request without
/// a Host header) is not guessed: a rule that tests it does not match, and a rule that
/// does not test it still may. The proxy always knows the method and the path.
public struct HTTPRequestFacts: Sendable {
    public let method: String?
    /// The request target including the query string (`/a?b=1`), as Cilium matches it.
    public let path: String?
    /// Host header or `:authority`, possibly with `:port`.
    public let host: String?
    /// Header fields in the order received; a name may repeat.
    public let headers: [(name: String, value: String)]

    /// Callers with a method and a path pass them as they are (`String` converts).
    public init(method: String?, path: String?, host: String? = nil, headers: [(name: String, value: String)] = []) {
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
    }

    /// The value rules see for header `name` (lower case): nil when absent, the value
    /// when sent once, and every value joined with `,` in order when sent several times,
    /// as the reference's proxy sees a repeated header (RFC 9110 §5.3: a recipient "MAY
    /// combine multiple field lines with the same field name into one ... by appending
    /// each subsequent field line value to the combined field value in order, separated
    /// by a comma"). So `X-Token: wrong` then `X-Token: secret` reads `wrong,secret`, and
    /// a rule cannot be satisfied by one copy while the server acts on another.
    /// Allocates only when the name repeats.
    public func value(of name: String) -> String? {
        var value: String?
        for header in headers where Self.equalsIgnoringASCIICase(header.name, lowercased: name) {
            if value == nil {
                value = header.value
            } else {
                value?.append(",")
                value?.append(header.value)
            }
        }
        return value
    }

    /// True when header `name` (lower case) was sent at least once.
    public func contains(header name: String) -> Bool {
        headers.contains { Self.equalsIgnoringASCIICase($0.name, lowercased: name) }
    }

    /// ASCII case-insensitive comparison with an already lower-cased name, without
    /// allocating (field names are tokens: ASCII, RFC 9110 §5.1).
    static func equalsIgnoringASCIICase(_ text: String, lowercased name: String) -> Bool {
        guard text.utf8.count == name.utf8.count else { return false }
        return zip(text.utf8, name.utf8).allSatisfy { byte, lowered in
            (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte) == lowered
        }
    }
}

/// A Kafka request as policy sees it.
public struct KafkaRequestFacts: Sendable {
    public let apiKey: Int16
    /// Nil when not known (`policy trace` without `--kafka-api-version`): a rule that
    /// names a version does not match.
    public let apiVersion: Int16?
    public let clientID: String?
    /// Every topic named in the request (empty for APIs that carry none).
    public let topics: [String]

    /// Callers with a version pass it as it is (`Int16` converts).
    public init(apiKey: Int16, apiVersion: Int16?, clientID: String? = nil, topics: [String] = []) {
        self.apiKey = apiKey
        self.apiVersion = apiVersion
        self.clientID = clientID
        self.topics = topics
    }
}

/// A DNS question as policy sees it.
public struct DNSQueryFacts: Sendable {
    public let name: String
    public init(name: String) { self.name = name }
}

/// Which rule decided: enough for a flow record (`egress_allowed_by`, ...).
public struct RuleReference: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Position of the policy in the snapshot (load order).
    public let policyIndex: Int
    /// `NAMESPACE/NAME` (or `NAME` for clusterwide policies).
    public let policy: String
    public let direction: Direction
    /// True for `ingressDeny`/`egressDeny`.
    public let isDeny: Bool
    /// Index of the element in `ingress`/`egress`/... (counting `specs` in order).
    public let rule: Int
    /// Index in `toPorts`, when the decision came from a port rule.
    public let portRule: Int?
    /// Index in `rules.http`/`kafka`/`dns`, when an L7 rule decided.
    public let l7Rule: Int?

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.policyIndex, lhs.direction.rawValue, lhs.isDeny ? 1 : 0, lhs.rule, lhs.portRule ?? -1, lhs.l7Rule ?? -1)
            < (rhs.policyIndex, rhs.direction.rawValue, rhs.isDeny ? 1 : 0, rhs.rule, rhs.portRule ?? -1, rhs.l7Rule ?? -1)
    }

    func with(l7Rule: Int) -> RuleReference {
        RuleReference(policyIndex: policyIndex, policy: policy, direction: direction, isDeny: isDeny, rule: rule,
                      portRule: portRule, l7Rule: l7Rule)
    }

    public var description: String {
        var text = "\(policy) \(direction == .ingress ? "ingress" : "egress")\(isDeny ? "Deny" : "")[\(rule)]"
        if let portRule { text += ".toPorts[\(portRule)]" }
        if let l7Rule { text += ".rules[\(l7Rule)]" }
        return text
    }
}

/// A change to request headers that a `headerMatches` mismatch asks for.
public enum HeaderAction: Sendable, Hashable, CustomStringConvertible {
    /// ADD: append `name: value`.
    case add(name: String, value: HeaderValue)
    /// REPLACE: remove every `name` header, then add `name: value`.
    case replace(name: String, value: HeaderValue)
    /// DELETE: remove every `name` header.
    case remove(name: String)

    public var description: String {
        switch self {
        case .add(let name, let value): return "add \(name): \(value)"
        case .replace(let name, let value): return "replace \(name): \(value)"
        case .remove(let name): return "delete \(name)"
        }
    }
}

/// Why a verdict was reached.
public enum VerdictReason: Sendable, Hashable, CustomStringConvertible {
    /// No policy enforces this direction for the endpoint and nothing restricts the port.
    case notEnforced
    /// An allow rule matched at L3/L4 and has no L7 rules for this port.
    case allowedAtL4
    /// An L7 rule matched the request.
    case allowedAtL7
    /// A deny rule matched (deny wins over allow).
    case deniedByRule
    /// Default deny: the endpoint is selected in this direction and no rule allows the peer and port.
    case noRuleAllows
    /// The peer and port are allowed only with L7 rules, and none matches the request.
    case noL7RuleMatches(String)
    /// The port carries L7 rules of another protocol than the request's.
    case l7ProtocolMismatch(expected: String)

    public var description: String {
        switch self {
        case .notEnforced: return "no policy enforces this direction for the endpoint"
        case .allowedAtL4: return "allowed at L3/L4 by an allow rule without L7 restrictions"
        case .allowedAtL7: return "allowed by an L7 rule"
        case .deniedByRule: return "denied by a deny rule"
        case .noRuleAllows: return "default deny: no rule allows this peer and port"
        case .noL7RuleMatches(let detail): return "no L7 rule matches the request" + (detail.isEmpty ? "" : " (\(detail))")
        case .l7ProtocolMismatch(let expected): return "the port only allows \(expected) requests"
        }
    }
}

/// An HTTP request's decision and the header actions to apply when it is allowed: the part
/// of a `Verdict` that a caller recording nothing uses (`ConnectionPolicy.decide(http:)`).
public struct HTTPDecision: Sendable, Equatable {
    public var isAllowed: Bool
    public var headerActions: [HeaderAction]
}

/// The answer to one question.
public struct Verdict: Sendable {
    public let isAllowed: Bool
    public let reason: VerdictReason
    /// Rules that decided, sorted (allows that matched, or the deny rules that matched).
    public let matched: [RuleReference]
    /// Header changes to apply before forwarding (allowed HTTP requests only).
    public let headerActions: [HeaderAction]
    /// Messages for `headerMatches` with `mismatch: LOG` (secret values redacted).
    public let logMessages: [String]

    init(isAllowed: Bool, reason: VerdictReason, matched: [RuleReference] = [], headerActions: [HeaderAction] = [], logMessages: [String] = []) {
        self.isAllowed = isAllowed
        self.reason = reason
        // One rule (the common case) is sorted already: no new array for it.
        self.matched = matched.count > 1 ? matched.sorted() : matched
        self.headerActions = headerActions
        self.logMessages = logMessages
    }
}
