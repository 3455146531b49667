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
        guard let request = RequestRecord(record) else { return }
        add(request)
    }

    /// A request already read from its record (the counting reporter reads each once).
    func add(_ request: RequestRecord) {
        let base = request.connection + " " + request.what
        let number = seen[base, default: 0]
        seen[base] = number + 1
        if seen.count > 100_000 { seen.removeAll() } // bounded; numbering only tells repeats apart
        fresh.append((base + " #\(number)", request.connection, request.what, request.verdict))
    }

    func drain() -> [(key: String, connection: String, what: String, verdict: String)] {
        defer { fresh.removeAll(keepingCapacity: true) }
        return fresh
    }

}
