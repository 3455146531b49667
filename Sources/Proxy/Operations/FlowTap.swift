import Synchronization

/// The one tap on the record stream: every flow record passes through `FlowLog.write`, which
/// hands it here. It is counted (`FlowMetrics`, the Prometheus series of `sluice run`) and
/// kept in a bounded ring of the most recent records (`sluice observe`).
///
/// The cost on a worker's hot path is one short lock: the record is stored by reference (no
/// copy, no JSON text made) and counted by one pass over its top-level fields. Nothing here
/// ever waits for a reader: observers read the ring from the operations thread by sequence
/// number, and what they are too slow to read is overwritten and counted as theirs to lose.
public final class FlowTap: Sendable {
    private struct State {
        var ring: [JSONObject?]
        /// The sequence number the next record gets (the first record is 0).
        var next: UInt64 = 0
        var metrics = FlowMetrics()
    }

    private let state: Mutex<State>
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
        state = Mutex(State(ring: Array(repeating: nil, count: max(1, capacity))))
    }

    /// Counts `record` and keeps it as the newest of the ring. The record it replaces is
    /// released after the lock is let go.
    public func record(_ record: JSONObject) {
        let summary = FlowMetrics.Facts(record)
        var replaced: JSONObject? = record
        state.withLock { state in
            let slot = Int(state.next % UInt64(capacity))
            swap(&replaced, &state.ring[slot])
            state.next &+= 1
            state.metrics.count(summary)
        }
        _ = replaced
    }

    /// Records with a sequence number at or after `sequence`, oldest first, at most `limit`;
    /// `next` is the sequence number to ask for next time and `skipped` how many records
    /// between `sequence` and the oldest still held were overwritten before being read.
    public func records(from sequence: UInt64, limit: Int) -> (records: [JSONObject], next: UInt64, skipped: UInt64) {
        state.withLock { state in
            let oldest = state.next >= UInt64(capacity) ? state.next - UInt64(capacity) : 0
            let start = max(sequence, oldest)
            let skipped = start - min(sequence, start)
            let end = min(state.next, start + UInt64(max(0, limit)))
            var records: [JSONObject] = []
            records.reserveCapacity(Int(end - start))
            var index = start
            while index < end {
                if let record = state.ring[Int(index % UInt64(capacity))] { records.append(record) }
                index += 1
            }
            return (records, end, skipped)
        }
    }

    /// The sequence number the next record will get.
    public var nextSequence: UInt64 { state.withLock { $0.next } }

    /// A copy of the counters, for a scrape.
    public var metrics: FlowMetrics { state.withLock { $0.metrics } }
}

/// What the flow records say, counted under the reference's metric names. Labels are
/// bounded: methods, DNS types and rcodes come from fixed lists (anything else is `other`),
/// and the few labels that carry names from traffic (Kafka topics and API keys, drop
/// reasons) keep the first `maximumDistinct` values seen and count the rest as `other`.
/// Paths and DNS names are never labels.
public struct FlowMetrics: Sendable {
    public static let maximumDistinct = 64
    /// Seconds; Prometheus' default buckets with three below 5 ms (a proxy's replies are fast).
    public static let durationBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    public struct Histogram: Sendable {
        public var buckets = [UInt64](repeating: 0, count: FlowMetrics.durationBuckets.count)
        public var sum: Double = 0
        public var count: UInt64 = 0
        mutating func observe(nanoseconds: UInt64) {
            let seconds = Double(nanoseconds) / 1e9
            for (index, bound) in FlowMetrics.durationBuckets.enumerated() where seconds <= bound { buckets[index] += 1 }
            sum += seconds
            count += 1
        }
    }

