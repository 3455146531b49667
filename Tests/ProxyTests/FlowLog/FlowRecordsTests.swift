import Testing
@testable import PolicyEngine
@testable import Proxy

/// Flow records byte for byte (field order included: readers of the flow log and the
/// end-to-end tests rely on the reference's field names), with the wall-clock time taken out.
@Suite struct FlowRecordsTests {
    /// The record's JSON without its `time`, after checking that `time` is RFC 3339 in UTC.
    static func withoutTime(_ record: JSONObject) -> String {
        var record = record
        guard case .string(let time)? = record["time"] else {
            Issue.record("no time field in \(record.serialized())")
            return record.serialized()
        }
        #expect(time.count == 30 && time.hasSuffix("Z") && time.dropFirst(10).hasPrefix("T"), "time \(time)")
        #expect(record.fields.first?.0 == "time", "time comes first")
        record["time"] = nil
        return record.serialized()
    }

    @Test func connectionRecord() {
        let record = FlowRecords.connection(ConnectionSummary(
            listener: "web", client: SocketAddress("10.0.0.1:40000")!, destination: SocketAddress("10.0.0.2:80")!,
            bytesFromClient: 10, bytesFromServer: 20, durationNanoseconds: 5, outcome: .closed))
        #expect(Self.withoutTime(record) == #"{"verdict":"FORWARDED","IP":{"source":"10.0.0.1","destination":"10.0.0.2","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":40000,"destination_port":80}},"Type":"L3_L4","is_reply":false,"#
            + #""proxy":{"listener":"web","outcome":"closed","bytes_from_client":10,"bytes_from_server":20,"duration_ns":5},"#
            + #""Summary":"TCP 10.0.0.1:40000 -> 10.0.0.2:80 closed, 10 B sent, 20 B received"}"#)
    }

    @Test func unreachableUpstreamIsAnError() {
        let record = FlowRecords.connection(ConnectionSummary(
            listener: "web", client: SocketAddress("[fd00::1]:40000")!, destination: SocketAddress("[fd00::2]:80")!,
            bytesFromClient: 0, bytesFromServer: 0, durationNanoseconds: 7, outcome: .upstreamUnreachable))
        #expect(Self.withoutTime(record) == #"{"verdict":"ERROR","IP":{"source":"fd00::1","destination":"fd00::2","ipVersion":"IPv6"},"#
            + #""l4":{"TCP":{"source_port":40000,"destination_port":80}},"Type":"L3_L4","is_reply":false,"#
            + #""proxy":{"listener":"web","outcome":"upstream_unreachable","bytes_from_client":0,"bytes_from_server":0,"duration_ns":7},"#
            + #""Summary":"TCP [fd00::1]:40000 -> [fd00::2]:80 upstream_unreachable, 0 B sent, 0 B received"}"#)
    }

    @Test func datagramSessionRecord() {
        let record = FlowRecords.datagramSession(client: SocketAddress("10.0.0.1:5353")!, destination: SocketAddress("10.0.0.9:53")!,
                                                 listener: "dns", fromClient: 3, fromServer: 2)
        #expect(Self.withoutTime(record) == #"{"verdict":"FORWARDED","IP":{"source":"10.0.0.1","destination":"10.0.0.9","ipVersion":"IPv4"},"#
            + #""l4":{"UDP":{"source_port":5353,"destination_port":53}},"Type":"L3_L4","is_reply":false,"#
            + #""proxy":{"listener":"dns","datagrams_from_client":3,"datagrams_from_server":2},"#
            + #""Summary":"UDP 10.0.0.1:5353 -> 10.0.0.9:53, 3 datagrams sent, 2 received"}"#)
    }

    @Test func droppedRecords() {
        let withDestination = FlowRecords.dropped(client: SocketAddress("10.0.0.1:5353")!, destination: SocketAddress("10.0.0.9:53")!,
                                                  transport: "UDP", listener: "dns", reason: "no session")
        #expect(Self.withoutTime(withDestination) == #"{"verdict":"DROPPED","IP":{"source":"10.0.0.1","destination":"10.0.0.9","ipVersion":"IPv4"},"#
            + #""l4":{"UDP":{"source_port":5353,"destination_port":53}},"Type":"L3_L4","drop_reason_desc":"no session","#
            + #""proxy":{"listener":"dns"},"Summary":"dropped from 10.0.0.1:5353 to 10.0.0.9:53: no session"}"#)
        let clientOnly = FlowRecords.dropped(client: SocketAddress("10.0.0.1:40000")!, listener: "web", reason: "too many connections")
        #expect(Self.withoutTime(clientOnly) == #"{"verdict":"DROPPED","IP":{"source":"10.0.0.1","ipVersion":"IPv4"},"#
            + #""Type":"L3_L4","drop_reason_desc":"too many connections","#
            + #""proxy":{"listener":"web"},"Summary":"dropped from 10.0.0.1:40000: too many connections"}"#)
    }

