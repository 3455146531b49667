import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// HTTP/2 through the registry's HTTP session, from memory: a client and a server endpoint
/// (nghttp2, as in the proxy) on both ends of a `MemoryConnection` that runs the real driver.
/// The server records every request that reached it; tests assert on that, not only on
/// what the client saw. Real clients and servers are in Tests/EndToEnd/test_http2.py.
@Suite struct HTTP2PolicySessionTests {
    /// One exchange's view from the client.
    struct Response {
        var headers: [HTTP2Header] = []
        var body: [UInt8] = []
        var trailers: [HTTP2Header] = []
        var closed: UInt32?

        func field(_ name: String) -> String? { headers.first { $0.nameText == name }?.valueText }
        func trailer(_ name: String) -> String? { trailers.first { $0.nameText == name }?.valueText }
        var status: String? { field(":status") }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// What reached the server on one stream.
    struct Received {
        var headers: [HTTP2Header]
        var body: [UInt8] = []
        var trailers: [HTTP2Header] = []
        var ended = false
        func field(_ name: String) -> String? { headers.first { $0.nameText == name }?.valueText }
    }

    /// Client, proxy session and server, pumped until nothing moves.
    final class Harness {
        var connection: MemoryConnection
        let client = HTTP2Endpoint(role: .client)
        let server = HTTP2Endpoint(role: .server)
        let collector = Collector()
        var responses: [Int32: Response] = [:]
        var received: [Int32: Received] = [:]
        /// The order requests reached the server (the server's stream IDs).
        var arrivals: [Int32] = []
        /// How each server stream ended (its error code).
        var serverClosed: [Int32: UInt32] = [:]
        /// The GOAWAY the client received (last stream ID, error code).
        var clientGoAway: (lastStreamID: Int32, errorCode: UInt32)?
        /// Whether the server answers each complete request with 200 and `served <path>`
        /// (false: the test's `serve` closure answers).
        var serve: ((Harness, Int32, Received) -> Void)?
        /// Whether the client consumes response bodies as they come (false: a client that
        /// never opens its window).
        var clientReads = true
        var serverReads = true
        private var toServerTaken = 0
        private var toClientTaken = 0

