import PolicyEngine
import Testing
@testable import Proxy

/// The tap on the record stream: records as the real builders make them, counted under the
/// reference's metric names, kept in the ring, and matched by `sluice observe`'s filters.
@Suite struct FlowTapTests {
    static let connection = ConnectionIdentities(
        client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:80")!,
        source: .pod(namespace: "shop", labels: ["app": "frontend"], podName: "frontend-7d9"),
        destination: .pod(namespace: "shop", labels: ["app": "backend"], podName: "backend-1"))

    static func request(_ method: String, _ url: String, allowed: Bool) -> JSONObject {
        FlowRecords.http(verdict: allowed ? .forwarded : .dropped, connection: connection, direction: .ingress, type: .request,
                         method: method, url: url, code: nil, latency: nil, rules: [], allowed: allowed)
    }

    static func response(_ method: String, _ url: String, code: Int, latency: UInt64) -> JSONObject {
        FlowRecords.http(verdict: .forwarded, connection: connection, direction: .ingress, type: .response,
                         method: method, url: url, code: code, latency: latency, rules: [], allowed: true)
    }

    static func dns(query: String, rcode: UInt64?) -> JSONObject {
        var connection = connection
        connection.transport = .udp
        var fields = JSONObject()
        fields["query"] = .string(query)
        if let rcode { fields["rcode"] = .unsigned(rcode) }
        fields["qtypes"] = .array([.string("A")])
        return FlowRecords.l7(verdict: .forwarded, connection: connection, direction: .egress,
                              type: rcode == nil ? .request : .response, latency: rcode == nil ? nil : 2_000_000,
                              protocolName: "dns", fields: fields, rules: [], allowed: true, summary: "DNS \(query)")
    }

    @Test func countsHTTPUnderTheReferenceNames() {
        let tap = FlowTap(capacity: 16)
        tap.record(Self.request("GET", "/api/a", allowed: true))
        tap.record(Self.response("GET", "/api/a", code: 200, latency: 3_000_000))
        tap.record(Self.request("POST", "/admin", allowed: false))
        tap.record(Self.request("BREW", "/pot", allowed: false))
        let metrics = tap.metrics
        #expect(metrics.flowsProcessed[.init(type: "L7", subtype: "HTTP", verdict: "FORWARDED")] == 2)
        #expect(metrics.flowsProcessed[.init(type: "L7", subtype: "HTTP", verdict: "DROPPED")] == 2)
        #expect(metrics.httpRequests[.init(method: "GET", protocolName: "HTTP/1.1", status: 200)] == 1)
        #expect(metrics.httpRequests[.init(method: "POST", protocolName: "HTTP/1.1", status: 403)] == 1)
        // An unknown method is a bounded label, never the raw text.
        #expect(metrics.httpRequests[.init(method: "other", protocolName: "HTTP/1.1", status: 403)] == 1)
        #expect(metrics.policyL7 == ["received": 3, "forwarded": 1, "denied": 2])
        let duration = metrics.httpDuration["GET"]
        #expect(duration?.count == 1)
        // 3 ms falls in the 5 ms bucket and every one above it, not in 2.5 ms.
        #expect(duration?.buckets[FlowMetrics.durationBuckets.firstIndex(of: 0.0025)!] == 0)
        #expect(duration?.buckets[FlowMetrics.durationBuckets.firstIndex(of: 0.005)!] == 1)
        #expect(metrics.upstreamReply["http"]?.count == 1)
    }

    @Test func countsDNSAndDatapathDrops() {
        let tap = FlowTap(capacity: 16)
        tap.record(Self.dns(query: "a.example.", rcode: nil))
        tap.record(Self.dns(query: "a.example.", rcode: 3))
        let path = FlowPath(source: ("10.0.0.1", 1234), destination: ("10.0.0.9", 22), isIPv6: false, transport: "TCP")
        tap.record(FlowRecords.datapath(.dropped(reason: "POLICY_DENIED"), path: path, source: FlowEndpoint(identity: 5),
                                        destination: FlowEndpoint(identity: 6), direction: .egress, policy: nil))
        tap.record(FlowRecords.datapath(.redirected(proxyPort: 15001), path: path, source: FlowEndpoint(identity: 5),
                                        destination: FlowEndpoint(identity: 6), direction: .egress, policy: nil))
        let metrics = tap.metrics
        #expect(metrics.dnsQueries == ["A": 1])
        #expect(metrics.dnsResponses == [.init(qtypes: "A", rcode: "Non-Existent Domain"): 1])
        #expect(metrics.drops == [.init(reason: "POLICY_DENIED", protocolName: "TCP"): 1])
        #expect(metrics.flowsProcessed[.init(type: "Drop", subtype: "", verdict: "DROPPED")] == 1)
        #expect(metrics.flowsProcessed[.init(type: "Trace", subtype: "to-proxy", verdict: "REDIRECTED")] == 1)
    }

