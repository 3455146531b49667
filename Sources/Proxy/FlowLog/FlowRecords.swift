import PolicyEngine

/// Every flow record Sluice writes is built here, in the shape of the reference's flow JSON
/// (Hubble's `flow.Flow`, with its protobuf field names), so existing tooling reads them.
/// The common fields come in one order, each when the record has it:
///
///     time, verdict, IP, l4, source, destination, Type, traffic_direction, is_reply,
///     <the kind's own fields>, Summary
///
/// `record(...)` writes that frame; the builders below it (the L4 relay's connections and
/// datagram sessions, refusals, L7 messages, the datapath's drops and redirects) only add
/// their own fields and summary. A new L7 protocol calls `l7(...)` with its own `l7`
/// sub-object (`"dns"`, `"kafka"`, ...), as `http(...)` does.
public enum FlowRecords {
    // MARK: The frame every record shares

    /// A record: the common fields from `verdict` to `is_reply` (endpoints, direction and
    /// `isReply` only when given), then whatever `details` adds, then `Summary`.
    public static func record(time: UInt64? = nil, verdict: FlowVerdict, path: FlowPath,
                              endpoints: (source: FlowEndpoint, destination: FlowEndpoint)? = nil,
                              type: FlowType, direction: Direction? = nil, isReply: Bool? = nil, summary: String,
                              details: (inout JSONObject) -> Void = { _ in }) -> JSONObject {
        record(time: time ?? WallClock.nanosecondsNow(), verdict: verdict, ip: .object(ip(path)), l4: l4(path).map { .object($0) },
               endpoints: endpoints.map { (.object($0.source.json), .object($0.destination.json)) }, type: type,
               direction: direction, isReply: isReply, summary: summary, details: details)
    }

    /// The frame with its parts already made (`L7RecordParts` keeps a connection's).
    static func record(time: UInt64, verdict: FlowVerdict, ip: JSONObject.Value, l4: JSONObject.Value?,
                       endpoints: (source: JSONObject.Value, destination: JSONObject.Value)?, type: FlowType,
                       direction: Direction?, isReply: Bool?, summary: String,
                       details: (inout JSONObject) -> Void) -> JSONObject {
        var record = JSONObject(capacity: 16)
        record.add("time", .string(WallClock.rfc3339(time)))
        record.add("verdict", .string(verdict.rawValue))
        record.add("IP", ip)
        if let l4 { record.add("l4", l4) }
        if let endpoints {
            record.add("source", endpoints.source)
            record.add("destination", endpoints.destination)
        }
        record.add("Type", .string(type.rawValue))
        if let direction { record.add("traffic_direction", .string(direction == .ingress ? "INGRESS" : "EGRESS")) }
        if let isReply { record.add("is_reply", .bool(isReply)) }
        details(&record)
        record.add("Summary", .string(summary))
        return record
    }

    /// Hubble's `IP`: `source`, `destination` (when known) and `ipVersion`.
    static func ip(_ path: FlowPath) -> JSONObject {
        var ip = JSONObject()
        ip["source"] = .string(path.source.host)
        if let destination = path.destination { ip["destination"] = .string(destination.host) }
        ip["ipVersion"] = .string(path.isIPv6 ? "IPv6" : "IPv4")
        return ip
    }

    /// Hubble's `Layer4`: one object keyed by the transport with both ports; nil without a
    /// destination.
    static func l4(_ path: FlowPath) -> JSONObject? {
        guard let destination = path.destination else { return nil }
        var ports = JSONObject()
        ports["source_port"] = .unsigned(UInt64(path.source.port))
        ports["destination_port"] = .unsigned(UInt64(destination.port))
        var l4 = JSONObject()
        l4[path.transport] = .object(ports)
        return l4
    }

