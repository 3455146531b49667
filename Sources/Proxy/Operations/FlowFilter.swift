import Foundation

/// The filters of `sluice observe`, in the manner of `hubble observe`: every filter given
/// must match (AND); a filter given several times matches when any of its values does (OR).
/// They read the records as made (`JSONObject`), never their JSON text.
public struct FlowFilter: Sendable, Codable, Equatable {
    public var verdicts: [String] = []
    /// Either end's namespace.
    public var namespaces: [String] = []
    /// Either end's pod (`name` prefix, or `namespace/name`); `fromPods`/`toPods` one end.
    public var pods: [String] = []
    public var fromPods: [String] = []
    public var toPods: [String] = []
    /// `key=value` or `source:key=value` (Kubernetes label form); several in one value,
    /// separated by commas, must all be present.
    public var labels: [String] = []
    public var fromLabels: [String] = []
    public var toLabels: [String] = []
    /// http, dns, kafka (the L7 object) or tcp, udp (the L4 object).
    public var protocols: [String] = []
    /// l7, drop (L3/L4 drops), trace (other L3/L4 records).
    public var types: [String] = []
    public var httpMethods: [String] = []
    /// Regular expressions searched in the HTTP URL (unanchored, as Hubble's).
    public var httpPaths: [String] = []
    /// `200`, or a class as `4+` / `5+`.
    public var httpStatuses: [String] = []
    /// Either end's L4 port.
    public var ports: [UInt16] = []

    public init() {}

    /// Every field may be left out (an empty list: no such filter).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func list<T: Decodable>(_ key: CodingKeys) throws -> [T] { try container.decodeIfPresent([T].self, forKey: key) ?? [] }
        verdicts = try list(.verdicts)
        namespaces = try list(.namespaces)
        pods = try list(.pods)
        fromPods = try list(.fromPods)
        toPods = try list(.toPods)
        labels = try list(.labels)
        fromLabels = try list(.fromLabels)
        toLabels = try list(.toLabels)
        protocols = try list(.protocols)
        types = try list(.types)
        httpMethods = try list(.httpMethods)
        httpPaths = try list(.httpPaths)
        httpStatuses = try list(.httpStatuses)
        ports = try list(.ports)
    }

    public static let protocolNames: Set<String> = ["http", "dns", "kafka", "tcp", "udp"]
    public static let typeNames: Set<String> = ["l7", "drop", "trace"]
    public static let verdictNames: Set<String> = ["FORWARDED", "DROPPED", "ERROR", "REDIRECTED"]

    public enum Invalid: Error, CustomStringConvertible {
        case value(flag: String, value: String, expected: String)
        public var description: String {
            switch self {
            case .value(let flag, let value, let expected): return "--\(flag): '\(value)' is not valid; expected \(expected)"
            }
        }
    }

    /// Throws, naming the flag, when a value cannot be a filter (an unknown verdict, a bad
    /// regular expression, a status that is not `NNN` or `N+`).
    public func validate() throws {
        for verdict in verdicts where !Self.verdictNames.contains(verdict.uppercased()) {
            throw Invalid.value(flag: "verdict", value: verdict, expected: "FORWARDED, DROPPED, ERROR or REDIRECTED")
        }
        for name in protocols where !Self.protocolNames.contains(name.lowercased()) {
            throw Invalid.value(flag: "protocol", value: name, expected: "http, dns, kafka, tcp or udp")
        }
        for name in types where !Self.typeNames.contains(name.lowercased()) {
            throw Invalid.value(flag: "type", value: name, expected: "l7, drop or trace")
        }
        for path in httpPaths where (try? NSRegularExpression(pattern: path)) == nil {
            throw Invalid.value(flag: "http-path", value: path, expected: "a regular expression")
        }
        for status in httpStatuses where Self.statusRange(status) == nil {
            throw Invalid.value(flag: "http-status", value: status, expected: "a status such as 403, or a class such as 5+")
        }
    }

    /// Codes `status` covers: `403` -> 403...403, `4+` -> 400...499.
    static func statusRange(_ status: String) -> ClosedRange<Int>? {
        if status.count == 2, status.hasSuffix("+"), let digit = Int(status.prefix(1)), (1...5).contains(digit) {
            return (digit * 100)...(digit * 100 + 99)
        }
        guard status.count == 3, let code = Int(status), (100...599).contains(code) else { return nil }
        return code...code
    }

    /// Compiled once per observer (regular expressions), then matched against each record.
    public struct Compiled: @unchecked Sendable {
        let filter: FlowFilter
        let paths: [NSRegularExpression]
        let statuses: [ClosedRange<Int>]

        public func matches(_ record: JSONObject) -> Bool {
            let view = RecordView(record)
            let filter = self.filter
            if !filter.verdicts.isEmpty, !filter.verdicts.contains(where: { $0.uppercased() == view.verdict }) { return false }
            if !filter.types.isEmpty, !filter.types.contains(where: { view.kind == $0.lowercased() }) { return false }
            if !filter.protocols.isEmpty, !filter.protocols.contains(where: { view.protocols.contains($0.lowercased()) }) { return false }
            if !filter.namespaces.isEmpty,
               !filter.namespaces.contains(where: { $0 == view.source.namespace || $0 == view.destination.namespace }) { return false }
            if !filter.pods.isEmpty, !filter.pods.contains(where: { view.source.isPod($0) || view.destination.isPod($0) }) { return false }
            if !filter.fromPods.isEmpty, !filter.fromPods.contains(where: view.source.isPod) { return false }
            if !filter.toPods.isEmpty, !filter.toPods.contains(where: view.destination.isPod) { return false }
            if !filter.labels.isEmpty,
               !filter.labels.contains(where: { view.source.hasLabels($0) || view.destination.hasLabels($0) }) { return false }
            if !filter.fromLabels.isEmpty, !filter.fromLabels.contains(where: view.source.hasLabels) { return false }
            if !filter.toLabels.isEmpty, !filter.toLabels.contains(where: view.destination.hasLabels) { return false }
            if !filter.ports.isEmpty, !filter.ports.contains(where: { $0 == view.sourcePort || $0 == view.destinationPort }) {
                return false
            }
            if !filter.httpMethods.isEmpty || !paths.isEmpty || !statuses.isEmpty {
                guard let http = view.http else { return false }
                var method: String?, url: String?, code: Int?
                for (key, value) in http.fields {
                    switch (key, value) {
                    case ("method", .string(let text)): method = text
                    case ("url", .string(let text)): url = text
                    case ("code", .unsigned(let number)): code = Int(number)
                    default: break
                    }
                }
                if !filter.httpMethods.isEmpty,
                   !filter.httpMethods.contains(where: { $0.uppercased() == method?.uppercased() }) { return false }
                if !paths.isEmpty {
                    guard let url else { return false }
                    let range = NSRange(url.startIndex..., in: url)
                    if !paths.contains(where: { $0.firstMatch(in: url, range: range) != nil }) { return false }
                }
                if !statuses.isEmpty {
                    guard let code, statuses.contains(where: { $0.contains(code) }) else { return false }
                }
            }
            return true
        }
    }

    /// The filter ready to match; throws as `validate()` does.
    public func compiled() throws -> Compiled {
        try validate()
        return Compiled(filter: self, paths: try httpPaths.map { try NSRegularExpression(pattern: $0) },
                        statuses: httpStatuses.compactMap(Self.statusRange))
    }
}

