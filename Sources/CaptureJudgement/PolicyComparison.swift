import PolicyEngine
import Proxy

/// One request (or connection) whose verdict differs between two policy sets.
public struct VerdictChange: Sendable, Equatable, CustomStringConvertible {
    /// "10.0.0.1:40000 -> 10.0.0.2:8080"
    public var connection: String
    /// "http GET /admin", "dns evil.example.com.", or "connection" for a whole connection.
    public var what: String
    public var before: String
    public var after: String

    public var description: String { "\(connection) \(what): \(before) -> \(after)" }
}

/// Collects, per policy set, the L7 request verdicts one capture event produced, so that
/// two sets judging the same recording side by side can be compared event by event (memory
/// stays bounded whatever the capture's length).
final class VerdictLedger: L7FlowReporter {
    private let next: L7FlowReporter?
    /// Requests judged since the last `drain`, by key (connection, protocol, request text,
    /// and its number among identical ones on that connection).
    private(set) var fresh: [(key: String, connection: String, what: String, verdict: String)] = []
    private var seen: [String: Int] = [:]

    init(next: L7FlowReporter?) { self.next = next }

    func report(_ record: JSONObject) {
        next?.report(record)
        guard case .object(let l7)? = record["l7"], case .string("REQUEST")? = l7["type"],
              case .string(let verdict)? = record["verdict"] else { return }
        let connection = Self.connection(of: record)
        let what: String
        if case .object(let http)? = l7["http"], case .string(let method)? = http["method"], case .string(let url)? = http["url"] {
            what = "http \(method) \(url)"
        } else if case .object(let dns)? = l7["dns"], case .string(let query)? = dns["query"] {
            what = "dns \(query)"
        } else {
            what = "request"
        }
        let base = connection + " " + what
        let number = seen[base, default: 0]
        seen[base] = number + 1
        if seen.count > 100_000 { seen.removeAll() } // bounded; numbering only tells repeats apart
        fresh.append((base + " #\(number)", connection, what, verdict))
    }

    func drain() -> [(key: String, connection: String, what: String, verdict: String)] {
        defer { fresh.removeAll(keepingCapacity: true) }
        return fresh
    }

    static func connection(of record: JSONObject) -> String {
        guard case .object(let ip)? = record["IP"], case .string(let source)? = ip["source"],
              case .string(let destination)? = ip["destination"] else { return "?" }
        var ports = ("", "")
        if case .object(let l4)? = record["l4"] {
            for (_, value) in l4.fields {
                if case .object(let fields) = value, case .unsigned(let from)? = fields["source_port"],
                   case .unsigned(let to)? = fields["destination_port"] {
                    ports = (":\(from)", ":\(to)")
                }
            }
        }
        return "\(source)\(ports.0) -> \(destination)\(ports.1)"
    }
}