    /// Hubble's `ingress_allowed_by`, `egress_allowed_by`, `ingress_denied_by` and
    /// `egress_denied_by`: the policies (`namespace/name`, or a bare name) of `rules`, once
    /// each, sorted, under the key of their direction and of the outcome (`allowed`).
    static func appendPolicies(of rules: [RuleReference], allowed: Bool, to record: inout JSONObject) {
        for (key, value) in policyFields(of: rules, allowed: allowed) { record[key] = value }
    }

    static func policyFields(of rules: [RuleReference], allowed: Bool) -> [(String, JSONObject.Value)] {
        var fields: [(String, JSONObject.Value)] = []
        for ruleDirection in [Direction.ingress, .egress] {
            let names = Set(rules.filter { $0.direction == ruleDirection }.map(\.policy))
            guard !names.isEmpty else { continue }
            let key = (ruleDirection == .ingress ? "ingress_" : "egress_") + (allowed ? "allowed_by" : "denied_by")
            fields.append((key, .array(names.sorted().map { name in
                var policy = JSONObject()
                let parts = name.split(separator: "/", maxSplits: 1)
                if parts.count == 2 { policy["namespace"] = .string(String(parts[0])) }
                policy["name"] = .string(String(parts.last ?? ""))
                return policy.prebuilt
            })))
        }
        return fields
    }

    // MARK: The L4 relay

    /// A relayed TCP connection that finished.
    public static func connection(_ summary: ConnectionSummary) -> JSONObject {
        let failed = summary.outcome == .upstreamUnreachable || summary.outcome == .connectTimeout
        return record(verdict: failed ? .error : .forwarded,
                      path: FlowPath(source: summary.client, destination: summary.destination, transport: "TCP"),
                      type: .l3l4, isReply: false,
                      summary: "TCP \(summary.client) -> \(summary.destination) \(summary.outcome.rawValue), "
                        + "\(summary.bytesFromClient) B sent, \(summary.bytesFromServer) B received") { record in
            var proxy = JSONObject()
            proxy["listener"] = .string(summary.listener)
            proxy["outcome"] = .string(summary.outcome.rawValue)
            proxy["bytes_from_client"] = .unsigned(summary.bytesFromClient)
            proxy["bytes_from_server"] = .unsigned(summary.bytesFromServer)
            proxy["duration_ns"] = .unsigned(summary.durationNanoseconds)
            record["proxy"] = .object(proxy)
        }
    }

    /// A relayed UDP session that ended.
    public static func datagramSession(client: SocketAddress, destination: SocketAddress, listener: String,
                                       fromClient: UInt64, fromServer: UInt64) -> JSONObject {
        record(verdict: .forwarded, path: FlowPath(source: client, destination: destination, transport: "UDP"),
               type: .l3l4, isReply: false,
               summary: "UDP \(client) -> \(destination), \(fromClient) datagrams sent, \(fromServer) received") { record in
            var proxy = JSONObject()
            proxy["listener"] = .string(listener)
            proxy["datagrams_from_client"] = .unsigned(fromClient)
            proxy["datagrams_from_server"] = .unsigned(fromServer)
            record["proxy"] = .object(proxy)
        }
    }

    /// A connection or datagram the proxy refused; with `destination`, the record carries
    /// the L4 ports of `transport` ("TCP" or "UDP") too.
    public static func dropped(client: SocketAddress, destination: SocketAddress? = nil, transport: String = "TCP",
                               listener: String, reason: String, time: UInt64? = nil) -> JSONObject {
        record(time: time, verdict: .dropped, path: FlowPath(source: client, destination: destination, transport: transport), type: .l3l4,
               summary: "dropped from \(client)" + (destination.map { " to \($0)" } ?? "") + ": \(reason)") { record in
            record["drop_reason_desc"] = .string(reason)
            var proxy = JSONObject()
            proxy["listener"] = .string(listener)
            record["proxy"] = .object(proxy)
        }
    }

    // MARK: L7 messages

