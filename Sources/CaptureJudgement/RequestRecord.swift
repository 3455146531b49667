import Proxy

/// An L7 request as its flow record tells it: what `--compare`, `--expect` and the summary
/// read, taken out of the record's JSON in one place.
struct RequestRecord {
    var verdict: String
    /// "http", "dns", "kafka" or "other".
    var protocolName: String
    /// "http GET /api", "dns example.com.", or the protocol name.
    var what: String {
        switch protocolName {
        case "http": return ["http", method, url].compactMap { $0 }.joined(separator: " ")
        case "dns": return ["dns", query].compactMap { $0 }.joined(separator: " ")
        default: return protocolName
        }
    }
    /// HTTP method and URL, DNS name, when the record has them.
    var method: String?
    var url: String?
    var query: String?
    /// "10.0.0.1:40000 -> 10.0.0.2:8080"
    var connection: String {
        let from = (sourceAddress ?? "?") + (sourcePort.map { ":\($0)" } ?? "")
        let to = (destinationAddress ?? "?") + (destinationPort.map { ":\($0)" } ?? "")
        return "\(from) -> \(to)"
    }
    var sourceAddress: String?
    var sourcePort: UInt64?
    var destinationAddress: String?
    var destinationPort: UInt16?
    /// The endpoints as recorded (`source`, `destination`: labels, namespace, ...).
    var source: JSONObject?
    var destination: JSONObject?
    /// The policies listed as denying it (`namespace/name`).
    var deniedBy: [String]

    /// What the summary counts of a request's record (nil for anything but an L7 request's
    /// record): read without the rest, on the writing thread, for every record of a replay.
    struct Tally {
        var protocolName: String
        var verdict: String
        var deniedBy: [String]
    }

    static func tally(_ record: JSONObject) -> Tally? {
        guard case .object(let l7)? = record["l7"], case .string("REQUEST")? = l7["type"],
              case .string(let verdict)? = record["verdict"] else { return nil }
        let protocolName = protocolName(l7)
        return Tally(protocolName: protocolName, verdict: verdict,
                     deniedBy: verdict == "DROPPED" ? deniedBy(record) : [])
    }

    private static func protocolName(_ l7: JSONObject) -> String {
        l7["http"] != nil ? "http" : l7["dns"] != nil ? "dns" : l7["kafka"] != nil ? "kafka" : "other"
    }

    private static func deniedBy(_ record: JSONObject) -> [String] {
        var deniedBy: [String] = []
        if case .array(let policies)? = record["ingress_denied_by"] ?? record["egress_denied_by"] {
            for case .object(let policy) in policies {
                switch (policy["namespace"], policy["name"]) {
                case (.string(let namespace)?, .string(let name)?): deniedBy.append("\(namespace)/\(name)")
                case (nil, .string(let name)?): deniedBy.append(name)
                default: break
                }
            }
        }
        return deniedBy
    }

    /// Nil for anything but an L7 request's record.
    init?(_ record: JSONObject) {
        guard case .object(let l7)? = record["l7"], case .string("REQUEST")? = l7["type"],
              case .string(let verdict)? = record["verdict"] else { return nil }
        self.verdict = verdict
        protocolName = Self.protocolName(l7)
        if case .object(let http)? = l7["http"] {
            if case .string(let method)? = http["method"] { self.method = method }
            if case .string(let url)? = http["url"] { self.url = url }
        } else if case .object(let dns)? = l7["dns"] {
            if case .string(let query)? = dns["query"] { self.query = query }
        }
        if case .object(let ip)? = record["IP"] {
            if case .string(let address)? = ip["source"] { sourceAddress = address }
            if case .string(let address)? = ip["destination"] { destinationAddress = address }
        }
        if case .object(let l4)? = record["l4"] {
            for (_, value) in l4.fields {
                if case .object(let ports) = value, case .unsigned(let from)? = ports["source_port"],
                   case .unsigned(let to)? = ports["destination_port"] {
                    sourcePort = from
                    destinationPort = UInt16(truncatingIfNeeded: to)
                }
            }
        }
        if case .object(let endpoint)? = record["source"] { source = endpoint }
        if case .object(let endpoint)? = record["destination"] { destination = endpoint }
        deniedBy = Self.deniedBy(record)
    }

    var isAllowed: Bool { verdict == "FORWARDED" }
}
