import Proxy
import Yams

/// What a team expects of its traffic under a policy, checked by `sluice replay --expect`
/// (the CI use): a YAML list such as
///
///     - name: the frontend reads products
///       from: {app: frontend}          # labels of the client, or its address: from: 10.0.0.1
///       to: {app: backend}
///       port: 8080
///       http: {method: GET, path: /api/products}
///       verdict: allowed               # every such request allowed, and at least one seen
///     - name: no DNS query of the frontend is ever refused
///       from: {app: frontend}
///       dns: {}
///       never: denied                  # none of them denied (none seen is fine)
///
/// Fields left out match anything. `http.path` and `dns.name` match exactly (a DNS name
/// with or without its final dot); `kafka.topic` when Kafka lands.
public struct Expectation: Sendable, Equatable {
    public enum End: Sendable, Equatable {
        case labels([String: String])
        case address(String)
    }

    public enum Kind: Sendable, Equatable {
        case any
        case http(method: String?, path: String?)
        case dns(name: String?)
    }

    public enum Rule: Sendable, Equatable {
        /// Every matching request has this verdict (`true`: allowed), and there is one at least.
        case verdict(allowed: Bool)
        /// No matching request is denied.
        case neverDenied
    }

    public var name: String
    public var from: End?
    public var to: End?
    public var port: UInt16?
    public var kind: Kind
    public var rule: Rule
}

/// A located problem in an expectations file (file, line, column, key path), worded as
/// configuration errors are.
public typealias ExpectationError = ConfigurationError

extension Expectation {
    /// Reads an expectations file: every key is checked, errors name the file, line,
    /// column and key.
    public static func load(text: String, file: String) throws(ExpectationError) -> [Expectation] {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw ExpectationError(file: file, line: 1, column: 1, path: "", message: "the file is empty; expected a list of expectations")
            }
            root = node
        } catch let error as ExpectationError {
            throw error
        } catch {
            throw ExpectationError(file: file, line: 0, column: 0, path: "", message: "not valid YAML: \(error)")
        }
        guard case .sequence(let items) = root else {
            throw Self.error(file, root, "", "expected a list of expectations (- name: ..., verdict: allowed|denied)")
        }
        return try items.enumerated().map { index, node throws(ExpectationError) in try Self.expectation(node, index: index, file: file) }
    }

    private static func expectation(_ node: Node, index: Int, file: String) throws(ExpectationError) -> Expectation {
        let path = "[\(index)]"
        let fields = try mapping(node, path: path, file: file, allowed: ["name", "from", "to", "port", "http", "dns", "verdict", "never"])
        let name = try fields["name"].map { node throws(ExpectationError) in try scalar(node, path: path + ".name", file: file) }
            ?? "expectation \(index + 1)"
        var port: UInt16?
        if let node = fields["port"] {
            let text = try scalar(node, path: path + ".port", file: file)
            guard let value = UInt16(text), value > 0 else { throw error(file, node, path + ".port", "expected a port from 1 to 65535, got '\(text)'") }
            port = value
        }
        var kind = Kind.any
        if let node = fields["http"] {
            let http = try mapping(node, path: path + ".http", file: file, allowed: ["method", "path"])
            kind = .http(method: try http["method"].map { node throws(ExpectationError) in try scalar(node, path: path + ".http.method", file: file) },
                         path: try http["path"].map { node throws(ExpectationError) in try scalar(node, path: path + ".http.path", file: file) })
        }
        if let node = fields["dns"] {
            guard kind == .any else { throw error(file, node, path + ".dns", "one protocol per expectation: http or dns") }
            let dns = try mapping(node, path: path + ".dns", file: file, allowed: ["name"])
            kind = .dns(name: try dns["name"].map { node throws(ExpectationError) in try scalar(node, path: path + ".dns.name", file: file) })
        }
        let rule: Rule
        switch (fields["verdict"], fields["never"]) {
        case (let node?, nil):
            switch try scalar(node, path: path + ".verdict", file: file) {
            case "allowed": rule = .verdict(allowed: true)
            case "denied": rule = .verdict(allowed: false)
            case let other: throw error(file, node, path + ".verdict", "expected 'allowed' or 'denied', got '\(other)'")
            }
        case (nil, let node?):
            let text = try scalar(node, path: path + ".never", file: file)
            guard text == "denied" else { throw error(file, node, path + ".never", "expected 'denied', got '\(text)'") }
            rule = .neverDenied
        case (nil, nil):
            throw error(file, node, path, "missing; expected 'verdict: allowed|denied' or 'never: denied'")
        case (_?, let node?):
            throw error(file, node, path + ".never", "give either 'verdict' or 'never', not both")
        }
        return Expectation(name: name, from: try end(fields["from"], path: path + ".from", file: file),
                           to: try end(fields["to"], path: path + ".to", file: file), port: port, kind: kind, rule: rule)
    }

    private static func end(_ node: Node?, path: String, file: String) throws(ExpectationError) -> End? {
        guard let node else { return nil }
        if case .scalar(let scalar) = node { return .address(scalar.string) }
        guard case .mapping(let mapping) = node else { throw error(file, node, path, "expected labels ({app: frontend}) or an address") }
        var labels: [String: String] = [:]
        for (key, value) in mapping {
            guard case .scalar(let key) = key, case .scalar(let value) = value else {
                throw error(file, node, path, "expected labels as key: value pairs")
            }
            labels[key.string] = value.string
        }
        return .labels(labels)
    }

    private static func mapping(_ node: Node, path: String, file: String, allowed: [String]) throws(ExpectationError) -> [String: Node] {
        guard case .mapping(let mapping) = node else {
            throw error(file, node, path, "expected a mapping of keys (\(allowed.joined(separator: ", ")))")
        }
        var result: [String: Node] = [:]
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode else { throw error(file, keyNode, path, "expected a plain key") }
            guard allowed.contains(key.string) else {
                throw error(file, keyNode, "\(path).\(key.string)", "unknown key; expected one of \(allowed.joined(separator: ", "))")
            }
            result[key.string] = value
        }
        return result
    }

    private static func scalar(_ node: Node, path: String, file: String) throws(ExpectationError) -> String {
        guard case .scalar(let scalar) = node else { throw error(file, node, path, "expected a single value") }
        return scalar.string
    }

    private static func error(_ file: String, _ node: Node, _ path: String, _ message: String) -> ExpectationError {
        ExpectationError(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0, path: path, message: message)
    }
}