    @Test func dropReasonLabelsAreBounded() {
        let tap = FlowTap(capacity: 4)
        for index in 0..<(FlowMetrics.maximumDistinct + 10) {
            tap.record(FlowRecords.dropped(client: SocketAddress("10.0.0.1:1")!, listener: "web", reason: "reason \(index)"))
        }
        let reasons = Set(tap.metrics.drops.keys.map(\.reason))
        #expect(reasons.count == FlowMetrics.maximumDistinct + 1)
        #expect(tap.metrics.drops[.init(reason: "other", protocolName: "unknown")] == 10)
    }

    @Test func theRingKeepsTheNewestAndSaysWhatWasOverwritten() {
        let tap = FlowTap(capacity: 4)
        for index in 0..<10 { tap.record(Self.request("GET", "/\(index)", allowed: true)) }
        let all = tap.records(from: 0, limit: 100)
        #expect(all.records.count == 4)
        #expect(all.next == 10)
        #expect(all.skipped == 6)
        #expect(all.records.map { FlowTapTests.url($0) } == ["/6", "/7", "/8", "/9"])
        let later = tap.records(from: 8, limit: 1)
        #expect(later.records.map { FlowTapTests.url($0) } == ["/8"])
        #expect(later.next == 9 && later.skipped == 0)
    }

    static func url(_ record: JSONObject) -> String? {
        guard case .object(let l7)? = record["l7"], case .object(let http)? = l7["http"], case .string(let url)? = http["url"] else {
            return nil
        }
        return url
    }

    @Test func filtersCombineLikeHubbles() throws {
        func matches(_ filter: FlowFilter, _ record: JSONObject) throws -> Bool { try filter.compiled().matches(record) }
        let denied = Self.request("POST", "/admin/users", allowed: false)
        let ok = Self.response("GET", "/api/a", code: 200, latency: 1)
        var filter = FlowFilter()
        filter.verdicts = ["dropped"]
        #expect(try matches(filter, denied) && !matches(filter, ok))
        filter.httpPaths = ["^/admin"]
        filter.httpMethods = ["post"]
        filter.fromPods = ["shop/frontend"]
        filter.toLabels = ["app=backend"]
        filter.protocols = ["http"]
        filter.types = ["l7"]
        filter.ports = [80]
        #expect(try matches(filter, denied))
        filter.toLabels = ["app=backend,k8s:io.kubernetes.pod.namespace=other"]
        #expect(try !matches(filter, denied))
        filter.toLabels = ["app=frontend", "app=backend"]  // either value
        #expect(try matches(filter, denied))
        filter.fromPods = ["backend"]
        #expect(try !matches(filter, denied))

        var status = FlowFilter()
        status.httpStatuses = ["2+"]
        #expect(try matches(status, ok) && !matches(status, denied))
        status.httpStatuses = ["404"]
        #expect(try !matches(status, ok))
        var dnsOnly = FlowFilter()
        dnsOnly.protocols = ["udp"]
        #expect(try matches(dnsOnly, Self.dns(query: "x.", rcode: nil)) && !matches(dnsOnly, ok))
        var namespace = FlowFilter()
        namespace.namespaces = ["elsewhere"]
        #expect(try !matches(namespace, ok))
    }

    @Test func badFilterValuesNameTheirFlag() {
        var filter = FlowFilter()
        filter.httpPaths = ["("]
        #expect(throws: FlowFilter.Invalid.self) { try filter.validate() }
        filter = FlowFilter()
        filter.httpStatuses = ["2xx"]
        #expect((try? filter.validate()) == nil)
        filter = FlowFilter()
        filter.verdicts = ["MAYBE"]
        do {
            try filter.validate()
            Issue.record("an unknown verdict was accepted")
        } catch {
            #expect("\(error)".contains("--verdict"))
        }
    }

    @Test func expositionIsTheTextFormat() {
        let tap = FlowTap(capacity: 4)
        tap.record(Self.response("GET", "/", code: 200, latency: 1_000))
        var text = ""
        for family in tap.metrics.families() { family.render(into: &text) }
        #expect(text.contains("# TYPE hubble_http_requests_total counter\n"))
        #expect(text.contains(#"hubble_http_requests_total{method="GET",protocol="HTTP/1.1",status="200"} 1"#))
        #expect(text.contains(#"hubble_http_request_duration_seconds_bucket{method="GET",le="+Inf"} 1"#))
        #expect(text.contains("# TYPE hubble_kafka_requests_total counter\n"), "registered before Kafka lands")
        #expect(text.contains(#"cilium_policy_l7_total{rule="parse_errors"} 0"#))
        #expect(MetricFamily.escapeLabel("a\"b\\c\nd") == #"a\"b\\c\nd"#)
    }
}
