import Testing
@testable import L7Parsers

/// Entering a recorded HTTP/1 stream part-way (`sluice replay`): the first whole request or
/// status line that starts a line, nothing else.
struct HTTP1ResyncTests {
    private func request(_ text: String, atLineStart: Bool = true) -> Int? {
        Array(text.utf8).withUnsafeBytes { HTTP1Resync.requestStart(in: $0, atLineStart: atLineStart) }
    }

    private func response(_ text: String, atLineStart: Bool = true) -> Int? {
        Array(text.utf8).withUnsafeBytes { HTTP1Resync.responseStart(in: $0, atLineStart: atLineStart) }
    }

    @Test func findsTheFirstRequestLineAfterTheTailOfAnEarlierMessage() {
        #expect(request("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == 0)
        #expect(request("er: value\r\n\r\nPOST /a?b=c HTTP/1.0\r\n") == 13)
        #expect(request("body\nDELETE /x HTTP/1.1\n") == 5)
    }

    @Test func aLineThatOnlyLooksLikeARequestIsNotOne() {
        #expect(request("GET / HTTP/2.0\r\n") == nil)          // not HTTP/1
        #expect(request("GETX / HTTP/1.1\r\n") == nil)         // not a method
        #expect(request("FOO / HTTP/1.1\r\n") == nil)          // unknown token: any text could be one
        #expect(request("GET  HTTP/1.1\r\n") == nil)           // no target
        #expect(request("GET /a b HTTP/1.1\r\n") == nil)       // space in the target
        #expect(request("GET / HTTP/1.1") == nil)              // the line is not whole yet
        #expect(request("x: GET / HTTP/1.1\r\n") == nil)       // not at a line start
        // Mid-line start: the first line is skipped, the next one counts.
        #expect(request("GET / HTTP/1.1\r\nGET /b HTTP/1.1\r\n", atLineStart: false) == 16)
    }

    @Test func findsStatusLines() {
        #expect(response("HTTP/1.1 200 OK\r\n") == 0)
        #expect(response("HTTP/1.0 404\r\n") == 0)
        #expect(response("end of body\r\nHTTP/1.1 304 Not Modified\r\n") == 13)
        #expect(response("HTTP/1.1 20 OK\r\n") == nil)
        #expect(response("HTTP/1.1 2000 OK\r\n") == nil)
        #expect(response("HTTP/2 200\r\n") == nil)
        #expect(response("HTTP/1.1 200 OK") == nil)
    }
}
