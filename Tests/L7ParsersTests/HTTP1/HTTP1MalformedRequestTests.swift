import Testing
@testable import L7Parsers

/// Every way a client can break framing or grammar (RFC 9112 §11.2 smuggling vectors first),
/// each through every slicing: the same typed error, at the same offset, with the status
/// the proxy answers, and nothing of the request reported as a head.
@Suite struct HTTP1MalformedRequestTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var text: String
        var kind: HTTP1ParseError.Kind
        var status: Int = 400
        var testDescription: String { name }
    }

    static let host = "Host: a\r\n"

    static let smuggling: [Case] = [
        Case(name: "CL and TE", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             kind: .contentLengthWithTransferEncoding),
        Case(name: "TE then CL", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
             kind: .contentLengthWithTransferEncoding),
        Case(name: "duplicate equal CL", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
             kind: .duplicateContentLength),
        Case(name: "conflicting CL", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 5\r\ncontent-length: 6\r\n\r\nhello!",
             kind: .duplicateContentLength),
        Case(name: "CL list", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 5, 5\r\n\r\nhello", kind: .invalidContentLength),
        Case(name: "CL sign", text: "POST / HTTP/1.1\r\n\(host)Content-Length: +5\r\n\r\nhello", kind: .invalidContentLength),
        Case(name: "CL negative", text: "POST / HTTP/1.1\r\n\(host)Content-Length: -1\r\n\r\n", kind: .invalidContentLength),
        Case(name: "CL inner space", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 1 2\r\n\r\n", kind: .invalidContentLength),
        Case(name: "CL empty", text: "POST / HTTP/1.1\r\n\(host)Content-Length:\r\n\r\n", kind: .invalidContentLength),
        Case(name: "CL hex", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 0x10\r\n\r\n", kind: .invalidContentLength),
        Case(name: "CL overflow", text: "POST / HTTP/1.1\r\n\(host)Content-Length: 99999999999999999999\r\n\r\n", kind: .invalidContentLength),
        Case(name: "TE not chunked", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: gzip\r\n\r\n", kind: .chunkedNotFinal),
        Case(name: "TE chunked not final", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: chunked, gzip\r\n\r\n", kind: .chunkedNotFinal),
        Case(name: "TE chunked twice", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
             kind: .chunkedNotFinal),
        Case(name: "TE unknown coding", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: foo, chunked\r\n\r\n",
             kind: .unsupportedTransferCoding, status: 501),
        Case(name: "TE lookalike", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: xchunked\r\n\r\n",
             kind: .unsupportedTransferCoding, status: 501),
        Case(name: "TE empty element", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: ,chunked\r\n\r\n", kind: .invalidTransferEncoding),
        Case(name: "TE parameters", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: chunked;q=1\r\n\r\n", kind: .invalidTransferEncoding),
        Case(name: "TE with vertical tab", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding:\u{0B}chunked\r\n\r\n", kind: .invalidFieldValue),
        Case(name: "TE in HTTP/1.0", text: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", kind: .transferEncodingInHTTP10),
        Case(name: "obs-fold", text: "GET / HTTP/1.1\r\n\(host)X-A: one\r\n two\r\n\r\n", kind: .obsoleteLineFolding),
        Case(name: "obs-fold with tab", text: "GET / HTTP/1.1\r\n\(host)X-A: one\r\n\ttwo\r\n\r\n", kind: .obsoleteLineFolding),
        Case(name: "space before first field", text: "GET / HTTP/1.1\r\n Host: a\r\n\r\n", kind: .obsoleteLineFolding),
        Case(name: "bare LF in request line", text: "GET / HTTP/1.1\n\(host)\r\n", kind: .bareLineFeed),
        Case(name: "bare LF after field", text: "GET / HTTP/1.1\r\n\(host)X-A: b\n\r\n", kind: .bareLineFeed),
        Case(name: "bare LF ends head", text: "GET / HTTP/1.1\r\n\(host)\n", kind: .bareLineFeed),
        Case(name: "bare CR in value", text: "GET / HTTP/1.1\r\n\(host)X-A: b\rc\r\n\r\n", kind: .bareCarriageReturn),
        Case(name: "whitespace before colon", text: "GET / HTTP/1.1\r\nHost : a\r\n\r\n", kind: .whitespaceBeforeColon),
        Case(name: "tab before colon", text: "POST / HTTP/1.1\r\n\(host)Transfer-Encoding\t: chunked\r\n\r\n", kind: .whitespaceBeforeColon),
        Case(name: "invalid name byte", text: "GET / HTTP/1.1\r\n\(host)X(A): b\r\n\r\n", kind: .invalidFieldName),
        Case(name: "empty name", text: "GET / HTTP/1.1\r\n\(host): b\r\n\r\n", kind: .invalidFieldName),
        Case(name: "no colon", text: "GET / HTTP/1.1\r\n\(host)X-A\r\n\r\n", kind: .invalidFieldName),
        Case(name: "NUL in value", text: "GET / HTTP/1.1\r\n\(host)X-A: b\u{0}c\r\n\r\n", kind: .invalidFieldValue),
        Case(name: "DEL in value", text: "GET / HTTP/1.1\r\n\(host)X-A: b\u{7F}\r\n\r\n", kind: .invalidFieldValue),
        Case(name: "missing Host", text: "GET / HTTP/1.1\r\nAccept: x\r\n\r\n", kind: .missingHost),
        Case(name: "duplicate Host", text: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", kind: .duplicateHost),
        Case(name: "invalid Host", text: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", kind: .invalidHost),
        Case(name: "Host with userinfo", text: "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", kind: .invalidHost),
        // RFC 9112 §3.2: Host must be identical to the target's authority (issue 9, item 6).
        Case(name: "Host differs from absolute target", text: "GET http://a/x HTTP/1.1\r\nHost: admin\r\n\r\n",
             kind: .hostDiffersFromTarget),
        Case(name: "Host differs in port", text: "GET http://a:8080/x HTTP/1.1\r\nHost: a\r\n\r\n", kind: .hostDiffersFromTarget),
        Case(name: "empty Host with authority", text: "GET http://a/x HTTP/1.1\r\nHost:\r\n\r\n", kind: .hostDiffersFromTarget),
        Case(name: "two Hosts, second differs", text: "GET http://a/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
             kind: .duplicateHost),
        Case(name: "CONNECT with body", text: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 2\r\n\r\nhi", kind: .connectWithBody),
    ]

    static let requestLines: [Case] = [
        Case(name: "double space", text: "GET  / HTTP/1.1\r\n\(host)\r\n", kind: .malformedRequestLine),
        Case(name: "tab separator", text: "GET\t/ HTTP/1.1\r\n\(host)\r\n", kind: .invalidMethod),
        Case(name: "trailing space", text: "GET / HTTP/1.1 \r\n\(host)\r\n", kind: .malformedRequestLine),
        Case(name: "lower-case version", text: "GET / http/1.1\r\n\(host)\r\n", kind: .malformedRequestLine),
        Case(name: "HTTP/0.9", text: "GET /\r\n\r\n", kind: .malformedRequestLine),
        Case(name: "HTTP/2.0", text: "GET / HTTP/2.0\r\n\(host)\r\n", kind: .unsupportedVersion, status: 505),
        Case(name: "HTTP/1.2", text: "GET / HTTP/1.2\r\n\(host)\r\n", kind: .unsupportedVersion, status: 505),
        Case(name: "empty method", text: " / HTTP/1.1\r\n\(host)\r\n", kind: .invalidMethod),
        Case(name: "method with slash", text: "GE/T / HTTP/1.1\r\n\(host)\r\n", kind: .invalidMethod),
        Case(name: "space in target", text: "GET /a b HTTP/1.1\r\n\(host)\r\n", kind: .malformedRequestLine),
        Case(name: "fragment in target", text: "GET /a#b HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "bad percent", text: "GET /%zz HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "truncated percent", text: "GET /a% HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "quote in target", text: "GET /\"x\" HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "backslash in target", text: "GET /a\\b HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "non-ASCII target", text: "GET /caf\u{e9} HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "relative target", text: "GET foo HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "absolute without authority", text: "GET http:///x HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "asterisk with GET", text: "GET * HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "CONNECT origin-form", text: "CONNECT / HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "CONNECT without port", text: "CONNECT example.com HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "CONNECT bad port", text: "CONNECT example.com:99999 HTTP/1.1\r\n\(host)\r\n", kind: .invalidTarget),
        Case(name: "too many empty lines", text: String(repeating: "\r\n", count: 9) + "GET / HTTP/1.1\r\n\(host)\r\n",
             kind: .tooManyLeadingEmptyLines),
    ]

    static let chunked: [Case] = {
        let head = "POST / HTTP/1.1\r\n\(host)Transfer-Encoding: chunked\r\n\r\n"
        return [
            Case(name: "non-hex size", text: head + "zz\r\n", kind: .invalidChunkSize),
            Case(name: "empty size", text: head + "\r\n", kind: .invalidChunkSize),
            Case(name: "negative size", text: head + "-5\r\nhello\r\n0\r\n\r\n", kind: .invalidChunkSize),
            Case(name: "space after size", text: head + "5 \r\nhello\r\n0\r\n\r\n", kind: .invalidChunkSize),
            Case(name: "0x prefix", text: head + "0x5\r\nhello\r\n0\r\n\r\n", kind: .invalidChunkSize),
            Case(name: "size overflow", text: head + "8000000000000000\r\n", kind: .chunkSizeTooLong),
            Case(name: "too many digits", text: head + "00000000000000001\r\nx\r\n0\r\n\r\n", kind: .chunkSizeTooLong),
            Case(name: "bare LF after size", text: head + "5\nhello\r\n0\r\n\r\n", kind: .bareLineFeed),
            Case(name: "data longer than size", text: head + "3\r\nhello\r\n0\r\n\r\n", kind: .missingChunkTerminator),
            Case(name: "LF only after data", text: head + "5\r\nhello\n0\r\n\r\n", kind: .missingChunkTerminator),
            Case(name: "empty extension name", text: head + "5;\r\nhello\r\n0\r\n\r\n", kind: .invalidChunkExtension),
            Case(name: "extension with space", text: head + "5; a=b\r\nhello\r\n0\r\n\r\n", kind: .invalidChunkExtension),
            Case(name: "unclosed quoted extension", text: head + "5;a=\"b\r\nhello\r\n0\r\n\r\n", kind: .invalidChunkExtension),
            Case(name: "extension without value", text: head + "5;a=\r\nhello\r\n0\r\n\r\n", kind: .invalidChunkExtension),
            Case(name: "trailer obs-fold", text: head + "0\r\nA: b\r\n c\r\n\r\n", kind: .obsoleteLineFolding),
            Case(name: "trailer bare LF", text: head + "0\r\nA: b\n\r\n", kind: .bareLineFeed),
            Case(name: "last chunk bare LF", text: head + "0\r\n\n", kind: .bareLineFeed),
        ]
    }()

    /// A bad head is never reported as a head: nothing of it would be forwarded.
    @Test(arguments: smuggling + requestLines)
    func malformedHeadIsRejected(_ testCase: Case) throws {
        let records = verifyRequests(testCase.text)
        #expect(records.count == 1, "only the error: \(records)")
        try expectError(records, testCase)
    }

    /// A bad chunk comes after a valid head: the head and the bytes before the fault are
    /// reported, then the error.
    @Test(arguments: chunked)
    func malformedChunkedBodyIsRejected(_ testCase: Case) throws {
        let records = verifyRequests(testCase.text)
        #expect(records.first?.head?.framing == .chunked)
        #expect(records.filter(\.completesMessage).isEmpty)
        try expectError(records, testCase)
    }

    private func expectError(_ records: [HTTP1Record], _ testCase: Case,
                             sourceLocation: SourceLocation = #_sourceLocation) throws {
        guard case .error(let kind, let status, _) = try #require(records.last) else {
            Issue.record("accepted: \(records)", sourceLocation: sourceLocation)
            return
        }
        #expect(kind == testCase.kind, sourceLocation: sourceLocation)
        #expect(status == testCase.status, sourceLocation: sourceLocation)
    }

    @Test func errorOffsetPointsAtTheOffendingByte() {
        let records = verifyRequests("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\u{0}c\r\n\r\n")
        #expect(records == [.error(.invalidFieldValue, status: 400, offset: 31)])
    }

    @Test func smugglingAfterAValidRequestKeepsTheValidOne() throws {
        let valid = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        let records = verifyRequests(valid + "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        #expect(records.count == 3)
        #expect(records[0].head?.length == valid.utf8.count)
        #expect(records[1] == .complete(end: valid.utf8.count, trailers: []))
        guard case .error(.duplicateContentLength, 400, _) = records[2] else {
            Issue.record("expected duplicateContentLength, got \(records[2])")
            return
        }
    }
}