        init(policy text: String = HTTPPolicySessionTests.policy, audit: Bool = false) throws {
            let policy = WorkerPolicy(holder: PolicySnapshotHolder(try HTTPPolicySessionTests.snapshot(text)))
            let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!,
                                               server: SocketAddress("10.0.0.2:8080")!)
            let registry = SessionRegistry.standard(configuration: ProxyConfiguration(workers: 1, listeners: []))
            let session = try #require(registry.streamSession(.http, context: SessionContext(
                identities: identities, policy: policy, reporter: collector, audit: audit)))
            connection = MemoryConnection(session: session)
            serve = { harness, stream, request in
                let path = request.field(":path") ?? ""
                let body = Array("served \(path)".utf8)
                harness.server.submitResponse(stream: stream, [HTTP2Header(":status", "200")], hasBody: true)
                harness.server.appendBody(stream: stream, body)
                harness.server.endBody(stream: stream)
            }
        }

        var http2Session: HTTP2PolicySession? {
            (connection.session as? HTTPVersionDetectingSession)?.chosen as? HTTP2PolicySession
        }

        @discardableResult
        func request(_ method: String, _ path: String, headers: [HTTP2Header] = [], body: [UInt8]? = nil,
                     trailers: [HTTP2Header] = [], endBody: Bool = true) -> Int32 {
            let head = [HTTP2Header(":method", method), HTTP2Header(":scheme", "http"),
                        HTTP2Header(":authority", "backend:8080"), HTTP2Header(":path", path)] + headers
            let stream = client.submitRequest(head, hasBody: body != nil)!
            if let body {
                client.appendBody(stream: stream, body)
                if endBody { client.endBody(stream: stream, trailers: trailers) }
            }
            pump()
            return stream
        }

        func pump() {
            for _ in 0..<10_000 {
                var moved = false
                if case .success(let bytes) = client.takeOutput(limit: 1 << 20), !bytes.isEmpty {
                    connection.clientSends(bytes)
                    moved = true
                }
                let toServer = connection.deliveredToServer
                if toServerTaken < toServer.count {
                    _ = toServer[toServerTaken...].withUnsafeBytes { server.receive($0) }
                    toServerTaken = toServer.count
                    moved = true
                }
                for event in server.takeEvents() { serverSaw(event) }
                if case .success(let bytes) = server.takeOutput(limit: 1 << 20), !bytes.isEmpty {
                    connection.serverSends(bytes)
                    moved = true
                }
                for event in server.takeEvents() { serverSaw(event) }
                let toClient = connection.deliveredToClient
                if toClientTaken < toClient.count {
                    _ = toClient[toClientTaken...].withUnsafeBytes { client.receive($0) }
                    toClientTaken = toClient.count
                    moved = true
                }
                for event in client.takeEvents() { clientSaw(event) }
                if !moved { return }
            }
            Issue.record("the exchange never settled")
        }

        private func serverSaw(_ event: HTTP2Event) {
            switch event {
            case .head(let stream, let headers, let endStream):
                received[stream] = Received(headers: headers.headers, ended: endStream)
                arrivals.append(stream)
                if endStream { serve?(self, stream, received[stream]!) }
            case .data(let stream, let bytes):
                received[stream]?.body += bytes
                if serverReads { server.consume(stream: stream, count: bytes.count) }
            case .trailers(let stream, let headers):
                received[stream]?.trailers = headers.headers
                received[stream]?.ended = true
                serve?(self, stream, received[stream]!)
            case .endOfBody(let stream):
                received[stream]?.ended = true
                serve?(self, stream, received[stream]!)
            case .closed(let stream, let code):
                serverClosed[stream] = code
            default:
                break
            }
        }

        private func clientSaw(_ event: HTTP2Event) {
            switch event {
            case .head(let stream, let headers, _):
                responses[stream, default: Response()].headers = headers.headers
            case .data(let stream, let bytes):
                responses[stream, default: Response()].body += bytes
                if clientReads { client.consume(stream: stream, count: bytes.count) }
            case .trailers(let stream, let headers):
                responses[stream, default: Response()].trailers = headers.headers
            case .closed(let stream, let code):
                responses[stream, default: Response()].closed = code
            case .goAway(let last, let code):
                clientGoAway = (last, code)
            default:
                break
            }
        }

        var records: [String] { collector.records.map { $0.serialized() } }
    }

    @Test func allowedStreamsReachTheServerDeniedOnesAreAnswered403() throws {
        let harness = try Harness()
        let allowed = harness.request("GET", "/api/items")
        let denied = harness.request("POST", "/admin", body: Array("x=1".utf8))
        let again = harness.request("GET", "/api/more")
        #expect(harness.responses[allowed]?.status == "200")
        #expect(harness.responses[allowed]?.text == "served /api/items")
        #expect(harness.responses[denied]?.status == "403")
        #expect(harness.responses[denied]?.text == "Access denied\r\n")
        #expect(harness.responses[again]?.text == "served /api/more", "other streams go on")
        #expect(harness.received.values.map { $0.field(":path") }.sorted { ($0 ?? "") < ($1 ?? "") }
                == ["/api/items", "/api/more"], "the denied stream never reached the server")
        let session = try #require(harness.http2Session)
        #expect(session.allowedCount == 2 && session.deniedCount == 1)
        #expect(harness.connection.closedReason == nil)
    }

    @Test func grpcDenialIsTrailersOnlyWithPermissionDenied() throws {
        let harness = try Harness()
        let stream = harness.request("POST", "/shop.Orders/Cancel",
                                     headers: [HTTP2Header("content-type", "application/grpc+proto"), HTTP2Header("te", "trailers")],
                                     body: [0, 0, 0, 0, 0])
        let response = try #require(harness.responses[stream])
        #expect(response.status == "200")
        #expect(response.field("grpc-status") == "7", "trailers-only: grpc-status in the only header block")
        #expect(response.field("grpc-message") != nil)
        #expect(response.body.isEmpty && response.closed == 0)
        #expect(harness.received.isEmpty)
    }

    @Test func bodiesAndTrailersPassBothWays() throws {
        let harness = try Harness(policy: Self.openPolicy)
        harness.serve = { harness, stream, request in
            harness.server.submitResponse(stream: stream, [HTTP2Header(":status", "200"),
                                                           HTTP2Header("content-type", "application/grpc")], hasBody: true)
            harness.server.appendBody(stream: stream, request.body.reversed())
            harness.server.endBody(stream: stream, trailers: [HTTP2Header("grpc-status", "0")])
        }
        let body = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let stream = harness.request("POST", "/pkg.Echo/Echo", headers: [HTTP2Header("content-type", "application/grpc")],
                                     body: body, trailers: [HTTP2Header("x-checksum", "abc")])
        let received = try #require(harness.received.values.first)
        // One Bool: on a mismatch, `#expect` on the arrays would diff 300,000 elements one by one.
        let whole = received.body == body
        #expect(whole, "a body larger than every window arrives whole: \(received.body.count) of \(body.count) bytes")
        #expect(received.trailers == [HTTP2Header("x-checksum", "abc")])
        let response = try #require(harness.responses[stream])
        #expect(response.body == body.reversed())
        #expect(response.trailer("grpc-status") == "0")
    }

    @Test func manyFieldsOfEverySizeReachTheServerAsSentAndTheResponseComesBackWhole() throws {
        // Past the first buffers of a received header block (12 fields, 512 bytes) both ways,
        // with empty values, repeats and obs-text bytes: what the server gets is what was sent.
        let harness = try Harness(policy: Self.openPolicy)
        var extra: [HTTP2Header] = []
        for index in 0..<200 {
            let value: [UInt8] = index % 7 == 0 ? [] : Array(repeating: UInt8(0x61 + index % 26), count: (index * 37) % 300)
            extra.append(HTTP2Header(name: Array("x-field-\(index % 150)".utf8), value: value))
        }
        extra.append(HTTP2Header(name: Array("x-raw".utf8), value: [0x61, 0xFF, 0x80]))
        let responseFields = (0..<40).map { HTTP2Header("x-answer-\($0)", String(repeating: "z", count: $0 * 20)) }
        harness.serve = { harness, stream, _ in
            harness.server.submitResponse(stream: stream, [HTTP2Header(":status", "200")] + responseFields, hasBody: false)
        }
        let stream = harness.request("GET", "/api/fields", headers: extra)
        let received = try #require(harness.received.values.first)
        #expect(Array(received.headers.filter { $0.name.first != UInt8(ascii: ":") }) == extra)
        let response = try #require(harness.responses[stream])
        #expect(response.status == "200")
        #expect(Array(response.headers.dropFirst()) == responseFields)
    }

    @Test func headerRulesAndHeaderActionsApply() throws {
        let harness = try Harness()
        let stream = harness.request("GET", "/tagged")
        #expect(harness.responses[stream]?.status == "200")
        #expect(harness.received.values.first?.field("x-team") == "shop", "headerMatches mismatch ADD applied")
    }

    @Test func flowRecordsSayHTTP2() throws {
        let harness = try Harness()
        harness.request("GET", "/api/items")
        harness.request("DELETE", "/api/items")
        let records = harness.records
        #expect(records.count == 4)
        #expect(records[0].contains(#""l7":{"type":"REQUEST","http":{"method":"GET","url":"/api/items","protocol":"HTTP/2"}}"#))
        #expect(records[0].contains(#""verdict":"FORWARDED""#))
        #expect(records[1].contains(#""code":200"#) && records[1].contains(#""type":"RESPONSE""#))
        #expect(records[2].contains(#""verdict":"DROPPED""#) && records[2].contains(#""method":"DELETE""#))
        #expect(records[3].contains(#""code":403"#))
    }

    @Test func pathsAreJudgedAndForwardedNormalised() throws {
        let harness = try Harness()
        let stream = harness.request("GET", "/api/../admin")
        #expect(harness.responses[stream]?.status == "403")
        let allowed = harness.request("GET", "/x/../api/a")
        #expect(harness.responses[allowed]?.status == "200")
        #expect(harness.received.values.map { $0.field(":path") } == ["/api/a"])
    }

    @Test func aSlowReaderThrottlesTheWriterWithBoundedMemory() throws {
        let harness = try Harness(policy: Self.openPolicy)
        harness.clientReads = false
        let big = [UInt8](repeating: 7, count: 4 << 20)
        harness.serve = { harness, stream, _ in
            harness.server.submitResponse(stream: stream, [HTTP2Header(":status", "200")], hasBody: true)
            harness.server.appendBody(stream: stream, big)
            harness.server.endBody(stream: stream)
        }
        let stream = harness.request("GET", "/big")
        // The client never opened its window: it got its 64 KiB, the proxy holds at most its
        // own stream window, and the server's writer waits.
        let got = harness.responses[stream]?.body.count ?? 0
        #expect(got == 65_535)
        let delivered = harness.connection.deliveredToServer.count
        #expect(delivered < 4096, "only control frames and the request went up")
        // The client reads: everything arrives.
        harness.clientReads = true
        harness.client.consume(stream: stream, count: got)
        harness.pump()
        #expect(harness.responses[stream]?.body.count == big.count)
    }

    @Test func clientResetReachesTheServer() throws {
        let harness = try Harness(policy: Self.openPolicy)
        harness.serve = nil
        let stream = harness.request("POST", "/upload", body: [1, 2, 3], endBody: false)
        #expect(harness.received.count == 1)
        harness.client.resetStream(stream, errorCode: 8)  // CANCEL
        harness.pump()
        let serverStream = try #require(harness.arrivals.first)
        #expect(harness.received[serverStream]?.body == [1, 2, 3])
        #expect(harness.serverClosed[serverStream] == 8, "the server saw the client's CANCEL")
        #expect(harness.http2Session?.isIdle == true)
    }

    /// nginx answers before reading a request body, then resets the stream NO_ERROR (RFC 9113
    /// §8.1): the client gets the whole response, then the reset, as from the server itself.
    @Test func anEarlyResponseThenNoErrorResetReachTheClientInOrder() throws {
        let harness = try Harness(policy: Self.openPolicy)
        harness.serve = nil
        let stream = harness.request("POST", "/upload", body: [UInt8](repeating: 1, count: 200_000), endBody: false)
        let serverStream = try #require(harness.arrivals.first)
        harness.server.submitResponse(stream: serverStream, [HTTP2Header(":status", "200")], hasBody: true)
        harness.server.appendBody(stream: serverStream, [UInt8](repeating: 2, count: 100_000))
        harness.server.endBody(stream: serverStream)
        harness.pump()
        harness.server.resetStream(serverStream, errorCode: 0)
        harness.pump()
        #expect(harness.responses[stream]?.status == "200")
        #expect(harness.responses[stream]?.body.count == 100_000)
        #expect(harness.responses[stream]?.closed == 0)
        #expect(harness.http2Session?.isIdle == true)
    }

    /// A draining proxy (a successor took over) sends GOAWAY with the last stream it took: the
    /// stream in flight finishes, one the client sent as the GOAWAY was on its way never
    /// reaches the server and is refused (the client may retry it elsewhere), then the
    /// connection ends. Closing an idle HTTP/2 connection instead would lose a stream opened
    /// at that moment (gRPC: UNAVAILABLE, "Connection reset by peer").
    @Test func drainingSendsGoAwayFinishesStreamsInFlightAndRefusesLaterOnes() throws {
        let harness = try Harness()
        harness.serve = nil
        let inFlight = harness.request("GET", "/api/items")
        #expect(harness.arrivals.count == 1)
        let taken = harness.connection.beginDrain()
        #expect(taken, "an HTTP/2 session ends the connection itself")
        // The client opens another stream before it has read the GOAWAY.
        let late = try #require(harness.client.submitRequest([
            HTTP2Header(":method", "GET"), HTTP2Header(":scheme", "http"),
            HTTP2Header(":authority", "backend:8080"), HTTP2Header(":path", "/api/late")], hasBody: false))
        if case .success(let bytes) = harness.client.takeOutput(limit: 1 << 20) { harness.connection.clientSends(bytes) }
        harness.pump()
        #expect(harness.clientGoAway?.lastStreamID == inFlight)
        #expect(harness.clientGoAway?.errorCode == 0)
        #expect(harness.arrivals.count == 1, "the stream after the GOAWAY never reached the server")
        #expect(harness.responses[late]?.closed == 7, "refused (REFUSED_STREAM): the client may retry it")
        #expect(harness.connection.closedReason == nil, "the stream in flight is still owed its response")
        let serverStream = try #require(harness.arrivals.first)
        harness.server.submitResponse(stream: serverStream, [HTTP2Header(":status", "200")], hasBody: false)
        harness.pump()
        #expect(harness.responses[inFlight]?.status == "200")
        #expect(harness.connection.closedReason?.hasPrefix("drained") == true, "\(harness.connection.closedReason ?? "open")")

        // An idle connection: GOAWAY naming no stream, then the end.
        let idle = try Harness()
        idle.request("GET", "/api/items")
        #expect(idle.responses.values.first?.status == "200")
        let idleTaken = idle.connection.beginDrain()
        #expect(idleTaken)
        idle.pump()
        #expect(idle.clientGoAway?.lastStreamID == 1)
        #expect(idle.connection.closedReason?.hasPrefix("drained") == true)
    }

    @Test func serverResetReachesTheClient() throws {
        let harness = try Harness(policy: Self.openPolicy)
        harness.serve = { harness, stream, _ in harness.server.resetStream(stream, errorCode: 7) }  // REFUSED_STREAM
        let stream = harness.request("GET", "/x")
        #expect(harness.responses[stream]?.closed == 7)
    }

    @Test func http1StillWorksOnTheSamePort() throws {
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(try HTTPPolicySessionTests.snapshot()))
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        let registry = SessionRegistry.standard(configuration: ProxyConfiguration(workers: 1, listeners: []))
        let session = try #require(registry.streamSession(.http, context: SessionContext(
            identities: identities, policy: policy, reporter: nil)))
        var connection = MemoryConnection(session: session)
        // "P" then "O": a prefix of the preface until the second byte.
        connection.clientSends(Array("P".utf8))
        #expect(connection.deliveredToServer.isEmpty)
        connection.clientSends(Array("OST /admin HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n".utf8))
        #expect(String(decoding: connection.deliveredToClient, as: UTF8.self).hasPrefix("HTTP/1.1 403"))
        #expect((session as? HTTPVersionDetectingSession)?.chosen is HTTPPolicySession)
    }

    @Test func thePrefaceSplitAnywhereStillChoosesHTTP2() throws {
        for split in 1..<24 {
            let harness = try Harness()
            let first = Array(HTTPVersionDetectingSession.preface[..<split])
            harness.connection.clientSends(first)
            #expect(harness.connection.deliveredToServer.isEmpty)
            let stream = harness.client.submitRequest([HTTP2Header(":method", "GET"), HTTP2Header(":scheme", "http"),
                                                       HTTP2Header(":authority", "b"), HTTP2Header(":path", "/api/x")],
                                                      hasBody: false)!
            if case .success(let bytes) = harness.client.takeOutput(limit: 1 << 20) {
                harness.connection.clientSends(bytes[split...])
            }
            harness.pump()
            #expect(harness.responses[stream]?.text == "served /api/x", "split at \(split)")
        }
    }

    /// Replay: a conversation recorded between a client and a server (no proxy between them)
    /// is judged stream by stream in audit mode; the denied stream is reported and relayed,
    /// so that the recorded server's answers stay in step.
    @Test func aRecordedConversationIsJudgedInAuditMode() throws {
        // Record: client and server endpoints talking directly.
        let client = HTTP2Endpoint(role: .client), server = HTTP2Endpoint(role: .server)
        var fromClient: [UInt8] = [], fromServer: [UInt8] = []
        func head(_ method: String, _ path: String) -> [HTTP2Header] {
            [HTTP2Header(":method", method), HTTP2Header(":scheme", "http"), HTTP2Header(":authority", "b"),
             HTTP2Header(":path", path)]
        }
        for (method, path) in [("GET", "/api/a"), ("DELETE", "/api/a"), ("GET", "/api/b")] {
            _ = client.submitRequest(head(method, path), hasBody: false)
        }
        for _ in 0..<6 {
            if case .success(let bytes) = client.takeOutput(limit: 1 << 20) {
                fromClient += bytes
                _ = bytes.withUnsafeBytes { server.receive($0) }
            }
            for event in server.takeEvents() {
                if case .head(let stream, _, _) = event {
                    server.submitResponse(stream: stream, [HTTP2Header(":status", "200")], hasBody: true)
                    server.appendBody(stream: stream, Array("ok".utf8))
                    server.endBody(stream: stream)
                }
            }
            if case .success(let bytes) = server.takeOutput(limit: 1 << 20) {
                fromServer += bytes
                _ = bytes.withUnsafeBytes { client.receive($0) }
            }
            _ = client.takeEvents()
        }
        // Replay through the registry's session in audit mode.
        let harness = try Harness(audit: true)
        harness.connection.clientSends(fromClient)
        harness.connection.serverSends(fromServer)
        #expect(AuditModeTests.verdicts(harness.collector) == [
            "request FORWARDED", "request DROPPED", "request FORWARDED",
            "response FORWARDED", "response DROPPED", "response FORWARDED",
        ])
        #expect(harness.connection.closedReason == nil)
    }

    /// HTTPPolicySessionTests' policy with one rule that allows every path.
    static let openPolicy: String = {
        let policy = HTTPPolicySessionTests.policy
        let rules = policy.range(of: "http:\n")!
        let indent = policy[rules.upperBound...].prefix { $0 == " " }
        return policy[..<rules.upperBound] + indent + "- {path: \"/.*\"}\n"
    }()
}