    /// One L7 message (Hubble's `Layer7`): a request runs from the connection's client to its
    /// server, a response back. `protocolName` is the key of the protocol's own object inside
    /// `l7` (`"http"`, `"dns"`, `"kafka"`) and `fields` that object; `latency` is a response's
    /// time since its request. `rules` are the policy rules that decided, listed as the
    /// policies that allowed (`allowed`) or denied the message; `summary` is the protocol's
    /// one-line account.
    public static func l7(verdict: FlowVerdict, connection: ConnectionIdentities, direction: Direction, type: L7FlowType,
                          latency: UInt64? = nil, protocolName: String, fields: JSONObject,
                          rules: [RuleReference], allowed: Bool, summary: String) -> JSONObject {
        var parts = L7RecordParts()
        return l7(verdict: verdict, connection: connection, parts: &parts, time: WallClock.nanosecondsNow(), direction: direction,
                  type: type, latency: latency, protocolName: protocolName, fields: fields, rules: rules, allowed: allowed,
                  summary: summary)
    }

    /// `l7(...)` for a session that keeps its connection's record parts (`parts`), with the
    /// record's `time` (nanoseconds since the epoch) from its clock.
    public static func l7(verdict: FlowVerdict, connection: ConnectionIdentities, parts: inout L7RecordParts, time: UInt64,
                          direction: Direction, type: L7FlowType, latency: UInt64? = nil, protocolName: String,
                          fields: JSONObject, rules: [RuleReference], allowed: Bool, summary: String) -> JSONObject {
        L7RecordDraft(verdict: verdict, connection: connection, parts: &parts, time: time, direction: direction, type: type,
                      latency: latency, rules: rules, allowed: allowed,
                      message: .other(protocolName: protocolName, fields: fields, summary: summary)).record()
    }

    /// An HTTP request or response (Hubble's `HTTP`: `code`, `method`, `url`, `protocol`);
    /// a response carries the method and URL of its request when known.
    public static func http(verdict: FlowVerdict, connection: ConnectionIdentities, direction: Direction, type: L7FlowType,
                            method: String?, url: String?, code: Int?, latency: UInt64?, rules: [RuleReference], allowed: Bool,
                            version: String = "HTTP/1.1") -> JSONObject {
        var parts = L7RecordParts()
        return http(verdict: verdict, connection: connection, parts: &parts, time: WallClock.nanosecondsNow(),
                    direction: direction, type: type, method: method, url: url, code: code, latency: latency, rules: rules,
                    allowed: allowed, version: version)
    }

    /// `http(...)` for a session that keeps its connection's record parts.
    public static func http(verdict: FlowVerdict, connection: ConnectionIdentities, parts: inout L7RecordParts, time: UInt64,
                            direction: Direction, type: L7FlowType, method: String?, url: String?, code: Int?,
                            latency: UInt64?, rules: [RuleReference], allowed: Bool, version: String = "HTTP/1.1") -> JSONObject {
        httpDraft(verdict: verdict, connection: connection, parts: &parts, time: time, direction: direction, type: type,
                  method: method, url: url, code: code, latency: latency, rules: rules, allowed: allowed,
                  version: version).record()
    }

    /// What `http(...)` records, taken now, its JSON object made later (`L7RecordDraft`).
    public static func httpDraft(verdict: FlowVerdict, connection: ConnectionIdentities, parts: inout L7RecordParts,
                                 time: UInt64, direction: Direction, type: L7FlowType, method: String?, url: String?,
                                 code: Int?, latency: UInt64?, rules: [RuleReference], allowed: Bool,
                                 version: String = "HTTP/1.1") -> L7RecordDraft {
        L7RecordDraft(verdict: verdict, connection: connection, parts: &parts, time: time, direction: direction, type: type,
                      latency: latency, rules: rules, allowed: allowed,
                      message: .http(method: method, url: url, code: code, version: version))
    }

