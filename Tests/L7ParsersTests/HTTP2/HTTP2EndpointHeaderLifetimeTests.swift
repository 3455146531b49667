import Testing
@testable import L7Parsers

/// Submitted heads are handed to nghttp2 uncopied (NO_COPY flags): the endpoint keeps each
/// block until its HEADERS frame left or was dropped. These cases check that the peer gets
/// exactly what was submitted after every other owner of the block is gone, and that no
/// block is kept longer than its frame.
@Suite struct HTTP2EndpointHeaderLifetimeTests {
    private static let request = [HTTP2Header(":method", "POST"), HTTP2Header(":scheme", "http"),
                                  HTTP2Header(":authority", "example"), HTTP2Header(":path", "/upload"),
                                  HTTP2Header("x-empty", ""), HTTP2Header("x-long", String(repeating: "v", count: 3_000))]

    @Test func aHeadLeavesIntactAfterItsOnlyOtherOwnerIsGoneAndIsThenReleased() {
        let (client, server) = HTTP2TestConnection.connected()
        var stream: Int32?
        do {
            // The block exists only here and, after submission, in the endpoint.
            let block = HTTP2HeaderBlock(Self.request)
            stream = client.submitRequest(block, hasBody: true)
        }
        #expect(client.headerBlocksInFlight == 1)
        // Other allocations that would reuse freed memory before the frame is written.
        let noise = (0..<64).map { HTTP2HeaderBlock([HTTP2Header("x-noise-\($0)", String(repeating: "n", count: 3_100))]) }
        HTTP2TestConnection.pump(client, server)
        #expect(client.headerBlocksInFlight == 0, "released once its frame left")
        let heads = server.takeEvents().compactMap { event -> [HTTP2Header]? in
            if case .head(let id, let headers, _) = event, id == stream { return headers.headers }
            return nil
        }
        #expect(heads == [Self.request])
        #expect(noise.count == 64)
    }

    @Test func namesWithUppercaseLettersAreLowercasedByNghttp2() {
        // Only lowercase names go uncopied (nghttp2: "application is responsible to pass header
        // field name in lowercase"); the peer would refuse an uppercase name as malformed.
        let (client, server) = HTTP2TestConnection.connected()
        let stream = client.submitRequest([HTTP2Header(":method", "GET"), HTTP2Header(":scheme", "http"),
                                           HTTP2Header(":authority", "example"), HTTP2Header(":path", "/"),
                                           HTTP2Header("X-Mixed-Case", "Value")], hasBody: false)
        HTTP2TestConnection.pump(client, server)
        let events = server.takeEvents()
        let head = events.compactMap { event -> [HTTP2Header]? in
            if case .head(let id, let headers, _) = event, id == stream { return headers.headers }
            return nil
        }.first
        #expect(head?.last == HTTP2Header("x-mixed-case", "Value"), "\(events)")
    }

    @Test func anInformationalHeadTheFinalHeadAndTrailersOnOneStreamEachArriveAsSubmitted() {
        let (client, server) = HTTP2TestConnection.connected()
        let stream = client.submitRequest(Array(Self.request.prefix(4)), hasBody: false)!
        HTTP2TestConnection.pump(client, server)
        _ = server.takeEvents()
        // Three blocks wait on one stream before any output is taken.
        server.submitInformational(stream: stream, HTTP2HeaderBlock([HTTP2Header(":status", "103"),
                                                                     HTTP2Header("link", "</a.css>; rel=preload")]))
        server.submitResponse(stream: stream, [HTTP2Header(":status", "200"), HTTP2Header("x-final", "yes")], hasBody: true)
        server.appendBody(stream: stream, Array("body".utf8))
        // Trailers whose only value is empty: every field still points into its own block.
        server.endBody(stream: stream, trailers: [HTTP2Header("x-checksum", "")])
        #expect(server.headerBlocksInFlight == 2, "the trailers are submitted when the body ends on the wire")
        HTTP2TestConnection.pump(server, client)
        #expect(server.headerBlocksInFlight == 0)
        let events = client.takeEvents()
        #expect(events.contains(.informational(stream: stream, headers: HTTP2HeaderBlock([
            HTTP2Header(":status", "103"), HTTP2Header("link", "</a.css>; rel=preload")]))))
        #expect(events.contains(.head(stream: stream, headers: HTTP2HeaderBlock([
            HTTP2Header(":status", "200"), HTTP2Header("x-final", "yes")]), endStream: false)))
        #expect(events.contains(.trailers(stream: stream, headers: HTTP2HeaderBlock([HTTP2Header("x-checksum", "")]))))
    }

    @Test func aHeadWhoseStreamIsResetBeforeItLeftIsReleased() {
        let (client, server) = HTTP2TestConnection.connected()
        let stream = client.submitRequest(Array(Self.request.prefix(4)), hasBody: false)!
        HTTP2TestConnection.pump(client, server)
        _ = server.takeEvents()
        server.submitResponse(stream: stream, [HTTP2Header(":status", "200")], hasBody: true)
        server.resetStream(stream, errorCode: 8)
        #expect(server.headerBlocksInFlight == 1)
        HTTP2TestConnection.pump(server, client)
        #expect(server.headerBlocksInFlight == 0, "dropped with its stream, not kept for the session's life")
    }
}