    /// `hubble_flows_processed_total{type,subtype,verdict}`.
    public var flowsProcessed: [FlowKey: UInt64] = [:]
    /// `hubble_http_requests_total{method,protocol,status}`.
    public var httpRequests: [HTTPKey: UInt64] = [:]
    /// `hubble_http_request_duration_seconds{method}`.
    public var httpDuration: [String: Histogram] = [:]
    /// `hubble_dns_queries_total{qtypes}`.
    public var dnsQueries: [String: UInt64] = [:]
    /// `hubble_dns_responses_total{qtypes,rcode}`.
    public var dnsResponses: [DNSKey: UInt64] = [:]
    /// `hubble_kafka_requests_total{topic,api_key,error_code}`.
    public var kafkaRequests: [KafkaKey: UInt64] = [:]
    /// `hubble_drop_total{reason,protocol}`.
    public var drops: [DropKey: UInt64] = [:]
    /// `cilium_policy_l7_total{rule}`: received, forwarded, denied, parse_errors.
    public var policyL7: [String: UInt64] = [:]
    /// `cilium_proxy_upstream_reply_seconds{protocol_l7}`.
    public var upstreamReply: [String: Histogram] = [:]
    private var topics: Set<String> = []
    private var apiKeys: Set<String> = []
    private var reasons: Set<String> = []

    public struct FlowKey: Hashable, Sendable { public var type, subtype, verdict: String }
    public struct HTTPKey: Hashable, Sendable { public var method, protocolName: String; public var status: Int }
    public struct DNSKey: Hashable, Sendable { public var qtypes, rcode: String }
    public struct KafkaKey: Hashable, Sendable { public var topic, apiKey: String; public var errorCode: Int64 }
    public struct DropKey: Hashable, Sendable { public var reason, protocolName: String }

    public init() {}

    /// The fields of one record the counters need, read in one pass over its top level
    /// (on the worker's thread, before the lock).
    struct Facts {
        var verdict = ""
        var type = ""
        var isRequest = false
        var latency: UInt64?
        /// "http", "dns" or "kafka" for L7 records.
        var l7Protocol: String?
        var l7: JSONObject?
        var dropReason: String?
        var transport = ""
        var redirected = false

        init(_ record: JSONObject) {
            for (key, value) in record.fields {
                switch key {
                case "verdict": if case .string(let text) = value { verdict = text }
                case "Type": if case .string(let text) = value { type = text }
                case "drop_reason_desc": if case .string(let text) = value { dropReason = text }
                case "proxy_port": redirected = true
                case "l4":
                    if case .prebuilt(let prebuilt) = value { transport = prebuilt.object.fields.first?.0 ?? "" }
                    else if case .object(let object) = value { transport = object.fields.first?.0 ?? "" }
                case "l7":
                    guard case .object(let object) = value else { continue }
                    for (l7Key, l7Value) in object.fields {
                        switch (l7Key, l7Value) {
                        case ("type", .string(let text)): isRequest = text == "REQUEST"
                        case ("latency_ns", .unsigned(let nanoseconds)): latency = nanoseconds
                        case (_, .object(let fields)):
                            l7Protocol = l7Key
                            l7 = fields
                        default: break
                        }
                    }
                default: continue
                }
            }
        }
    }

