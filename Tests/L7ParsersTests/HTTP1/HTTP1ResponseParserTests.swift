import Testing
@testable import L7Parsers

/// Responses are framed by the request they answer (RFC 9112 §6.3); the parser is told each
/// request's method and upgrade intent, in order.
@Suite struct HTTP1ResponseParserTests {
    static let get = HTTP1RequestSummary()
    static let head = HTTP1RequestSummary(isHead: true)
    static let connect = HTTP1RequestSummary(isConnect: true)
    static let upgrade = HTTP1RequestSummary(upgradeRequested: true)

    @Test func contentLengthResponse() throws {
        let records = verifyResponses("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", to: [Self.get])
        let head = try #require(records.first?.head)
        #expect(head.status == 200)
        #expect(head.reason == "OK")
        #expect(head.framing == .contentLength(5))
        #expect(Array(records.dropFirst()) == [.body(38..<43), .complete(end: 43, trailers: [])])
    }

    @Test func bodiesThatCannotExist() throws {
        // HEAD: Content-Length describes the representation, no body follows (§6.3 item 1).
        let records = verifyResponses("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                                      + "HTTP/1.1 204 No Content\r\n\r\n"
                                      + "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                                      to: [Self.head, Self.get, Self.get])
        #expect(records.compactMap(\.head).map(\.framing) == [.none, .none, .none])
        #expect(records.filter(\.completesMessage).count == 3)
    }

    @Test func interimResponsesPrecedeTheFinalOne() throws {
        let records = verifyResponses("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                                      + "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
                                      + "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                                      to: [Self.get, Self.get])
        let heads = records.compactMap(\.head)
        #expect(heads.map(\.status) == [100, 103, 201, 200])
        #expect(heads.map(\.isInformational) == [true, true, false, false])
    }

    @Test func switchingProtocolsTurnsTheConnectionIntoARelay() throws {
        let message = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        verifyResponses(message, to: [Self.upgrade], backToBack: false)
        let text = message + "\u{81}\u{05}hello"
        let records = verifyResponses(text, to: [Self.upgrade], backToBack: false, prefixesNeedMore: false)
        let head = try #require(records.first?.head)
        #expect(head.switchesProtocol)
        #expect(records.dropFirst().first == .complete(end: head.length, trailers: []))
        #expect(records.last == .tunnel(head.length..<text.utf8.count))
    }

    @Test func successfulConnectTurnsTheConnectionIntoARelay() throws {
        let message = "HTTP/1.1 200 Connection Established\r\n\r\n"
        verifyResponses(message, to: [Self.connect], backToBack: false)
        let text = message + "\u{16}\u{03}\u{01}"
        let records = verifyResponses(text, to: [Self.connect], backToBack: false, prefixesNeedMore: false)
        #expect(records.first?.head?.switchesProtocol == true)
        #expect(records.last == .tunnel(39..<text.utf8.count))
        // A refused CONNECT is an ordinary response.
        let refused = verifyResponses("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", to: [Self.connect])
        #expect(refused.first?.head?.switchesProtocol == false)
        #expect(refused.last == .complete(end: 47, trailers: []))
    }

    @Test func bodyUntilCloseEndsAtEndOfInput() throws {
        let records = verifyResponses("HTTP/1.1 200 OK\r\n\r\nstreamed until close", to: [Self.get], backToBack: false)
        #expect(records.first?.head?.framing == .untilClose)
        #expect(records.first?.head?.keepAlive == false)
        #expect(Array(records.dropFirst()) == [.body(19..<39), .complete(end: 39, trailers: [])])
        // RFC 9112 §6.3 item 4: a response whose chunked is not final is read until close.
        let gzip = verifyResponses("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz", to: [Self.get], backToBack: false)
        #expect(gzip.first?.head?.framing == .untilClose)
    }

    @Test func chunkedResponseWithTrailers() {
        let records = verifyResponses("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\nExpires: never\r\n\r\n",
                                      to: [Self.get])
        #expect(records.last == .complete(end: 77, trailers: [["Expires", "never"]]))
    }

    @Test func keepAliveOfResponses() {
        let records = verifyResponses("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                                      to: [Self.get, Self.get])
        #expect(records.compactMap(\.head).map(\.keepAlive) == [true, true])
        let http10 = verifyResponses("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", to: [Self.get], backToBack: false)
        #expect(http10.first?.head?.keepAlive == false)
        let close = verifyResponses("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                                    to: [Self.get, Self.get])
        #expect(close.first?.head?.keepAlive == false)
        guard case .error(.dataAfterClose, 502, _) = close.last else {
            Issue.record("bytes after a closing response must be an error: \(close)")
            return
        }
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var text: String
        var requests: [HTTP1RequestSummary] = [HTTP1ResponseParserTests.get]
        var kind: HTTP1ParseError.Kind
        var testDescription: String { name }
    }

    static let malformed: [Case] = [
        Case(name: "unsolicited", text: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", requests: [], kind: .unsolicitedResponse),
        Case(name: "101 without upgrade", text: "HTTP/1.1 101 Switching Protocols\r\n\r\n", kind: .unexpectedSwitchingProtocols),
        Case(name: "CL and TE", text: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", kind: .contentLengthWithTransferEncoding),
        Case(name: "duplicate CL", text: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", kind: .duplicateContentLength),
        Case(name: "status too short", text: "HTTP/1.1 20 OK\r\n\r\n", kind: .invalidStatusCode),
        Case(name: "status out of range", text: "HTTP/1.1 099 Odd\r\n\r\n", kind: .invalidStatusCode),
        Case(name: "status four digits", text: "HTTP/1.1 2000 OK\r\n\r\n", kind: .invalidStatusCode),
        Case(name: "not HTTP", text: "ICY 200 OK\r\n\r\n", kind: .malformedStatusLine),
        Case(name: "HTTP/2 status line", text: "HTTP/2.0 200 OK\r\n\r\n", kind: .unsupportedVersion),
        Case(name: "leading empty line", text: "\r\nHTTP/1.1 200 OK\r\n\r\n", kind: .malformedStatusLine),
        Case(name: "obs-fold", text: "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", kind: .obsoleteLineFolding),
        Case(name: "bare LF", text: "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", kind: .bareLineFeed),
        Case(name: "TE in HTTP/1.0", text: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", kind: .transferEncodingInHTTP10),
        Case(name: "bad chunk", text: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n", kind: .invalidChunkSize),
    ]

    @Test(arguments: malformed)
    func malformedResponseIsAGatewayError(_ testCase: Case) throws {
        let records = verifyResponses(testCase.text, to: testCase.requests)
        guard case .error(let kind, let status, _) = try #require(records.last) else {
            Issue.record("accepted: \(records)")
            return
        }
        #expect(kind == testCase.kind)
        #expect(status == 502)
    }

    @Test func truncatedResponseBody() {
        let records = verifyResponses("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", to: [Self.get], backToBack: false)
        #expect(records.last == .truncated)
    }
}
