/// The application-layer question a trace asks, if any.
public enum TraceRequest: Sendable {
    case none
    case http(HTTPRequestFacts)
    case kafka(KafkaRequestFacts)
    case dns(DNSQueryFacts)
}

/// The answer to `policy trace`: egress at the source and ingress at the destination,
/// each explained, and the combined verdict (allowed only when both allow).
public struct TraceReport: Sendable {
    public struct Side: Sendable {
        public let direction: Direction
        public let endpoint: Identity
        /// Policies whose rules select the endpoint in this direction.
        public let selectingPolicies: [String]
        public let isEnforced: Bool
        public let verdict: Verdict
    }
    public let source: Identity
    public let destination: Identity
    /// Egress at the source (when it is a cluster endpoint or the host), then ingress at the destination.
    public let sides: [Side]
    public let isAllowed: Bool
    public let reason: String
    public let matched: [RuleReference]

    /// A readable explanation, one fact per line.
    public var explanation: String {
        var lines: [String] = []
        lines.append("From: \(source)")
        lines.append("To:   \(destination)")
        if sides.isEmpty { lines.append("Neither end is an endpoint policy applies to: nothing restricts the flow.") }
        for side in sides {
            let name = side.direction == .egress ? "Egress from source" : "Ingress to destination"
            lines.append("")
            lines.append("\(name):")
            if side.selectingPolicies.isEmpty {
                lines.append("  no policy selects the endpoint in this direction")
            } else {
                lines.append("  selected by: \(side.selectingPolicies.joined(separator: ", "))")
            }
            lines.append("  default deny: \(side.isEnforced ? "on" : "off")")
            for reference in side.verdict.matched { lines.append("  matched: \(reference)") }
            for action in side.verdict.headerActions { lines.append("  header action: \(action)") }
            for message in side.verdict.logMessages { lines.append("  log: \(message)") }
            lines.append("  => \(side.verdict.isAllowed ? "ALLOWED" : "DENIED"): \(side.verdict.reason)")
        }
        lines.append("")
        lines.append("Final verdict: \(isAllowed ? "ALLOWED" : "DENIED") (\(reason))")
        return lines.joined(separator: "\n")
    }
}

extension PolicySnapshot {
    /// True when some policy could select `identity` as a subject (a pod, or the host for node policies).
    static func isPolicySubject(_ identity: Identity) -> Bool {
        identity.isClusterEndpoint || identity.reservedKind == .host
    }

    /// Traces a flow from `source` to `destination`'s `port`, with an optional request.
    public func trace(from source: Identity, to destination: Identity, port: UInt16, transport: TransportProtocol,
                      request: TraceRequest = .none) -> TraceReport {
        var sides: [TraceReport.Side] = []
        for (direction, subject, remote) in [(Direction.egress, source, destination), (.ingress, destination, source)]
            where Self.isPolicySubject(subject) {
            let flow = FlowContext(subject: subject, direction: direction, remote: remote, port: port, transport: transport)
            let verdict: Verdict
            switch request {
            case .none: verdict = evaluate(flow: flow)
            case .http(let http): verdict = evaluate(flow: flow, http: http)
            case .kafka(let kafka): verdict = evaluate(flow: flow, kafka: kafka)
            case .dns(let dns): verdict = evaluate(flow: flow, dns: dns)
            }
            let policy = endpointPolicy(for: subject).direction(direction)
            sides.append(TraceReport.Side(direction: direction, endpoint: subject, selectingPolicies: policy.selectingPolicies,
                                          isEnforced: policy.isEnforced, verdict: verdict))
        }
        let denied = sides.first { !$0.verdict.isAllowed }
        let isAllowed = denied == nil
        let reason: String
        let matched: [RuleReference]
        if let denied {
            reason = "\(denied.direction == .egress ? "egress" : "ingress"): \(denied.verdict.reason)"
            matched = denied.verdict.matched
        } else if sides.isEmpty {
            reason = "no policy applies to either end"
            matched = []
        } else {
            reason = sides.map { "\($0.direction == .egress ? "egress" : "ingress"): \($0.verdict.reason)" }.joined(separator: "; ")
            matched = sides.flatMap(\.verdict.matched)
        }
        return TraceReport(source: source, destination: destination, sides: sides, isAllowed: isAllowed, reason: reason, matched: matched)
    }
}
