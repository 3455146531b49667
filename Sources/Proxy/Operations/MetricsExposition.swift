import Foundation

/// One metric family in the Prometheus text exposition format (version 0.0.4): its name,
/// help, type and samples. Histograms are given as their `_bucket`, `_sum` and `_count`
/// samples (`MetricFamily.histogram`).
public struct MetricFamily: Sendable {
    public enum Kind: String, Sendable { case counter, gauge, histogram }
    public struct Sample: Sendable {
        /// The sample's name (the family's, or with `_bucket`, `_sum`, `_count`).
        public var name: String
        public var labels: [(String, String)]
        public var value: Double
        public init(name: String, labels: [(String, String)], value: Double) {
            self.name = name
            self.labels = labels
            self.value = value
        }
    }

    public var name: String
    public var help: String
    public var kind: Kind
    public var samples: [Sample] = []

    public init(_ name: String, _ kind: Kind, _ help: String) {
        self.name = name
        self.kind = kind
        self.help = help
    }

    public mutating func add(_ labels: [(String, String)] = [], _ value: Double) {
        samples.append(Sample(name: name, labels: labels, value: value))
    }

    public mutating func add(_ labels: [(String, String)], _ value: UInt64) { add(labels, Double(value)) }

    /// The samples of one histogram series: cumulative buckets (and `+Inf`), sum and count.
    public mutating func addHistogram(_ labels: [(String, String)], _ histogram: FlowMetrics.Histogram) {
        for (index, bound) in FlowMetrics.durationBuckets.enumerated() {
            samples.append(Sample(name: name + "_bucket", labels: labels + [("le", Self.number(bound))],
                                  value: Double(histogram.buckets[index])))
        }
        samples.append(Sample(name: name + "_bucket", labels: labels + [("le", "+Inf")], value: Double(histogram.count)))
        samples.append(Sample(name: name + "_sum", labels: labels, value: histogram.sum))
        samples.append(Sample(name: name + "_count", labels: labels, value: Double(histogram.count)))
    }

    /// The family as exposition text: `# HELP`, `# TYPE`, then one line per sample.
    public func render(into out: inout String) {
        out += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
        for sample in samples {
            out += sample.name
            if !sample.labels.isEmpty {
                out += "{"
                out += sample.labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",")
                out += "}"
            }
            out += " " + Self.number(sample.value) + "\n"
        }
    }

    static func number(_ value: Double) -> String {
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value.isNaN { return "NaN" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }

    /// Label values escape backslash, double quote and line feed.
    static func escapeLabel(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    /// Help text escapes backslash and line feed.
    static func escapeHelp(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
    }
}

extension FlowMetrics {
    /// The reference's metric families (every one, with no samples until a record counts),
    /// then `sluice_` ones from the tap itself.
    public func families() -> [MetricFamily] {
        var flows = MetricFamily("hubble_flows_processed_total", .counter, "Total number of flows processed")
        for (key, value) in flowsProcessed.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            flows.add([("type", key.type), ("subtype", key.subtype), ("verdict", key.verdict)], value)
        }
        var http = MetricFamily("hubble_http_requests_total", .counter, "Count of HTTP requests")
        for (key, value) in httpRequests.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            http.add([("method", key.method), ("protocol", key.protocolName), ("status", key.status == 0 ? "other" : String(key.status))], value)
        }
        var duration = MetricFamily("hubble_http_request_duration_seconds", .histogram,
                                    "Quantiles of HTTP request duration in seconds")
        for (method, histogram) in httpDuration.sorted(by: { $0.key < $1.key }) { duration.addHistogram([("method", method)], histogram) }
        var queries = MetricFamily("hubble_dns_queries_total", .counter, "Number of DNS queries observed")
        for (qtypes, value) in dnsQueries.sorted(by: { $0.key < $1.key }) { queries.add([("qtypes", qtypes)], value) }
        var responses = MetricFamily("hubble_dns_responses_total", .counter, "Number of DNS responses observed")
        for (key, value) in dnsResponses.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            responses.add([("qtypes", key.qtypes), ("rcode", key.rcode)], value)
        }
        var kafka = MetricFamily("hubble_kafka_requests_total", .counter, "Count of Kafka requests by topic")
        for (key, value) in kafkaRequests.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            kafka.add([("topic", key.topic), ("api_key", key.apiKey), ("error_code", String(key.errorCode))], value)
        }
        var drop = MetricFamily("hubble_drop_total", .counter, "Number of drops")
        for (key, value) in drops.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            drop.add([("reason", key.reason), ("protocol", key.protocolName)], value)
        }
        var policy = MetricFamily("cilium_policy_l7_total", .counter,
                                  "Number of total proxy requests handled (received, forwarded, denied, parse_errors)")
        for rule in ["received", "forwarded", "denied", "parse_errors"] { policy.add([("rule", rule)], policyL7[rule] ?? 0) }
        var reply = MetricFamily("cilium_proxy_upstream_reply_seconds", .histogram,
                                 "Seconds waited to get a reply from an upstream server")
        for (name, histogram) in upstreamReply.sorted(by: { $0.key < $1.key }) {
            reply.addHistogram([("protocol_l7", name), ("scope", "total")], histogram)
        }
        return [flows, http, duration, queries, responses, kafka, drop, policy, reply]
    }
}
