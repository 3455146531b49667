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

    /// Nil for anything but an L7 request's record.
    init?(_ record: JSONObject) {
        guard case .object(let l7)? = record["l7"], case .string("REQUEST")? = l7["type"],
              case .string(let verdict)? = record["verdict"] else { return nil }
        self.verdict = verdict
        if case .object(let http)? = l7["http"] {
            protocolName = "http"
            if case .string(let method)? = http["method"] { self.method = method }
            if case .string(let url)? = http["url"] { self.url = url }
        } else if case .object(let dns)? = l7["dns"] {
            protocolName = "dns"
            if case .string(let query)? = dns["query"] { self.query = query }
        } else {
            protocolName = l7["kafka"] != nil ? "kafka" : "other"
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
        deniedBy = []
        if case .array(let policies)? = record["ingress_denied_by"] ?? record["egress_denied_by"] {
            for case .object(let policy) in policies {
                switch (policy["namespace"], policy["name"]) {
                case (.string(let namespace)?, .string(let name)?): deniedBy.append("\(namespace)/\(name)")
                case (nil, .string(let name)?): deniedBy.append(name)
                default: break
                }
            }
        }
    }

    var isAllowed: Bool { verdict == "FORWARDED" }
}