    /// The JSON object of an L7 record from its draft's parts.
    fileprivate static func l7(_ draft: L7RecordDraft) -> JSONObject {
        let isReply = draft.type == .response
        let fields: JSONObject, protocolName: String, summary: String
        switch draft.message {
        case .http(let method, let url, let code, let version):
            var http = JSONObject(capacity: 4)
            if let code { http.add("code", .unsigned(UInt64(code))) }
            if let method { http.add("method", .string(method)) }
            if let url { http.add("url", .string(url)) }
            http.add("protocol", .string(version))
            (fields, protocolName) = (http, "http")
            summary = httpSummary(version: version, type: draft.type, method: method, url: url, code: code,
                                  verdict: draft.verdict)
        case .other(let name, let made, let text):
            (fields, protocolName, summary) = (made, name, text)
        }
        return record(time: draft.time, verdict: draft.verdict, ip: draft.ip, l4: draft.l4, endpoints: draft.endpoints,
                      type: .l7, direction: draft.direction, isReply: isReply, summary: summary) { record in
            var l7 = JSONObject(capacity: 3)
            l7.add("type", .string(draft.type.rawValue))
            if let latency = draft.latency { l7.add("latency_ns", .unsigned(latency)) }
            l7.add(protocolName, .object(fields))
            record.add("l7", .object(l7))
            for (key, value) in draft.policies { record.add(key, value) }
        }
    }

    /// `HTTP/1.1 request GET /path forwarded`, `HTTP/1.1 response GET /path 200 forwarded`:
    /// made in one allocation (each HTTP record carries one; appending part by part cost a
    /// reallocation apiece).
    static func httpSummary(version: String, type: L7FlowType, method: String?, url: String?, code: Int?,
                            verdict: FlowVerdict) -> String {
        let kind = type == .request ? " request" : " response"
        let outcome: String
        switch verdict {
        case .forwarded: outcome = " forwarded"
        case .dropped: outcome = " dropped"
        case .error: outcome = " error"
        case .redirected: outcome = " redirected"
        }
        let code = code.map { " " + String($0) }
        let capacity = version.utf8.count + kind.utf8.count + (method?.utf8.count ?? -1) + 1 + (url?.utf8.count ?? -1) + 1
            + (code?.utf8.count ?? 0) + outcome.utf8.count
        return String(unsafeUninitializedCapacity: capacity) { text in
            var at = 0
            func put(_ part: String) {
                var part = part
                part.withUTF8 { bytes in
                    _ = UnsafeMutableBufferPointer(rebasing: text[at..<at + bytes.count]).initialize(from: bytes)
                    at += bytes.count
                }
            }
            put(version)
            put(kind)
            if let method { text[at] = UInt8(ascii: " "); at += 1; put(method) }
            if let url { text[at] = UInt8(ascii: " "); at += 1; put(url) }
            if let code { put(code) }
            put(outcome)
            return at
        }
    }

    // MARK: The datapath

    /// What the datapath did with a new flow.
    public enum DatapathAction: Sendable, Equatable {
        /// Dropped, for the reason its drop code names.
        case dropped(reason: String)
        /// Diverted to the proxy's transparent listener on `proxyPort`.
        case redirected(proxyPort: UInt16)
    }

    /// A drop or redirect reported by the datapath (numeric identities with their names, the
    /// direction of the policy that decided, and that rule's name when known).
    public static func datapath(_ action: DatapathAction, path: FlowPath, source: FlowEndpoint, destination: FlowEndpoint,
                                direction: Direction, policy: String?) -> JSONObject {
        let verdict: FlowVerdict, verb: String
        switch action {
        case .dropped(let reason): (verdict, verb) = (.dropped, "dropped (\(reason))")
        case .redirected(let port): (verdict, verb) = (.redirected, "redirected to proxy port \(port)")
        }
        let to = path.destination.map { " -> \($0.host):\($0.port)" } ?? ""
        return record(verdict: verdict, path: path,
                      endpoints: (source, destination), type: .l3l4, direction: direction,
                      summary: "\(path.transport) \(path.source.host):\(path.source.port)\(to) \(verb)") { record in
            switch action {
            case .dropped(let reason): record["drop_reason_desc"] = .string(reason)
            case .redirected(let port): record["proxy_port"] = .unsigned(UInt64(port))
            }
            if let policy { record["policy"] = .string(policy) }
        }
    }
}