    /// The endpoints of HTTPPolicySessionTests' endpoints file.
    static let frontend = #"{"namespace":"shop","labels":["k8s:app=frontend","k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop","k8s:io.kubernetes.pod.namespace=shop"],"pod_name":"frontend"}"#
    static let backend = #"{"namespace":"shop","labels":["k8s:app=backend","k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop","k8s:io.kubernetes.pod.namespace=shop"],"pod_name":"backend"}"#

    @Test func httpRequestAndResponseRecords() throws {
        var now: UInt64 = 1_000
        let (session, collector) = try HTTPPolicySessionTests.session(clock: { now })
        _ = HTTPPolicySessionTests.run(session, .request, HTTPPolicySessionTests.get)
        now = 251_000
        _ = HTTPPolicySessionTests.run(session, .response, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        _ = HTTPPolicySessionTests.run(session, .request, "DELETE /api/items HTTP/1.1\r\nHost: backend\r\n\r\n")
        let records = collector.records.map(Self.withoutTime)
        try #require(records.count == 4)
        #expect(records[0] == #"{"verdict":"FORWARDED","IP":{"source":"10.0.0.1","destination":"10.0.0.2","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":40000,"destination_port":8080}},"source":\#(Self.frontend),"destination":\#(Self.backend),"#
            + #""Type":"L7","traffic_direction":"INGRESS","is_reply":false,"#
            + #""l7":{"type":"REQUEST","http":{"method":"GET","url":"/api/items","protocol":"HTTP/1.1"}},"#
            + #""ingress_allowed_by":[{"namespace":"shop","name":"backend"}],"#
            + #""Summary":"HTTP/1.1 request GET /api/items forwarded"}"#)
        #expect(records[1] == #"{"verdict":"FORWARDED","IP":{"source":"10.0.0.2","destination":"10.0.0.1","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":8080,"destination_port":40000}},"source":\#(Self.backend),"destination":\#(Self.frontend),"#
            + #""Type":"L7","traffic_direction":"INGRESS","is_reply":true,"#
            + #""l7":{"type":"RESPONSE","latency_ns":250000,"http":{"code":200,"method":"GET","url":"/api/items","protocol":"HTTP/1.1"}},"#
            + #""Summary":"HTTP/1.1 response GET /api/items 200 forwarded"}"#)
        #expect(records[2] == #"{"verdict":"DROPPED","IP":{"source":"10.0.0.1","destination":"10.0.0.2","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":40000,"destination_port":8080}},"source":\#(Self.frontend),"destination":\#(Self.backend),"#
            + #""Type":"L7","traffic_direction":"INGRESS","is_reply":false,"#
            + #""l7":{"type":"REQUEST","http":{"method":"DELETE","url":"/api/items","protocol":"HTTP/1.1"}},"#
            + #""Summary":"HTTP/1.1 request DELETE /api/items dropped"}"#)
        #expect(records[3] == #"{"verdict":"FORWARDED","IP":{"source":"10.0.0.2","destination":"10.0.0.1","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":8080,"destination_port":40000}},"source":\#(Self.backend),"destination":\#(Self.frontend),"#
            + #""Type":"L7","traffic_direction":"INGRESS","is_reply":true,"#
            + #""l7":{"type":"RESPONSE","http":{"code":403,"protocol":"HTTP/1.1"}},"#
            + #""Summary":"HTTP/1.1 response 403 forwarded"}"#, "the proxy's own 403, reported as a response")
    }

    /// A protocol other than HTTP through the L7 builder: its own `l7` object, the
    /// connection's transport, a reply's reversed path, and both policy lists.
    @Test func anL7RecordOfAnotherProtocol() {
        var connection = ConnectionIdentities(
            client: SocketAddress("10.0.0.1:5353")!, server: SocketAddress("10.0.0.9:53")!,
            source: .pod(namespace: "shop", labels: ["app": "frontend"]), destination: .reserved(.world))
        connection.transport = .udp
        var dns = JSONObject()
        dns["query"] = .string("example.com.")
        func rule(_ policy: String, _ direction: Direction) -> RuleReference {
            RuleReference(policyIndex: 0, policy: policy, direction: direction, isDeny: true, rule: 0, portRule: nil, l7Rule: nil)
        }
        let record = FlowRecords.l7(verdict: .dropped, connection: connection, direction: .egress, type: .response, latency: 7,
                                    protocolName: "dns", fields: dns,
                                    rules: [rule("shop/b", .egress), rule("clusterwide", .egress), rule("shop/b", .egress),
                                            rule("shop/c", .ingress)],
                                    allowed: false, summary: "DNS answer example.com. dropped")
        let world = FlowEndpoint(Identity.reserved(.world)).json.serialized()
        #expect(Self.withoutTime(record) == #"{"verdict":"DROPPED","IP":{"source":"10.0.0.9","destination":"10.0.0.1","ipVersion":"IPv4"},"#
            + #""l4":{"UDP":{"source_port":53,"destination_port":5353}},"source":\#(world),"#
            + #""destination":{"namespace":"shop","labels":["k8s:app=frontend","#
            + #""k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop","k8s:io.kubernetes.pod.namespace=shop"]},"#
            + #""Type":"L7","traffic_direction":"EGRESS","is_reply":true,"#
            + #""l7":{"type":"RESPONSE","latency_ns":7,"dns":{"query":"example.com."}},"#
            + #""ingress_denied_by":[{"namespace":"shop","name":"c"}],"#
            + #""egress_denied_by":[{"name":"clusterwide"},{"namespace":"shop","name":"b"}],"#
            + #""Summary":"DNS answer example.com. dropped"}"#)
    }

    @Test func endpointsWriteWhatTheyKnowInOneOrder() {
        #expect(FlowEndpoint(identity: 7, name: "shop/frontend").json.serialized() == #"{"identity":7,"name":"shop/frontend"}"#)
        #expect(FlowEndpoint(identity: 2).json.serialized() == #"{"identity":2}"#)
        #expect(FlowEndpoint(Identity(labels: [], namespace: nil)).json.serialized() == #"{"labels":[]}"#)
    }

    static let datapathPath = FlowPath(source: ("10.0.1.5", 40000), destination: ("10.0.2.7", 80), isIPv6: false, transport: "TCP")

    @Test func datapathDrop() {
        let record = FlowRecords.datapath(.dropped(reason: "policy denied"), path: Self.datapathPath,
                                          source: FlowEndpoint(identity: 256, name: "shop/frontend"),
                                          destination: FlowEndpoint(identity: 257), direction: .egress, policy: "shop/x")
        #expect(Self.withoutTime(record) == #"{"verdict":"DROPPED","IP":{"source":"10.0.1.5","destination":"10.0.2.7","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":40000,"destination_port":80}},"#
            + #""source":{"identity":256,"name":"shop/frontend"},"destination":{"identity":257},"#
            + #""Type":"L3_L4","traffic_direction":"EGRESS","drop_reason_desc":"policy denied","policy":"shop/x","#
            + #""Summary":"TCP 10.0.1.5:40000 -> 10.0.2.7:80 dropped (policy denied)"}"#)
    }

    @Test func datapathRedirect() {
        let record = FlowRecords.datapath(.redirected(proxyPort: 15001), path: Self.datapathPath,
                                          source: FlowEndpoint(identity: 256), destination: FlowEndpoint(identity: 257, name: "shop/backend"),
                                          direction: .ingress, policy: nil)
        #expect(Self.withoutTime(record) == #"{"verdict":"REDIRECTED","IP":{"source":"10.0.1.5","destination":"10.0.2.7","ipVersion":"IPv4"},"#
            + #""l4":{"TCP":{"source_port":40000,"destination_port":80}},"#
            + #""source":{"identity":256},"destination":{"identity":257,"name":"shop/backend"},"#
            + #""Type":"L3_L4","traffic_direction":"INGRESS","proxy_port":15001,"#
            + #""Summary":"TCP 10.0.1.5:40000 -> 10.0.2.7:80 redirected to proxy port 15001"}"#)
    }
}
