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
public struct HTTPRequestFacts: Sendable {
    public let method: String
    /// The request target including the query string (`/a?b=1`), as Cilium matches it.
    public let path: String
    /// Host header or `:authority`, possibly with `:port`.
    public let host: String?
    public let headers: [(name: String, value: String)]

    public init(method: String, path: String, host: String? = nil, headers: [(name: String, value: String)] = []) {
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
    }

    func values(of name: String) -> [String] {
        headers.compactMap { $0.name.lowercased() == name ? $0.value : nil }
    }
}

/// A Kafka request as policy sees it.
public struct KafkaRequestFacts: Sendable {
    public let apiKey: Int16
    public let apiVersion: Int16
    public let clientID: String?
    /// Every topic named in the request (empty for APIs that carry none).
    public let topics: [String]

    public init(apiKey: Int16, apiVersion: Int16, clientID: String? = nil, topics: [String] = []) {
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
        self.matched = matched.sorted()
        self.headerActions = headerActions
        self.logMessages = logMessages
    }
}