/// Checks every L7 request record against the expectations as it passes on to `next`.
public final class ExpectationCheck: L7FlowReporter {
    /// An expectation the recording broke, with up to `maximumExamples` of the requests
    /// that broke it (one line each).
    public struct Unmet: Sendable {
        public var expectation: Expectation
        public var reason: String
        public var examples: [String]
    }

    public static let maximumExamples = 5
    private let expectations: [Expectation]
    private let next: L7FlowReporter?
    private var matched: [Int]
    private var broken: [Int: [String]] = [:]
    private var brokenCount: [Int: Int] = [:]

    public init(_ expectations: [Expectation], next: L7FlowReporter?) {
        self.expectations = expectations
        self.next = next
        matched = Array(repeating: 0, count: expectations.count)
    }

    public func report(_ record: JSONObject) {
        next?.report(record)
        guard let request = RequestRecord(record) else { return }
        for (index, expectation) in expectations.enumerated() where Self.matches(expectation, request) {
            matched[index] += 1
            let holds: Bool
            switch expectation.rule {
            case .verdict(let wanted): holds = request.isAllowed == wanted
            case .neverDenied: holds = request.isAllowed
            }
            if !holds {
                brokenCount[index, default: 0] += 1
                if broken[index, default: []].count < Self.maximumExamples {
                    broken[index, default: []].append("\(request.connection) \(request.what): \(request.verdict)")
                }
            }
        }
    }

    /// The expectations the recording broke, in file order.
    public var unmet: [Unmet] {
        expectations.indices.compactMap { index in
            let expectation = expectations[index]
            if let count = brokenCount[index] {
                return Unmet(expectation: expectation, reason: "\(count) of \(matched[index]) matching request(s) broke it",
                             examples: broken[index] ?? [])
            }
            if case .verdict = expectation.rule, matched[index] == 0 {
                return Unmet(expectation: expectation, reason: "no matching request in the recording", examples: [])
            }
            return nil
        }
    }

    public var checked: Int { expectations.count }

    static func matches(_ expectation: Expectation, _ request: RequestRecord) -> Bool {
        if let from = expectation.from, !matches(from, endpoint: request.source, address: request.sourceAddress) { return false }
        if let to = expectation.to, !matches(to, endpoint: request.destination, address: request.destinationAddress) { return false }
        if let port = expectation.port, request.destinationPort != port { return false }
        switch expectation.kind {
        case .any:
            return true
        case .http(let method, let path):
            guard request.protocolName == "http" else { return false }
            if let method, request.method != method { return false }
            if let path, request.url != path { return false }
            return true
        case .dns(let name):
            guard request.protocolName == "dns" else { return false }
            guard let name else { return true }
            let query = request.query?.lowercased()
            return query == name.lowercased() || query == name.lowercased() + "."
        }
    }

    private static func matches(_ end: Expectation.End, endpoint: JSONObject?, address: String?) -> Bool {
        switch end {
        case .address(let wanted):
            return address == wanted
        case .labels(let wanted):
            guard case .array(let labels)? = endpoint?["labels"] else { return false }
            let have = Set(labels.compactMap { value -> String? in
                guard case .string(let label) = value else { return nil }
                // "k8s:app=frontend" -> "app=frontend"
                return label.split(separator: ":", maxSplits: 1).last.map(String.init)
            })
            return wanted.allSatisfy { have.contains("\($0.key)=\($0.value)") }
        }
    }
}
