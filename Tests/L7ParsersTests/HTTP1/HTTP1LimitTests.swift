import Testing
@testable import L7Parsers

/// Every limit in `HTTP1Limits` is enforced, with the status it documents, and before the
/// peer can make us hold more than the limit (the partial-line checks).
@Suite struct HTTP1LimitTests {
    static let small = HTTP1Limits(maximumRequestLineBytes: 32, maximumStatusLineBytes: 32, maximumHeaderBytes: 64,
                                   maximumHeaderCount: 3, maximumChunkSizeDigits: 4, maximumChunkLineBytes: 16,
                                   maximumTrailerBytes: 24, maximumLeadingEmptyLines: 1)

    private func expectError(_ records: [HTTP1Record], _ kind: HTTP1ParseError.Kind, _ status: Int,
                             sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .error(let got, let gotStatus, _) = records.last else {
            Issue.record("accepted: \(records)", sourceLocation: sourceLocation)
            return
        }
        #expect(got == kind, sourceLocation: sourceLocation)
        #expect(gotStatus == status, sourceLocation: sourceLocation)
    }

    @Test func requestLineAtTheLimitPassesAndOneMoreIs414() {
        let atLimit = "GET /" + String(repeating: "a", count: 18) + " HTTP/1.1"   // 32 bytes
        #expect(atLimit.utf8.count == 32)
        let records = verifyRequests(atLimit + "\r\nHost: a\r\n\r\n", limits: Self.small)
        #expect(records.first?.head?.method == "GET")
        let over = "GET /" + String(repeating: "a", count: 19) + " HTTP/1.1\r\nHost: a\r\n\r\n"
        expectError(verifyRequests(over, limits: Self.small), .requestLineTooLong, 414)
    }

    /// A request line that never ends is refused once it passes the limit, not held forever.
    @Test func unterminatedRequestLineIsRefusedEarly() {
        var parser = HTTP1Parser(direction: .request, limits: Self.small)
        let bytes = Array(("GET /" + String(repeating: "a", count: 100)).utf8)
        #expect(parser.parse(bytes[..<33]) == .needMore(minimumBytes: 1))
        guard case .error(let error) = parser.parse(bytes[..<34]) else {
            Issue.record("no error after 34 bytes")
            return
        }
        #expect(error.status == 414)
    }

    @Test func headerBytesAndCountAre431() {
        let big = "GET / HTTP/1.1\r\nHost: a\r\nX-A: " + String(repeating: "b", count: 60) + "\r\n\r\n"
        expectError(verifyRequests(big, limits: Self.small), .headerSectionTooLarge, 431)
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        expectError(verifyRequests(many, limits: Self.small), .tooManyHeaderFields, 431)
        let three = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"
        #expect(verifyRequests(three, limits: Self.small).first?.head?.fields.count == 3)
    }

    @Test func unterminatedHeaderSectionIsRefusedEarly() {
        var parser = HTTP1Parser(direction: .request, limits: Self.small)
        let bytes = Array(("GET / HTTP/1.1\r\nX: " + String(repeating: "b", count: 200)).utf8)
        var answer = HTTP1Event.needMore(minimumBytes: 1)
        var fed = 0
        while case .needMore = answer, fed < bytes.count {
            fed += 1
            answer = parser.parse(bytes[..<fed])
        }
        guard case .error(let error) = answer else {
            Issue.record("header section never refused")
            return
        }
        #expect(error.kind == .headerSectionTooLarge)
        #expect(fed == 16 + 64 + 1, "refused at the first byte past the limit")
    }

    @Test func chunkLimits() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        expectError(verifyRequests(head + "00001\r\na\r\n0\r\n\r\n", limits: Self.small), .chunkSizeTooLong, 400)
        #expect(verifyRequests(head + "0001\r\na\r\n0\r\n\r\n", limits: Self.small).last?.completesMessage == true)
        expectError(verifyRequests(head + "1;aaaaaaaaaaaaaaaaa\r\na\r\n0\r\n\r\n", limits: Self.small), .chunkLineTooLong, 400)
        expectError(verifyRequests(head + "0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", limits: Self.small), .tooManyTrailerFields, 431)
        expectError(verifyRequests(head + "0\r\nA: " + String(repeating: "x", count: 30) + "\r\n\r\n", limits: Self.small),
                    .trailerSectionTooLarge, 431)
    }

    @Test func leadingEmptyLineLimit() {
        #expect(verifyRequests("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", limits: Self.small).first?.head != nil)
        expectError(verifyRequests("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", limits: Self.small), .tooManyLeadingEmptyLines, 400)
    }

    @Test func statusLineLimit() {
        let records = verifyResponses("HTTP/1.1 200 " + String(repeating: "k", count: 40) + "\r\n\r\n",
                                      to: [HTTP1RequestSummary()], limits: Self.small)
        expectError(records, .statusLineTooLong, 502)
    }
}