    mutating func count(_ facts: Facts) {
        let flowType: String, subtype: String
        if facts.type == "L7" {
            flowType = "L7"
            switch facts.l7Protocol {
            case "http": subtype = "HTTP"
            case "dns": subtype = "DNS"
            case "kafka": subtype = "Kafka"
            default: subtype = "other"
            }
        } else if facts.verdict == "DROPPED" {
            (flowType, subtype) = ("Drop", "")
        } else {
            (flowType, subtype) = ("Trace", facts.redirected ? "to-proxy" : "to-endpoint")
        }
        flowsProcessed[FlowKey(type: flowType, subtype: subtype, verdict: facts.verdict), default: 0] += 1

        if facts.type != "L7" {
            if facts.verdict == "DROPPED" {
                let reason = bounded(facts.dropReason ?? "unknown", in: &reasons)
                drops[DropKey(reason: reason, protocolName: facts.transport.isEmpty ? "unknown" : facts.transport), default: 0] += 1
            }
            return
        }
        let l7 = facts.l7 ?? JSONObject()
        if facts.isRequest {
            policyL7["received", default: 0] += 1
            switch facts.verdict {
            case "FORWARDED": policyL7["forwarded", default: 0] += 1
            case "DROPPED": policyL7["denied", default: 0] += 1
            default: policyL7["parse_errors", default: 0] += 1
            }
            if facts.verdict == "DROPPED" {
                drops[DropKey(reason: "POLICY_DENIED", protocolName: facts.transport.isEmpty ? "unknown" : facts.transport), default: 0] += 1
            }
        } else if let latency = facts.latency, let name = facts.l7Protocol {
            upstreamReply[name, default: Histogram()].observe(nanoseconds: latency)
        }
        switch facts.l7Protocol {
        case "http":
            var method: String?, version = "HTTP/1.1", code: Int?
            for (key, value) in l7.fields {
                switch (key, value) {
                case ("method", .string(let text)): method = text
                case ("protocol", .string(let text)): version = text
                case ("code", .unsigned(let number)): code = Int(number)
                default: break
                }
            }
            // A response counts its request with its status; a request sluice denied counts
            // with the 403 sluice answered (its answer's own record carries no method).
            let status: Int
            if facts.isRequest {
                guard facts.verdict == "DROPPED" else { return }
                status = 403
            } else {
                guard let code, method != nil else { return }
                status = code
            }
            let label = Self.methodLabel(method ?? "")
            httpRequests[HTTPKey(method: label, protocolName: Self.protocolLabel(version), status: (100...599).contains(status) ? status : 0),
                         default: 0] += 1
            if !facts.isRequest, let latency = facts.latency {
                httpDuration[label, default: Histogram()].observe(nanoseconds: latency)
            }
        case "dns":
            var qtypes = "other", rcode: UInt64?
            for (key, value) in l7.fields {
                switch (key, value) {
                case ("qtypes", .array(let types)):
                    if case .string(let first)? = types.first { qtypes = Self.qtypeLabel(first) }
                case ("rcode", .unsigned(let number)): rcode = number
                default: break
                }
            }
            if facts.isRequest {
                dnsQueries[qtypes, default: 0] += 1
            } else {
                dnsResponses[DNSKey(qtypes: qtypes, rcode: Self.rcodeLabel(rcode ?? 0)), default: 0] += 1
            }
        case "kafka":
            guard facts.isRequest else { return }
            var topic = "", apiKey = "unknown", errorCode: Int64 = 0
            for (key, value) in l7.fields {
                switch (key, value) {
                case ("topic", .object(let object)):
                    if case .string(let name)? = object["name"] { topic = name }
                case ("topic", .string(let name)): topic = name
                case ("api_key", .string(let name)): apiKey = name
                case ("error_code", .integer(let number)): errorCode = number
                case ("error_code", .unsigned(let number)): errorCode = Int64(clamping: number)
                default: break
                }
            }
            kafkaRequests[KafkaKey(topic: topic.isEmpty ? "" : bounded(topic, in: &topics),
                                   apiKey: bounded(apiKey, in: &apiKeys), errorCode: errorCode), default: 0] += 1
        default:
            break
        }
    }

    /// `value`, or `other` once `seen` holds `maximumDistinct` other values.
    private func bounded(_ value: String, in seen: inout Set<String>) -> String {
        if seen.contains(value) { return value }
        guard seen.count < Self.maximumDistinct, value.utf8.count <= 128 else { return "other" }
        seen.insert(value)
        return value
    }

    static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
    static func methodLabel(_ method: String) -> String { methods.contains(method) ? method : "other" }
    static func protocolLabel(_ version: String) -> String {
        switch version {
        case "HTTP/1.0", "HTTP/1.1", "HTTP/2": return version
        default: return "other"
        }
    }
    static let qtypes: Set<String> = ["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS"]
    static func qtypeLabel(_ type: String) -> String { qtypes.contains(type) ? type : "other" }
    /// RFC 1035 §4.1.1 and RFC 6895 names, as Hubble writes them.
    static func rcodeLabel(_ code: UInt64) -> String {
        switch code {
        case 0: return "No Error"
        case 1: return "Format Error"
        case 2: return "Server Failure"
        case 3: return "Non-Existent Domain"
        case 4: return "Not Implemented"
        case 5: return "Query Refused"
        default: return "other"
        }
    }
}