/// The fields of a record the filters and the compact output read.
struct RecordView {
    struct End {
        var namespace: String?
        var pod: String?
        var labels: [String] = []

        init(_ value: JSONObject.Value?) {
            guard case .object(let object)? = value else { return }
            for (key, value) in object.fields {
                switch (key, value) {
                case ("namespace", .string(let text)): namespace = text
                case ("pod_name", .string(let text)): pod = text
                case ("labels", .array(let values)):
                    labels = values.compactMap { if case .string(let text) = $0 { return text } else { return nil } }
                default: break
                }
            }
        }

        /// `name` prefix of the pod, or `namespace/name` prefix.
        func isPod(_ wanted: String) -> Bool {
            guard let pod else { return false }
            if let slash = wanted.firstIndex(of: "/") {
                return namespace == String(wanted[..<slash]) && pod.hasPrefix(wanted[wanted.index(after: slash)...])
            }
            return pod.hasPrefix(wanted)
        }

        /// Every `key=value` of the comma-separated `wanted` is among the labels (with or
        /// without its source prefix).
        func hasLabels(_ wanted: String) -> Bool {
            wanted.split(separator: ",").allSatisfy { part in
                let label = part.trimmingCharacters(in: .whitespaces)
                return labels.contains { $0 == label || $0.hasSuffix(":" + label) }
            }
        }
    }

    var verdict = ""
    var type = ""
    var source: End
    var destination: End
    var sourcePort: UInt16?
    var destinationPort: UInt16?
    var protocols: Set<String> = []
    var http: JSONObject?

    init(_ record: JSONObject) {
        source = End(record["source"])
        destination = End(record["destination"])
        if case .string(let text)? = record["verdict"] { verdict = text }
        if case .string(let text)? = record["Type"] { type = text }
        if case .object(let l4)? = record["l4"], let (transport, ports) = l4.fields.first {
            protocols.insert(transport.lowercased())
            if case .object(let portFields) = ports {
                if case .unsigned(let port)? = portFields["source_port"] { sourcePort = UInt16(truncatingIfNeeded: port) }
                if case .unsigned(let port)? = portFields["destination_port"] { destinationPort = UInt16(truncatingIfNeeded: port) }
            } else if case .prebuilt(let prebuilt) = ports {
                if case .unsigned(let port)? = prebuilt.object["source_port"] { sourcePort = UInt16(truncatingIfNeeded: port) }
                if case .unsigned(let port)? = prebuilt.object["destination_port"] { destinationPort = UInt16(truncatingIfNeeded: port) }
            }
        }
        if case .object(let l7)? = record["l7"] {
            for (key, value) in l7.fields {
                guard case .object(let fields) = value else { continue }
                protocols.insert(key)
                if key == "http" { http = fields }
            }
        }
    }

    /// `l7`, `drop` or `trace`.
    var kind: String {
        if type == "L7" { return "l7" }
        return verdict == "DROPPED" ? "drop" : "trace"
    }
}
