import Testing
@testable import L7Parsers

/// Requests through the split-feed verifier: the records say what a driver would see.
@Suite struct HTTP1RequestParserTests {
    @Test func simpleGetReportsRangesAndFraming() throws {
        let records = verifyRequests("GET /api/v1?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \r\n\r\n")
        #expect(records.count == 2)
        let head = try #require(records.first?.head)
        #expect(head.method == "GET")
        #expect(head.target == "/api/v1?x=1")
        #expect(head.version == "HTTP/1.1")
        #expect(head.fields == [["Host", "example.com"], ["Accept", "*/*"]])
        #expect(head.host == "example.com")
        #expect(head.framing == .none)
        #expect(head.keepAlive)
        #expect(head.length == 62)
        #expect(records.last == .complete(end: 62, trailers: []))
    }

    @Test func contentLengthBodyIsReportedInPlace() throws {
        let text = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
        let records = verifyRequests(text)
        let head = try #require(records.first?.head)
        #expect(head.framing == .contentLength(11))
        #expect(records.dropFirst() == [.body(54..<65), .complete(end: 65, trailers: [])])
        #expect(records.count == 3)
    }

    @Test func chunkedBodyWithExtensionsAndTrailers() throws {
        let text = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5;name=value;flag\r\nhello\r\n"
            + "1A;q=\"quoted \\\" text\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
            + "0\r\nChecksum: abc\r\nX-Other: 1\r\n\r\n"
        let records = verifyRequests(text)
        let head = try #require(records.first?.head)
        #expect(head.framing == .chunked)
        let start = head.length
        #expect(Array(records.dropFirst()) == [
            .chunkFraming(start..<(start + 19)), .body((start + 19)..<(start + 24)), .chunkFraming((start + 24)..<(start + 26)),
            .chunkFraming((start + 26)..<(start + 49)), .body((start + 49)..<(start + 75)), .chunkFraming((start + 75)..<(start + 77)),
            .complete(end: text.utf8.count, trailers: [["Checksum", "abc"], ["X-Other", "1"]]),
        ])
    }

    @Test func chunkedWithoutTrailers() {
        let text = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        let records = verifyRequests(text)
        #expect(records.last == .complete(end: text.utf8.count, trailers: []))
        #expect(records.filter { if case .body = $0 { true } else { false } }.count == 1)
    }

    @Test func pipelinedRequestsKeepTheirBoundaries() throws {
        let first = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        let second = "POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        let third = "GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        let records = verifyRequests(first + second + third, backToBack: false)
        let heads = records.compactMap(\.head)
        #expect(heads.map(\.target) == ["/one", "/two", "/three"])
        #expect(heads.map(\.start) == [0, first.utf8.count, (first + second).utf8.count])
        #expect(heads.map(\.keepAlive) == [true, true, false])
        #expect(records.filter(\.completesMessage).count == 3)
    }

    @Test func keepAliveFollowsVersionAndConnection() throws {
        let records = verifyRequests("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(records.compactMap(\.head).map(\.keepAlive) == [true, true])
        let http10 = verifyRequests("GET / HTTP/1.0\r\n\r\n", backToBack: false)
        #expect(http10.first?.head?.keepAlive == false)
        let close = verifyRequests("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n", backToBack: false)
        #expect(close.first?.head?.keepAlive == false)
    }

    /// RFC 9112 §9.6: nothing is processed after a request that closes the connection.
    @Test func bytesAfterAClosingRequestAreRejected() {
        let closing = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        let records = verifyRequests(closing + "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(records.compactMap(\.head).count == 1)
        #expect(records.last == .error(.dataAfterClose, status: 400, offset: closing.utf8.count))
    }

    @Test func expectContinueUpgradeConnectAndTargetForms() throws {
        let records = verifyRequests(
            "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nz"
            + "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n"
            + "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
            + "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
            + "GET http://example.com:8080/p?q HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"
            + "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
        let heads = records.compactMap(\.head)
        #expect(heads.map(\.expectsContinue) == [true, false, false, false, false, false])
        #expect(heads.map(\.upgradeRequested) == [false, true, false, false, false, false],
                "Upgrade without Connection: upgrade is not an upgrade request")
        #expect(heads.map(\.isConnect) == [false, false, true, false, false, false])
        #expect(heads.map(\.targetForm) == [.origin, .origin, .authority, .asterisk, .absolute, .origin])
        #expect(heads.map(\.path) == ["/x", "/chat", "", "*", "/p?q", "/ws"])
        #expect(heads.map(\.authority) == [nil, nil, "example.com:443", nil, "example.com:8080", nil])
    }

    @Test func absoluteFormWithoutPathHasAnEmptyPath() throws {
        let records = verifyRequests("GET http://example.com?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        let head = try #require(records.first?.head)
        #expect(head.authority == "example.com")
        #expect(head.path == "?q=1")
        #expect(head.host == "example.com")
    }

    /// RFC 9112 §3.2.2: the target's authority is the host. Host must agree with it (ASCII
    /// case aside); an HTTP/1.0 request may have no Host at all.
    @Test func absoluteFormHostAgreesWithTheAuthority() throws {
        let records = verifyRequests("GET http://Example.COM:80/p HTTP/1.1\r\nHost: example.com:80\r\n\r\n"
                                     + "GET http://example.com/p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        let heads = records.compactMap(\.head)
        #expect(heads.map(\.authority) == ["Example.COM:80", "example.com"])
        #expect(heads.map(\.host) == ["example.com:80", nil])
    }

    @Test func leadingEmptyLinesAreSkippedAndCounted() throws {
        let records = verifyRequests("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        let head = try #require(records.first?.head)
        #expect(head.length == 31)
        #expect(head.method == "GET")
    }

    @Test func fieldValuesKeepInnerWhitespaceAndObsText() throws {
        let records = verifyRequests("GET / HTTP/1.1\r\nHost: a\r\nX-A: \t one  two \t\r\nX-B: caf\u{e9}\r\nX-Empty:\r\n\r\n")
        let head = try #require(records.first?.head)
        #expect(head.fields == [["Host", "a"], ["X-A", "one  two"], ["X-B", "caf\u{e9}"], ["X-Empty", ""]])
    }

    @Test func contentLengthZeroIsNoBodyAndLeadingZerosAreDigits() throws {
        let records = verifyRequests("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                                     + "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 002\r\n\r\nab")
        #expect(records.compactMap(\.head).map(\.framing) == [.none, .contentLength(2)])
    }

    @Test func truncatedBodyIsReportedAtEndOfInput() {
        let records = verifyRequests("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", backToBack: false)
        #expect(records.last == .truncated)
        let partialHead = verifyRequests("GET / HTTP/1.1\r\nHost", backToBack: false)
        #expect(partialHead == [.truncated])
    }

    /// A request fed one byte per call costs linear time: the line-feed search never
    /// revisits a byte, however the head is split.
    @Test func byteByByteFeedNeverRescans() {
        var text = "GET / HTTP/1.1\r\nHost: a\r\n"
        for index in 0..<500 { text += "X-Header-\(index): \(String(repeating: "v", count: 50))\r\n" }
        text += "\r\n"
        let bytes = Array(text.utf8)
        var parser = HTTP1Parser(direction: .request, limits: HTTP1Limits(maximumHeaderCount: 1000))
        var buffer: [UInt8] = []
        var sawHead = false
        for byte in bytes {
            buffer.append(byte)
            switch parser.parse(buffer) {
            case .needMore: continue
            case .head(let head): sawHead = head.length == bytes.count && head.fields.count == 501
            case let other:
                Issue.record("unexpected \(other)")
                return
            }
        }
        #expect(sawHead)
        #expect(parser.bytesExamined == bytes.count)
    }
}
