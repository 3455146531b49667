import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// Records flow records instead of writing them.
final class Collector: L7FlowReporter {
    var records: [JSONObject] = []
    func report(_ record: JSONObject) { records.append(record) }
}

/// The HTTP session without sockets: bytes in, operations and flow records out.
@Suite struct HTTPPolicySessionTests {
    static let policy = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: backend, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
            - fromEndpoints: [{matchLabels: {app: frontend}}]
              toPorts:
                - ports: [{port: "8080", protocol: TCP}]
                  rules:
                    http:
                      - {method: GET, path: "/api/.*"}
                      - method: GET
                        path: "/tagged"
                        headerMatches: [{name: X-Team, value: shop, mismatch: ADD}]
        """
    static let endpoints = """
        endpoints:
          - {ip: 10.0.0.1, namespace: shop, pod: frontend, labels: {app: frontend}}
          - {ip: 10.0.0.2, namespace: shop, pod: backend, labels: {app: backend}}
        """

    static func snapshot(_ policyText: String = policy) throws -> PolicySnapshot {
        let loaded = PolicyLoader.load(text: policyText, file: "policy.yaml")
        #expect(loaded.errors.isEmpty)
        return PolicySnapshot(policies: loaded.policies,
                              endpoints: try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml"))
    }

    static func session(holder: PolicySnapshotHolder? = nil,
                        clock: @escaping () -> UInt64 = { 0 }) throws -> (HTTPPolicySession, Collector) {
        let policy = WorkerPolicy(holder: try holder ?? PolicySnapshotHolder(snapshot()))
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        let collector = Collector()
        return (HTTPPolicySession(limits: .standard, policy: policy, identities: identities, reporter: collector, clock: clock),
                collector)
    }

    /// Runs one direction until the session needs more, consuming what it passes or drops.
    static func run(_ session: HTTPPolicySession, _ side: TrafficDirection, _ text: String) -> [SessionOperation] {
        var bytes = Array(text.utf8)
        var operations: [SessionOperation] = []
        while true {
            let operation = bytes.withUnsafeBytes { session.step(side, $0) }
            if case .needMore = operation { return operations }
            operations.append(operation)
            switch operation {
            case .pass(let count), .drop(let count): bytes.removeFirst(count)
            default: break
            }
            if operations.count > 20 { return operations }
        }
    }

    static let get = "GET /api/items HTTP/1.1\r\nHost: backend\r\n\r\n"

    @Test func allowedRequestsPassWholeAndAreReported() throws {
        let (session, collector) = try Self.session()
        #expect(Self.run(session, .request, Self.get) == [.pass(Self.get.utf8.count)])
        #expect(session.allowedCount == 1)
        let record = try #require(collector.records.first)
        #expect(record.serialized().contains(#""verdict":"FORWARDED""#))
        #expect(record.serialized().contains(#""l7":{"type":"REQUEST","http":{"method":"GET","url":"/api/items","protocol":"HTTP/1.1"}}"#))
        #expect(record.serialized().contains(#""ingress_allowed_by":[{"namespace":"shop","name":"backend"}]"#))
    }

    @Test func deniedRequestsAreDroppedAndAnswered403() throws {
        let (session, collector) = try Self.session()
        let post = "POST /api/items HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\n\r\nhello"
        let operations = Self.run(session, .request, post)
        let headLength = post.utf8.count - 5
        #expect(operations == [.drop(headLength), .drop(5), .reply(HTTP1LocalResponses.standard.forbidden)])
        #expect(String(decoding: HTTP1LocalResponses.standard.forbidden, as: UTF8.self).hasSuffix("\r\n\r\nAccess denied\r\n"))
        #expect(collector.records.map { $0.serialized().contains(#""verdict":"DROPPED""#) } == [true, false])
        #expect(collector.records.last?.serialized().contains(#""code":403"#) == true)
    }

    @Test func headerMatchAddRewritesTheHeadBeforeItIsForwarded() throws {
        let (session, _) = try Self.session()
        let request = "GET /tagged HTTP/1.1\r\nHost: backend\r\nAccept: */*\r\n\r\n"
        let operations = Self.run(session, .request, request)
        #expect(operations == [
            .forward(Array("GET /tagged HTTP/1.1\r\nHost: backend\r\nAccept: */*\r\nx-team: shop\r\n\r\n".utf8)),
            .drop(request.utf8.count),
        ])
    }

    @Test func responsesAreReportedWithTheirRequestAndLatency() throws {
        var now: UInt64 = 1_000
        let (session, collector) = try Self.session(clock: { now })
        _ = Self.run(session, .request, Self.get)
        now = 251_000
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        #expect(Self.run(session, .response, response) == [.pass(response.utf8.count - 2), .pass(2)])
        let record = try #require(collector.records.last?.serialized())
        #expect(record.contains(#""is_reply":true"#))
        #expect(record.contains(#""latency_ns":250000"#))
        #expect(record.contains(#""http":{"code":200,"method":"GET","url":"/api/items""#))
    }

    @Test func aStalledHeadIsAnswered408OnlyWhenNothingIsOwed() throws {
        let (idle, _) = try Self.session()
        #expect(idle.incompleteMessageTimedOut().map { String(decoding: $0, as: UTF8.self).hasPrefix("HTTP/1.1 408 ") } == true)
        let (busy, _) = try Self.session()
        _ = Self.run(busy, .request, Self.get)
        #expect(busy.incompleteMessageTimedOut() == nil, "a 408 now would overtake the response still owed")
    }

    @Test func malformedRequestsAreAnswered400AndClose() throws {
        let (session, _) = try Self.session()
        let operations = Self.run(session, .request, "GET /api/x HTTP/1.1\r\nHost : b\r\n\r\n")
        guard case .reply(let answer) = operations.first, case .close = operations.last else {
            Issue.record("expected a 400 then close, got \(operations)")
            return
        }
        #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 400 "))
    }

    /// Issue 9, item 1: a policy published while a connection is open applies to that
    /// connection's next request, both ways (a removed allow denies, an added one allows).
    @Test func aPolicyChangeAppliesToTheNextRequestOnAnOpenConnection() throws {
        let holder = PolicySnapshotHolder(try Self.snapshot())
        let (session, _) = try Self.session(holder: holder)
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        #expect(Self.run(session, .request, Self.get) == [.pass(Self.get.utf8.count)])
        _ = Self.run(session, .response, response)

        // The allow for GET /api/.* is removed: the same request on the same connection is denied.
        holder.replace(with: try Self.snapshot(Self.policy.replacingOccurrences(of: "/api/.*", with: "/other/.*")))
        #expect(Self.run(session, .request, Self.get) == [.drop(Self.get.utf8.count), .reply(HTTP1LocalResponses.standard.forbidden)])

        // And loosened again: allowed on the next request.
        holder.replace(with: try Self.snapshot())
        #expect(Self.run(session, .request, Self.get) == [.pass(Self.get.utf8.count)])
    }

    /// Header fields are turned into text only when a rule of the connection can read them:
    /// a policy change that adds a header rule on an open connection must still see the next
    /// request's headers (nothing may pass because the session skipped them).
    @Test func aHeaderRuleAddedOnAnOpenConnectionReadsTheNextRequestsHeaders() throws {
        let plain = """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: backend, namespace: shop}
            spec:
              endpointSelector: {matchLabels: {app: backend}}
              ingress:
                - fromEndpoints: [{matchLabels: {app: frontend}}]
                  toPorts:
                    - ports: [{port: "8080", protocol: TCP}]
                      rules:
                        http: [{method: GET, path: "/api/.*"}]
            """
        let holder = PolicySnapshotHolder(try Self.snapshot(plain))
        let (session, _) = try Self.session(holder: holder)
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        #expect(Self.run(session, .request, Self.get) == [.pass(Self.get.utf8.count)])
        _ = Self.run(session, .response, response)

        // Now GET /api/ needs a token: without it denied, with it allowed, on the same connection.
        holder.replace(with: try Self.snapshot(plain.replacingOccurrences(
            of: #"{method: GET, path: "/api/.*"}"#, with: #"{method: GET, path: "/api/.*", headers: ["X-Token: s3cret"]}"#)))
        #expect(Self.run(session, .request, Self.get) == [.drop(Self.get.utf8.count), .reply(HTTP1LocalResponses.standard.forbidden)])
        let withToken = Self.get.replacingOccurrences(of: "\r\n\r\n", with: "\r\nX-Token: s3cret\r\n\r\n")
        #expect(withToken != Self.get)
        #expect(Self.run(session, .request, withToken) == [.pass(withToken.utf8.count)])
    }

    /// Only the header fields a rule names become facts: the named one is found in any letter
    /// case, and its copies, with other fields between them, are still judged joined (a second
    /// copy cannot hide behind fields the rule does not name).
    @Test func onlyNamedHeaderFieldsAreReadInAnyCaseAndRepeatsStillJoin() throws {
        let policy = Self.policy.replacingOccurrences(
            of: #"{method: GET, path: "/api/.*"}"#, with: #"{method: GET, path: "/api/.*", headers: ["X-Token: s3cret"]}"#)
        #expect(policy != Self.policy)
        let (session, _) = try Self.session(holder: PolicySnapshotHolder(try Self.snapshot(policy)))
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        let upper = Self.get.replacingOccurrences(of: "\r\n\r\n", with: "\r\nAccept: */*\r\nX-TOKEN: s3cret\r\n\r\n")
        #expect(Self.run(session, .request, upper) == [.pass(upper.utf8.count)])
        _ = Self.run(session, .response, response)
        let repeated = Self.get.replacingOccurrences(
            of: "\r\n\r\n", with: "\r\nx-token: s3cret\r\nAccept: */*\r\nX-Token: other\r\n\r\n")
        #expect(Self.run(session, .request, repeated) == [.drop(repeated.utf8.count), .reply(HTTP1LocalResponses.standard.forbidden)])
    }

    @Test func headerNamesMatchFieldNameBytesIgnoringCase() {
        let names = HTTPHeaderNames(["x-token", "Content-Type"])
        func has(_ text: String) -> Bool { Array(text.utf8).withUnsafeBytes { names.contains($0) } }
        #expect(has("X-Token") && has("x-token") && has("CONTENT-TYPE") && has("content-type"))
        #expect(!has("x-tokens") && !has("x-toke") && !has("accept") && !has(""))
        #expect(HTTPHeaderNames([]).isEmpty && !names.isEmpty)
    }

    /// Issue 9, item 9: a response that cannot be relayed, with nothing of it sent yet, is
    /// answered 502 after the valid response before it; then the connection closes.
    @Test func aFaultyResponseAfterAValidOneIsAnswered502() throws {
        let (session, collector) = try Self.session()
        _ = Self.run(session, .request, Self.get + Self.get)
        let valid = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        let operations = Array(Self.run(session, .response, valid + "garbage\r\n\r\n").prefix(4))
        #expect(operations.prefix(2) == [.pass(valid.utf8.count - 2), .pass(2)])
        guard operations.count == 4, case .forward(let answer) = operations[2], case .close = operations[3] else {
            Issue.record("expected the valid response, a 502, then close; got \(operations)")
            return
        }
        #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        #expect(collector.records.last?.serialized().contains(#""code":502"#) == true)
    }

    /// Issue 9, item 9: the response clock's answer is 504 while a response is owed, and
    /// nothing once none is.
    @Test func aSilentUpstreamIsAnswered504OnlyWhileAResponseIsOwed() throws {
        let (session, _) = try Self.session()
        #expect(!session.isAwaitingResponse && session.isIdle)
        _ = Self.run(session, .request, Self.get)
        #expect(session.isAwaitingResponse && !session.isIdle)
        let answer = try #require(session.responseTimedOut())
        #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 504 Gateway Timeout\r\n"))
        #expect(session.responseTimedOut() == nil)
    }
}
