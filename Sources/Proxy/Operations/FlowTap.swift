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
        var counters = FlowCounters()
    }

    private let state: Mutex<State>
    private let active: Atomic<Bool>
    public let capacity: Int

    /// An inactive tap wants no records (`FlowLog.isEnabled` stays false without a sink, so
    /// none are made) until `activate()`: making records is most of what the tap costs.
    public init(capacity: Int, active: Bool = true) {
        self.capacity = max(1, capacity)
        self.active = Atomic(active)
        state = Mutex(State(ring: Array(repeating: nil, count: max(1, capacity))))
    }

    /// Whether records are wanted (one relaxed load, on the hot path).
    public var isActive: Bool { active.load(ordering: .relaxed) }

    /// From now on records are made and counted (connections opened from now on report).
    public func activate() { active.store(true, ordering: .relaxed) }

    /// Counts `record` and keeps it as the newest of the ring. The record it replaces is
    /// released after the lock is let go.
    public func record(_ record: JSONObject) {
        let facts = FlowCounters.Facts(record)
        var replaced: JSONObject? = record
        state.withLock { state in
            let slot = Int(state.next % UInt64(capacity))
            swap(&replaced, &state.ring[slot])
            state.next &+= 1
            state.counters.count(facts)
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
    public var metrics: FlowMetrics { FlowMetrics(state.withLock { $0.counters }) }
}

/// The counters on the hot path: small integer indexes into fixed arrays (and integer-keyed
/// dictionaries), so a record costs no string hashing; `FlowMetrics` names them on a scrape.
struct FlowCounters {
    static let verdicts = ["FORWARDED", "DROPPED", "ERROR", "REDIRECTED", "other"]
    /// Hubble's (type, subtype) pairs Sluice reports.
    static let kinds: [(String, String)] = [("L7", "HTTP"), ("L7", "DNS"), ("L7", "Kafka"), ("L7", "other"),
                                             ("Drop", ""), ("Trace", "to-proxy"), ("Trace", "to-endpoint")]
    static let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other"]
    static let versions = ["HTTP/1.0", "HTTP/1.1", "HTTP/2", "other"]
    static let qtypes = ["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS", "other"]
    static let rules = ["received", "forwarded", "denied", "parse_errors"]
    static let l7Protocols = ["http", "dns", "kafka"]

    /// Bucket counts (not cumulative) for `FlowMetrics.durationBuckets`, the last for +Inf.
    struct RawHistogram {
        var buckets = [UInt64](repeating: 0, count: FlowMetrics.durationBuckets.count + 1)
        var sum: Double = 0
        mutating func observe(nanoseconds: UInt64) {
            let seconds = Double(nanoseconds) / 1e9
            var index = 0
            while index < FlowMetrics.durationBuckets.count && seconds > FlowMetrics.durationBuckets[index] { index += 1 }
            buckets[index] &+= 1
            sum += seconds
        }
    }

    var flows = [UInt64](repeating: 0, count: FlowCounters.kinds.count * FlowCounters.verdicts.count)
    /// method index << 24 | version index << 16 | status.
    var http: [UInt32: UInt64] = [:]
    var httpDuration = [RawHistogram](repeating: RawHistogram(), count: FlowCounters.methods.count)
    var policyL7 = [UInt64](repeating: 0, count: 4)
    var upstreamReply = [RawHistogram](repeating: RawHistogram(), count: 3)
    var upstreamReplySeen = [Bool](repeating: false, count: 3)
    var dnsQueries = [UInt64](repeating: 0, count: FlowCounters.qtypes.count)
    /// qtype index << 8 | rcode (0...5, 6 = other).
    var dnsResponses: [UInt16: UInt64] = [:]
    var kafka: [FlowMetrics.KafkaKey: UInt64] = [:]
    var drops: [FlowMetrics.DropKey: UInt64] = [:]
    var topics: Set<String> = []
    var apiKeys: Set<String> = []
    var reasons: Set<String> = []

    /// The fields of one record the counters need, read in one pass over its top level
    /// (on the worker's thread, before the lock).
    struct Facts {
        var verdict = 4
        var isL7 = false
        var isRequest = false
        var latency: UInt64?
        /// 0 http, 1 dns, 2 kafka, 3 another L7 protocol.
        var l7Protocol = 3
        var l7: JSONObject?
        var dropReason: String?
        var transport = ""
        var redirected = false

        init(_ record: JSONObject) {
            for (key, value) in record.fields {
                // Most of a record's keys are none of these: their first byte says so without
                // comparing whole strings (this runs for every record, on a worker's thread).
                switch key.utf8.first {
                case UInt8(ascii: "v"), UInt8(ascii: "T"), UInt8(ascii: "d"), UInt8(ascii: "p"), UInt8(ascii: "l"): break
                default: continue
                }
                switch key {
                case "verdict":
                    if case .string(let text) = value {
                        switch text {
                        case "FORWARDED": verdict = 0
                        case "DROPPED": verdict = 1
                        case "ERROR": verdict = 2
                        case "REDIRECTED": verdict = 3
                        default: verdict = 4
                        }
                    }
                case "Type": if case .string(let text) = value { isL7 = text == "L7" }
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
                            switch l7Key {
                            case "http": l7Protocol = 0
                            case "dns": l7Protocol = 1
                            case "kafka": l7Protocol = 2
                            default: l7Protocol = 3
                            }
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
        let kind = facts.isL7 ? facts.l7Protocol : facts.verdict == 1 ? 4 : facts.redirected ? 5 : 6
        flows[kind * Self.verdicts.count + facts.verdict] &+= 1
        guard facts.isL7 else {
            if facts.verdict == 1 {
                let reason = Self.bounded(facts.dropReason ?? "unknown", in: &reasons)
                drops[FlowMetrics.DropKey(reason: reason, protocolName: facts.transport.isEmpty ? "unknown" : facts.transport),
                      default: 0] &+= 1
            }
            return
        }
        if facts.isRequest {
            policyL7[0] &+= 1
            switch facts.verdict {
            case 0: policyL7[1] &+= 1
            case 1: policyL7[2] &+= 1
            default: policyL7[3] &+= 1
            }
            if facts.verdict == 1 {
                drops[FlowMetrics.DropKey(reason: "POLICY_DENIED", protocolName: facts.transport.isEmpty ? "unknown" : facts.transport),
                      default: 0] &+= 1
            }
        } else if let latency = facts.latency, facts.l7Protocol < 3 {
            upstreamReply[facts.l7Protocol].observe(nanoseconds: latency)
            upstreamReplySeen[facts.l7Protocol] = true
        }
        guard let l7 = facts.l7 else { return }
        switch facts.l7Protocol {
        case 0:
            var method = -1, version = 1, code: Int?
            for (key, value) in l7.fields {
                switch (key, value) {
                case ("method", .string(let text)): method = Self.methodIndex(text)
                case ("protocol", .string(let text)): version = Self.versionIndex(text)
                case ("code", .unsigned(let number)): code = Int(number)
                default: break
                }
            }
            // A response counts its request with its status; a request sluice denied counts
            // with the 403 sluice answered (its answer's own record carries no method).
            let status: Int
            if facts.isRequest {
                guard facts.verdict == 1, method >= 0 else { return }
                status = 403
            } else {
                guard let code, method >= 0 else { return }
                status = (100...599).contains(code) ? code : 0
            }
            http[UInt32(method) << 24 | UInt32(version) << 16 | UInt32(status), default: 0] &+= 1
            if !facts.isRequest, let latency = facts.latency { httpDuration[method].observe(nanoseconds: latency) }
        case 1:
            var qtype = Self.qtypes.count - 1, rcode: UInt64 = 0
            for (key, value) in l7.fields {
                switch (key, value) {
                case ("qtypes", .array(let types)):
                    if case .string(let first)? = types.first { qtype = Self.qtypes.firstIndex(of: first) ?? Self.qtypes.count - 1 }
                case ("rcode", .unsigned(let number)): rcode = number
                default: break
                }
            }
            if facts.isRequest {
                dnsQueries[qtype] &+= 1
            } else {
                dnsResponses[UInt16(qtype) << 8 | UInt16(min(rcode, 6)), default: 0] &+= 1
            }
        case 2:
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
            kafka[FlowMetrics.KafkaKey(topic: topic.isEmpty ? "" : Self.bounded(topic, in: &topics),
                                       apiKey: Self.bounded(apiKey, in: &apiKeys), errorCode: errorCode), default: 0] &+= 1
        default:
            break
        }
    }

    /// `value`, or `other` once `seen` holds `maximumDistinct` other values.
    static func bounded(_ value: String, in seen: inout Set<String>) -> String {
        if seen.contains(value) { return value }
        guard seen.count < FlowMetrics.maximumDistinct, value.utf8.count <= 128 else { return "other" }
        seen.insert(value)
        return value
    }

    static func methodIndex(_ method: String) -> Int {
        switch method {
        case "GET": return 0
        case "HEAD": return 1
        case "POST": return 2
        case "PUT": return 3
        case "DELETE": return 4
        case "CONNECT": return 5
        case "OPTIONS": return 6
        case "TRACE": return 7
        case "PATCH": return 8
        default: return 9
        }
    }

    static func versionIndex(_ version: String) -> Int {
        switch version {
        case "HTTP/1.0": return 0
        case "HTTP/1.1": return 1
        case "HTTP/2": return 2
        default: return 3
        }
    }
}

/// What the flow records say, counted under the reference's metric names (a copy made on a
/// scrape from `FlowCounters`). Labels are bounded: methods, DNS types and rcodes come from
/// fixed lists (anything else is `other`), and the few labels that carry names from traffic
/// (Kafka topics and API keys, drop reasons) keep the first `maximumDistinct` values seen
/// and count the rest as `other`. Paths and DNS names are never labels.
public struct FlowMetrics: Sendable {
    public static let maximumDistinct = 64
    /// Seconds; Prometheus' default buckets with three below 5 ms (a proxy's replies are fast).
    public static let durationBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    /// Cumulative bucket counts (`le`), sum and count, as exposed.
    public struct Histogram: Sendable {
        public var buckets = [UInt64](repeating: 0, count: FlowMetrics.durationBuckets.count)
        public var sum: Double = 0
        public var count: UInt64 = 0

        init(_ raw: FlowCounters.RawHistogram) {
            var running: UInt64 = 0
            for index in buckets.indices {
                running += raw.buckets[index]
                buckets[index] = running
            }
            count = running + raw.buckets[buckets.count]
            sum = raw.sum
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

    public struct FlowKey: Hashable, Sendable { public var type, subtype, verdict: String }
    public struct HTTPKey: Hashable, Sendable { public var method, protocolName: String; public var status: Int }
    public struct DNSKey: Hashable, Sendable { public var qtypes, rcode: String }
    public struct KafkaKey: Hashable, Sendable { public var topic, apiKey: String; public var errorCode: Int64 }
    public struct DropKey: Hashable, Sendable { public var reason, protocolName: String }

    public init() {}

    init(_ counters: FlowCounters) {
        for (kind, names) in FlowCounters.kinds.enumerated() {
            for (verdict, verdictName) in FlowCounters.verdicts.enumerated() {
                let value = counters.flows[kind * FlowCounters.verdicts.count + verdict]
                if value > 0 { flowsProcessed[FlowKey(type: names.0, subtype: names.1, verdict: verdictName)] = value }
            }
        }
        for (key, value) in counters.http {
            httpRequests[HTTPKey(method: FlowCounters.methods[Int(key >> 24)], protocolName: FlowCounters.versions[Int((key >> 16) & 0xff)],
                                 status: Int(key & 0xffff))] = value
        }
        for (index, raw) in counters.httpDuration.enumerated() where raw.buckets.contains(where: { $0 > 0 }) {
            httpDuration[FlowCounters.methods[index]] = Histogram(raw)
        }
        for (index, value) in counters.dnsQueries.enumerated() where value > 0 { dnsQueries[FlowCounters.qtypes[index]] = value }
        for (key, value) in counters.dnsResponses {
            dnsResponses[DNSKey(qtypes: FlowCounters.qtypes[Int(key >> 8)], rcode: Self.rcodeLabel(UInt64(key & 0xff)))] = value
        }
        kafkaRequests = counters.kafka
        drops = counters.drops
        for (index, value) in counters.policyL7.enumerated() where value > 0 { policyL7[FlowCounters.rules[index]] = value }
        for (index, raw) in counters.upstreamReply.enumerated() where counters.upstreamReplySeen[index] {
            upstreamReply[FlowCounters.l7Protocols[index]] = Histogram(raw)
        }
    }

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