/// An L7 record's facts, taken on the session's thread with the connection's record parts;
/// `record()` makes its JSON object, on any thread. A reporter that writes records on a
/// thread of its own (`sluice replay`'s) takes drafts, so that the session's thread does not
/// build the objects it would only hand over.
public struct L7RecordDraft: Sendable {
    /// The message's own part of the record.
    enum Message: Sendable {
        /// Made into Hubble's `HTTP` object and the HTTP summary by `record()`.
        case http(method: String?, url: String?, code: Int?, version: String)
        /// Any other protocol: its object under `l7` and its summary, made already.
        case other(protocolName: String, fields: JSONObject, summary: String)
    }

    let verdict: FlowVerdict
    let time: UInt64
    let direction: Direction
    let type: L7FlowType
    let latency: UInt64?
    let ip: JSONObject.Value
    let l4: JSONObject.Value?
    let endpoints: (source: JSONObject.Value, destination: JSONObject.Value)
    let policies: [(String, JSONObject.Value)]
    let message: Message

    init(verdict: FlowVerdict, connection: ConnectionIdentities, parts: inout L7RecordParts, time: UInt64,
         direction: Direction, type: L7FlowType, latency: UInt64?, rules: [RuleReference], allowed: Bool,
         message: Message) {
        let made = parts.made(for: connection)
        let isReply = type == .response
        self.verdict = verdict
        self.time = time
        self.direction = direction
        self.type = type
        self.latency = latency
        ip = isReply ? made.replyIP : made.forwardIP
        l4 = isReply ? made.replyL4 : made.forwardL4
        endpoints = isReply ? (made.destination, made.source) : (made.source, made.destination)
        policies = parts.policies(of: rules, allowed: allowed)
        self.message = message
    }

    /// The record's JSON object.
    public func record() -> JSONObject { FlowRecords.l7(self) }

    /// The record's verdict, which a reporter may count without making the record.
    public var verdictName: String { verdict.rawValue }
}

/// The parts of a connection's L7 records that stay the same from one record to the next:
/// both directions' addresses and both ends, made (with their JSON text) on the first
/// record (again when its identities change), and the policy lists of the verdicts seen. A
/// session keeps one; nothing is made while no record is.
public struct L7RecordParts {
    final class Made {
        /// The identities they were made for (a policy change that renames an end makes them again).
        let peers: PeerIdentities
        let forwardIP, replyIP, source, destination: JSONObject.Value
        let forwardL4, replyL4: JSONObject.Value?

        init(_ connection: ConnectionIdentities) {
            peers = connection.peers
            let forward = FlowPath(source: connection.client, destination: connection.server,
                                   transport: connection.transport.rawValue)
            let reply = forward.reversed
            forwardIP = FlowRecords.ip(forward).prebuilt
            replyIP = FlowRecords.ip(reply).prebuilt
            forwardL4 = FlowRecords.l4(forward)?.prebuilt
            replyL4 = FlowRecords.l4(reply)?.prebuilt
            source = FlowEndpoint(connection.source).json.prebuilt
            destination = FlowEndpoint(connection.destination).json.prebuilt
        }
    }

    private var made: Made?
    /// The policy lists of the verdicts seen so far, by deciding rules (a connection meets
    /// few; past `maximumRemembered` they are forgotten and made again).
    private var policyLists: [PolicyListKey: [(String, JSONObject.Value)]] = [:]
    private static let maximumRemembered = 32
    private var lastPolicies: (key: PolicyListKey, fields: [(String, JSONObject.Value)])?

    private struct PolicyListKey: Hashable {
        var rules: [RuleReference]
        var allowed: Bool
    }

    public init() {}

    mutating func made(for connection: ConnectionIdentities) -> Made {
        if let made, made.peers === connection.peers { return made }
        let fresh = Made(connection)
        made = fresh
        return fresh
    }

    mutating func policies(of rules: [RuleReference], allowed: Bool) -> [(String, JSONObject.Value)] {
        if rules.isEmpty { return [] }
        // Most records of a connection repeat the last verdict's rules (the same array of the
        // compiled policy, which compares without looking at its elements): no hashing then.
        if let last = lastPolicies, last.key.allowed == allowed, last.key.rules == rules { return last.fields }
        let key = PolicyListKey(rules: rules, allowed: allowed)
        let fields: [(String, JSONObject.Value)]
        if let known = policyLists[key] {
            fields = known
        } else {
            if policyLists.count >= Self.maximumRemembered { policyLists.removeAll() }
            fields = FlowRecords.policyFields(of: rules, allowed: allowed)
            policyLists[key] = fields
        }
        lastPolicies = (key, fields)
        return fields
    }

}

/// Hubble's `Verdict`: what became of the flow.
public enum FlowVerdict: String, Sendable {
    case forwarded = "FORWARDED"
    case dropped = "DROPPED"
    case error = "ERROR"
    case redirected = "REDIRECTED"
}

/// Hubble's `FlowType`: which layer the record speaks of.
public enum FlowType: String, Sendable {
    case l3l4 = "L3_L4"
    case l7 = "L7"
}

/// Hubble's `L7FlowType`.
public enum L7FlowType: String, Sendable {
    case request = "REQUEST"
    case response = "RESPONSE"
}

/// The addresses a record reports, in its own direction (a reply runs from server to
/// client): hosts as text, ports, and the transport that keys the `l4` object.
public struct FlowPath: Sendable {
    public var source: (host: String, port: UInt16)
    /// Nil when the record does not know it (a refused connection); the record then has no `l4`.
    public var destination: (host: String, port: UInt16)?
    public var isIPv6: Bool
    /// The key of Hubble's `l4` oneof as Sluice writes it: "TCP", "UDP", "SCTP", "ICMP", or
    /// the IP protocol number as text.
    public var transport: String

    public init(source: (host: String, port: UInt16), destination: (host: String, port: UInt16)?, isIPv6: Bool,
                transport: String) {
        self.source = source
        self.destination = destination
        self.isIPv6 = isIPv6
        self.transport = transport
    }

    public init(source: SocketAddress, destination: SocketAddress?, transport: String) {
        self.init(source: (source.host, source.port), destination: destination.map { ($0.host, $0.port) },
                  isIPv6: source.isIPv6, transport: transport)
    }

    /// The same path seen from the other end (a reply); without a destination, unchanged.
    public var reversed: FlowPath {
        guard let destination else { return self }
        return FlowPath(source: destination, destination: source, isIPv6: isIPv6, transport: transport)
    }
}

/// One end of a flow (Hubble's `Endpoint`): the datapath knows a numeric identity and its
/// name; the proxy knows an endpoint's namespace, labels and pod. Fields are written in
/// this order, each when set.
public struct FlowEndpoint: Sendable, Equatable {
    public var identity: UInt32?
    public var name: String?
    public var namespace: String?
    public var labels: [String]?
    public var podName: String?

    public init(identity: UInt32? = nil, name: String? = nil, namespace: String? = nil, labels: [String]? = nil,
                podName: String? = nil) {
        self.identity = identity
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.podName = podName
    }

    /// The policy engine's view of an end: namespace, labels (always, maybe none) and pod.
    public init(_ identity: Identity) {
        self.init(namespace: identity.namespace, labels: identity.labels.labels.map(\.description), podName: identity.podName)
    }

    public var json: JSONObject {
        var endpoint = JSONObject()
        if let identity { endpoint["identity"] = .unsigned(UInt64(identity)) }
        if let name { endpoint["name"] = .string(name) }
        if let namespace { endpoint["namespace"] = .string(namespace) }
        if let labels { endpoint["labels"] = .array(labels.map { .string($0) }) }
        if let podName { endpoint["pod_name"] = .string(podName) }
        return endpoint
    }
}
