import CNghttp2

/// One header field of an HTTP/2 header block, as its bytes (values may hold obs-text bytes
/// that a `String` would not keep as they were).
public struct HTTP2Header: Equatable, Sendable {
    /// The field's name and value. A received block's fields are slices of one buffer that
    /// holds the whole block (two allocations a block, not two a field).
    public var name: ArraySlice<UInt8>
    public var value: ArraySlice<UInt8>

    public init(name: ArraySlice<UInt8>, value: ArraySlice<UInt8>) {
        self.name = name
        self.value = value
    }

    public init(name: [UInt8], value: [UInt8]) {
        self.name = name[...]
        self.value = value[...]
    }

    public init(_ name: String, _ value: String) {
        self.name = ArraySlice(name.utf8)
        self.value = ArraySlice(value.utf8)
    }

    public var nameText: String { String(decoding: name, as: UTF8.self) }
    public var valueText: String { String(decoding: value, as: UTF8.self) }
}

/// What an endpoint's peer did, in the order it did it (drained with `takeEvents`).
public enum HTTP2Event: Equatable, Sendable {
    /// A stream's request head (server endpoint) or final response head (client endpoint),
    /// complete and checked by nghttp2's HTTP messaging rules (RFC 9113 §8.2-8.3: pseudo-header
    /// fields, connection-specific fields, lowercase names). Informational (1xx) heads are
    /// not reported.
    case head(stream: Int32, headers: HTTP2HeaderBlock, endStream: Bool)
    /// The trailer section that ends a stream.
    case trailers(stream: Int32, headers: HTTP2HeaderBlock)
    /// Body bytes of a stream. They count against the endpoint's receive window until the
    /// owner calls `consume`.
    case data(stream: Int32, bytes: [UInt8])
    /// The peer ended its side of the stream after a body (END_STREAM on DATA).
    case endOfBody(stream: Int32)
    /// The stream is gone: `errorCode` is NO_ERROR for a stream that ended both ways, else
    /// why it was reset (by the peer, or by nghttp2 for a protocol violation).
    case closed(stream: Int32, errorCode: UInt32)
    /// `count` body bytes the owner handed to `appendBody` left for the peer (or were
    /// discarded with their stream): the side they came from may send that much more.
    case bodyTaken(stream: Int32, count: Int)
    /// The peer sent GOAWAY.
    case goAway(lastStreamID: Int32, errorCode: UInt32)
    /// A request head (server endpoint) larger than `maximumHeaderListBytes` or with more than
    /// `maximumHeaderCount` fields: its fields were decoded (to keep HPACK in step) and
    /// dropped. RFC 9113 §10.5.1: "A server that receives a larger header section than it is
    /// willing to handle can send an HTTP 431 (Request Header Fields Too Large) status code";
    /// the owner answers the stream.
    case headTooLarge(stream: Int32, endStream: Bool)
    /// An informational (1xx) response head (client endpoint), before the final one
    /// (RFC 9113 §8.1: "zero or more HEADERS frames ... containing the message headers of
    /// informational (1xx) HTTP responses").
    case informational(stream: Int32, headers: HTTP2HeaderBlock)
}

/// Why an endpoint cannot go on: nghttp2's fatal error (the connection must close; nghttp2
/// has queued GOAWAY with the RFC 9113 error where the protocol allows one).
public struct HTTP2Failure: Error, Equatable, Sendable {
    public let code: Int32
    public var description: String { String(cString: nghttp2_strerror(code)) }
}

/// One `nghttp2_session`, server or client side, run from memory: bytes from the peer go
/// in through `receive`, what nghttp2 has for the peer comes out of `takeOutput`, and what
/// the peer did comes out of `takeEvents`. No sockets, no policy.
///
/// Flow control is the owner's: nghttp2 does not open the receive window by itself
/// (`no_auto_window_update`); the owner calls `consume` once body bytes reported in `.data`
/// have been taken by whoever they were for, so a slow reader throttles the writer.
/// Outgoing bodies wait in the endpoint (`appendBody`) until nghttp2 sends them within the
/// peer's window; `.bodyTaken` says when.
///
/// Not re-entrant: nghttp2 calls back into the endpoint while `receive` and `takeOutput`
/// run; those callbacks only record events and read queued bodies.
public final class HTTP2Endpoint {
    public enum Role: Sendable { case server, client }

    public let role: Role
    public let limits: HTTP2Limits
    private var session: OpaquePointer?
    private var events: [HTTP2Event] = []
    /// The events being handed out by `drainEvents` (kept, with its capacity, for the next call).
    private var draining: [HTTP2Event] = []
    private var isDraining = false
    /// The header block being received. Blocks never interleave (RFC 9113 §6.10: a HEADERS
    /// frame without END_HEADERS is followed by its CONTINUATIONs, nothing else), so one is
    /// enough; nil while none is, or once the one being received went over its limits.
    private var incoming = IncomingBlock()
    /// Submitted header blocks nghttp2 points into, by stream, until their frame is sent
    /// (see `submitHeaders`). At most one or two per open stream.
    private var blocksInFlight: [(stream: Int32, block: HTTP2HeaderBlock)] = []
    /// Submitted blocks whose frame has not left yet (for tests).
    var headerBlocksInFlight: Int { blocksInFlight.count }
    /// Client streams that got an informational (1xx) head and still wait for their final one.
    private var informational: Set<Int32> = []
    /// Bodies waiting for the peer's window, per stream.
    private var outgoing = HTTP2StreamTable<OutgoingBody>()
    private var running = false
    /// Where finished streams' header blocks and body buffers wait for the next streams.
    private let recycler = HTTP2Recycler.forThisThread()

    private struct IncomingBlock {
        /// 0: none (HEADERS frames are never on stream 0, RFC 9113 §6.2).
        var stream: Int32 = 0
        /// The fields so far.
        var block = HTTP2HeaderBlock()
        /// Their size as RFC 9113 §6.5.2 counts it.
        var bytes = 0
        /// A request head past the limits: the rest of its fields are decoded and dropped.
        var tooLarge = false
    }

    private struct OutgoingBody {
        var bytes: [UInt8] = []
        var start = 0
        var ended = false
        var trailers = HTTP2HeaderBlock()
        var deferred = false
        /// RST_STREAM to send once the body went out (a server's NO_ERROR after an early response).
        var resetCode: UInt32?
        var remaining: Int { bytes.count - start }
    }

    /// A server endpoint expects the client's connection preface first; a client endpoint
    /// sends its own preface with its first output.
    public init(role: Role, limits: HTTP2Limits = .standard) {
        self.role = role
        self.limits = limits
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, Self.onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, Self.onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, Self.onFrameReceived)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, Self.onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, Self.onStreamClose)
        nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, Self.onFrameNotSent)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, Self.onFrameSent)

        var options: OpaquePointer?
        nghttp2_option_new(&options)
        defer { nghttp2_option_del(options) }
        nghttp2_option_set_no_auto_window_update(options, 1)
        nghttp2_option_set_max_continuations(options, limits.maximumContinuations)
        nghttp2_option_set_stream_reset_rate_limit(options, limits.streamResetBurst, limits.streamResetsPerSecond)
        nghttp2_option_set_max_settings(options, limits.maximumSettingsEntries)
        nghttp2_option_set_max_outbound_ack(options, limits.maximumQueuedControlFrames)
        // Streams closed long ago need no priority bookkeeping (it would grow with them).
        nghttp2_option_set_no_closed_streams(options, 1)

        let userData = Unmanaged.passUnretained(self).toOpaque()
        // nghttp2's allocations come from this thread's free lists (see HTTP2Memory).
        var memory = HTTP2Memory.nghttp2Allocator(HTTP2Memory.threadPool())
        switch role {
        case .server: nghttp2_session_server_new3(&session, callbacks, userData, options, &memory)
        case .client: nghttp2_session_client_new3(&session, callbacks, userData, options, &memory)
        }
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                   value: limits.maximumConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue),
                                   value: UInt32(limits.streamWindowBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_HEADER_TABLE_SIZE.rawValue),
                                   value: limits.headerTableBytes),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                                   value: UInt32(limits.maximumHeaderListBytes)),
            // RFC 9113 §5.3.2: "the prioritization signaling in RFC 7540 was not widely adopted"
            // and is deprecated; RFC 9218 §2.1: SETTINGS_NO_RFC7540_PRIORITIES = 1 says this
            // endpoint does not use it. nghttp2 then keeps no dependency tree and no closed
            // streams for it (a proxy relays streams; it does not schedule by a peer's tree),
            // and ignores PRIORITY frames.
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1),
        ]
        if role == .client {
            // A client takes no pushed streams (RFC 9113 §8.4: SETTINGS_ENABLE_PUSH 0).
            settings[0] = nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0)
        }
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, limits.connectionWindowBytes)
    }

    deinit {
        nghttp2_session_del(session)
    }

    // MARK: Bytes in and out

    /// Feeds bytes from the peer; returns how many were taken (all of them unless nghttp2
    /// failed). Events go to `takeEvents`.
    public func receive(_ bytes: UnsafeRawBufferPointer) -> Result<Int, HTTP2Failure> {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return .success(0) }
        precondition(!running, "HTTP2Endpoint.receive re-entered from a callback")
        running = true
        defer { running = false }
        let result = nghttp2_session_mem_recv(session, base.assumingMemoryBound(to: UInt8.self), bytes.count)
        return result < 0 ? .failure(HTTP2Failure(code: Int32(result))) : .success(result)
    }

    /// What nghttp2 has for the peer, up to about `limit` bytes (one frame may go past it).
    public func takeOutput(limit: Int) -> Result<[UInt8], HTTP2Failure> {
        precondition(!running, "HTTP2Endpoint.takeOutput re-entered from a callback")
        guard wantsToWrite else { return .success([]) }
        running = true
        defer { running = false }
        var output: [UInt8] = []
        // Most steps carry a few frames: room for them at once, not grown frame by frame, in
        // a block small enough for the allocator's per-thread cache (glibc's tcache holds
        // blocks up to 1,032 bytes; a larger one takes its slower paths both ways).
        output.reserveCapacity(min(limit, 960))
        while output.count < limit {
            var pointer: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &pointer)
            if count < 0 { return .failure(HTTP2Failure(code: Int32(count))) }
            guard count > 0, let pointer else { break }
            output.append(contentsOf: UnsafeBufferPointer(start: pointer, count: count))
        }
        return .success(output)
    }

    /// The peer's actions since the last call.
    public func takeEvents() -> [HTTP2Event] {
        defer { events.removeAll(keepingCapacity: events.count <= 64) }
        return events
    }

    /// Hands the peer's actions since the last call to `body`, in order, without copying
    /// them out: events that `body` causes wait for the next call. Not re-entrant.
    public func drainEvents(_ body: (consuming HTTP2Event) -> Void) {
        precondition(!isDraining, "HTTP2Endpoint.drainEvents re-entered")
        isDraining = true
        defer { isDraining = false }
        swap(&events, &draining)
        let count = draining.count
        draining.withUnsafeMutableBufferPointer { buffer in
            for index in 0..<count {
                // Moved out and its slot refilled with an event that holds nothing, then handed
                // over: no reference is counted for the handler's use (it may move the event's
                // block or bytes on), and the removal below releases nothing.
                let event = (buffer.baseAddress! + index).move()
                (buffer.baseAddress! + index).initialize(to: .endOfBody(stream: 0))
                body(event)
            }
        }
        draining.removeAll(keepingCapacity: draining.capacity <= 64)
    }

    public var hasEvents: Bool { !events.isEmpty }

    /// nghttp2 has frames for the peer (or bodies it could send).
    public var wantsToWrite: Bool { nghttp2_session_want_write(session) != 0 }
    /// The connection is still open for reading (false after GOAWAY both ways with no stream left, or a fatal error).
    public var wantsToRead: Bool { nghttp2_session_want_read(session) != 0 }

    // MARK: Flow control

    /// `count` body bytes of `stream` reported in `.data` were taken: the peer may send that
    /// much more (WINDOW_UPDATE once nghttp2 finds it worth one).
    /// With `stream` nil (the stream is gone), only the connection's window opens.
    public func consume(stream: Int32?, count: Int) {
        guard count > 0 else { return }
        if let stream, stream > 0 {
            nghttp2_session_consume(session, stream, count)
        } else {
            nghttp2_session_consume_connection(session, count)
        }
    }

    // MARK: Submitting

    /// Opens a stream with `headers` (pseudo-header fields first); with `hasBody`, its body
    /// comes through `appendBody`/`endBody`. Returns the stream ID, or nil when no stream
    /// can be opened (the peer said GOAWAY, stream IDs ran out).
    /// `streamID`, when given and not below the next free one, is the ID the stream gets
    /// (a proxy keeps its client's stream IDs, so a recording's server answers line up).
    public func submitRequest(_ headers: [HTTP2Header], hasBody: Bool, streamID: Int32? = nil) -> Int32? {
        submitRequest(HTTP2HeaderBlock(headers), hasBody: hasBody, streamID: streamID)
    }

    /// `submitRequest` with a block as received (a proxy's forwarded head: nothing is copied
    /// on the way to nghttp2).
    public func submitRequest(_ headers: consuming HTTP2HeaderBlock, hasBody: Bool, streamID: Int32? = nil) -> Int32? {
        if let streamID, role == .client, streamID & 1 == 1, UInt32(streamID) >= nghttp2_session_get_next_stream_id(session) {
            nghttp2_session_set_next_stream_id(session, streamID)
        }
        let stream = submitHeaders(consume headers, stream: nil) { list, count in
            hasBody ? withDataProvider { nghttp2_submit_request(session, nil, list, count, $0, nil) }
                : nghttp2_submit_request(session, nil, list, count, nil, nil)
        }
        guard stream > 0 else { return nil }
        if hasBody { outgoing[stream] = OutgoingBody() }
        return stream
    }

    /// Answers `stream` with `headers`; with `hasBody`, its body comes through
    /// `appendBody`/`endBody`, else the head ends the stream.
    @discardableResult
    public func submitResponse(stream: Int32, _ headers: [HTTP2Header], hasBody: Bool) -> Bool {
        submitResponse(stream: stream, HTTP2HeaderBlock(headers), hasBody: hasBody)
    }

    @discardableResult
    public func submitResponse(stream: Int32, _ headers: consuming HTTP2HeaderBlock, hasBody: Bool) -> Bool {
        let result = submitHeaders(consume headers, stream: stream) { list, count in
            hasBody ? withDataProvider { nghttp2_submit_response(session, stream, list, count, $0) }
                : nghttp2_submit_response(session, stream, list, count, nil)
        }
        guard result == 0 else { return false }
        if hasBody && !outgoing.contains(stream) { outgoing[stream] = OutgoingBody() }
        return true
    }

    /// Sends an informational (1xx) head on `stream` (server endpoint), before its final
    /// response; false when nghttp2 refuses it (the stream is gone).
    @discardableResult
    public func submitInformational(stream: Int32, _ headers: HTTP2HeaderBlock) -> Bool {
        submitHeaders(headers, stream: stream) { list, count in
            nghttp2_submit_headers(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, nil, list, count, nil)
        } >= 0
    }

    /// Queues body bytes of `stream` (opened with a body); they leave within the peer's window.
    public func appendBody(stream: Int32, _ bytes: [UInt8]) {
        var deferred = false
        guard outgoing.update(stream, { body in
            // Nothing waiting: the chunk becomes the queue (no copy; the emptied queue's memory is kept).
            if body.remaining == 0 {
                recycler.give(&body.bytes)
                body.bytes = bytes
                body.start = 0
            } else {
                body.bytes += bytes
            }
            deferred = body.deferred
            body.deferred = false
        }) else { return }
        if deferred { nghttp2_session_resume_data(session, stream) }
    }

    /// The body of `stream` ends after what was queued, with `trailers` when not empty.
    public func endBody(stream: Int32, trailers: [HTTP2Header]) {
        endBody(stream: stream, trailers: HTTP2HeaderBlock(trailers))
    }

    /// `endBody` with trailers as received (or none).
    public func endBody(stream: Int32, trailers: HTTP2HeaderBlock = HTTP2HeaderBlock()) {
        var deferred = false
        guard outgoing.update(stream, { body in
            body.ended = true
            body.trailers = trailers
            deferred = body.deferred
            body.deferred = false
        }) else { return }
        if deferred { nghttp2_session_resume_data(session, stream) }
    }

    /// Whether `stream` has a body being sent.
    public func sendsBody(stream: Int32) -> Bool { outgoing.contains(stream) }

    /// Resets `stream` with `errorCode` (RST_STREAM).
    public func resetStream(_ stream: Int32, errorCode: UInt32) {
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, errorCode)
    }

    /// Resets `stream` with `errorCode` once its body has gone out whole (at once when it has
    /// none being sent): RST_STREAM would otherwise overtake the DATA still queued.
    public func resetAfterBody(_ stream: Int32, errorCode: UInt32) {
        if !outgoing.update(stream, { $0.resetCode = errorCode }) { resetStream(stream, errorCode: errorCode) }
    }

    /// Sends GOAWAY: no stream above `lastStreamID` (default: the last the peer opened) was
    /// or will be processed.
    public func goAway(errorCode: UInt32, lastStreamID: Int32? = nil) {
        let last = lastStreamID ?? nghttp2_session_get_last_proc_stream_id(session)
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, errorCode, nil, 0)
    }

    /// The highest stream ID the peer opened that this endpoint processed.
    public var lastPeerStreamID: Int32 { nghttp2_session_get_last_proc_stream_id(session) }

    /// Submits `headers` through `submit` (which returns nghttp2's result) with an nghttp2 header
    /// list pointing into the block's buffer, flagged not to be copied: nghttp2 would otherwise
    /// copy and lowercase every field of every head (NGHTTP2_NV_FLAG_NO_COPY_NAME: "application
    /// is responsible to pass header field name in lowercase"; a name with an uppercase letter is
    /// left for nghttp2 to copy and lowercase). The block is kept in `blocksInFlight` until its
    /// HEADERS frame was serialized or dropped (`onFrameSent`, `onFrameNotSent`), or the session
    /// is deleted. `stream` is the frame's stream; nil: the result is a new stream's ID.
    @discardableResult
    private func submitHeaders(_ headers: consuming HTTP2HeaderBlock, stream: Int32?,
                               _ submit: (UnsafePointer<nghttp2_nv>, Int) -> Int32) -> Int32 {
        let result = headers.withUnsafeFields { bytes, spans in
            withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: max(spans.count, 1)) { list in
                // Empty names and values point at the buffer's start: nghttp2 wants non-null
                // pointers, and every field of the frame then points into its block (see
                // `headersFrameDone`). An empty block has no fields, so no pointer is needed.
                guard let base = UnsafeMutablePointer(mutating: bytes) else {
                    return submit(UnsafePointer(list.baseAddress!), 0)
                }
                let known = headers.namesAreLowercase
                for index in 0..<spans.count {
                    let span = spans[index]
                    let name = base + Int(span.nameStart)
                    var flags = UInt8(NGHTTP2_NV_FLAG_NO_COPY_VALUE.rawValue)
                    if known || Self.isLowercase(name, Int(span.nameCount)) {
                        flags |= UInt8(NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue)
                    }
                    list[index] = nghttp2_nv(name: span.nameCount == 0 ? base : name,
                                             value: span.valueCount == 0 ? base : base + span.valueStart,
                                             namelen: Int(span.nameCount), valuelen: Int(span.valueCount), flags: flags)
                }
                return submit(UnsafePointer(list.baseAddress!), spans.count)
            }
        }
        // Moved in: the list holds the block's reference the caller handed over.
        if result >= 0 && !headers.isEmpty { blocksInFlight.append((stream ?? result, consume headers)) }
        return result
    }

    /// Whether the `count` bytes at `name` hold no uppercase ASCII letter.
    private static func isLowercase(_ name: UnsafeMutablePointer<UInt8>, _ count: Int) -> Bool {
        var index = 0
        while index < count {
            if name[index] &- UInt8(ascii: "A") < 26 { return false }
            index &+= 1
        }
        return true
    }

    /// A HEADERS frame of `stream` left or was dropped: the block its fields pointed into is
    /// released. Several may wait on one stream (an informational head and the final one,
    /// a head and trailers): the frame's values, every one of which points into its own
    /// block (`submitHeaders`), tell which.
    private func headersFrameDone(_ frame: UnsafePointer<nghttp2_frame>) {
        let stream = frame.pointee.hd.stream_id
        let fields = UnsafeBufferPointer(start: frame.pointee.headers.nva, count: frame.pointee.headers.nvlen)
        // Frames mostly leave in the order they were submitted: the first block is tried first.
        var index = 0
        while index < blocksInFlight.count {
            // Read in place (a copy of the block would count a reference).
            if blocksInFlight[index].stream == stream, let first = fields.first,
               blocksInFlight[index].block.holds(first.value) {
                recycler.give(blocksInFlight.remove(at: index).block)
                return
            }
            index &+= 1
        }
    }

    private func withDataProvider<Result>(_ body: (UnsafePointer<nghttp2_data_provider>) -> Result) -> Result {
        var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: Self.readBody)
        return body(&provider)
    }

    // MARK: Callbacks (nghttp2 calls them while `receive` or `takeOutput` runs)

    /// Calls `body` with the endpoint behind a callback's user data, counting no reference
    /// (the endpoint is alive: it is running the nghttp2 call that called back).
    @inline(__always)
    private static func withEndpoint<Result>(_ userData: UnsafeMutableRawPointer?,
                                             _ body: (HTTP2Endpoint) -> Result) -> Result {
        Unmanaged<HTTP2Endpoint>.fromOpaque(userData!)._withUnsafeGuaranteedRef(body)
    }

    private static let onBeginHeaders: nghttp2_on_begin_headers_callback = { _, frame, userData in
        withEndpoint(userData) { endpoint -> Int32 in
            endpoint.incoming = IncomingBlock(stream: frame!.pointee.hd.stream_id, block: endpoint.recycler.takeBlock())
            return 0
        }
    }

    private static let onHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
        withEndpoint(userData) { endpoint -> Int32 in
            guard endpoint.incoming.stream == frame!.pointee.hd.stream_id else { return 0 }
            // RFC 9113 §6.5.2: "the uncompressed size of header fields, including the length of the
            // name and value in octets plus an overhead of 32 octets for each header field".
            if endpoint.incoming.tooLarge { return 0 }
            endpoint.incoming.bytes += nameLength + valueLength + 32
            if endpoint.incoming.bytes > endpoint.limits.maximumHeaderListBytes
                || endpoint.incoming.block.count >= endpoint.limits.maximumHeaderCount {
                if endpoint.role == .server && frame!.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
                    // A request head: answered 431 by the owner once the block ends; its fields
                    // are decoded (HPACK must stay in step) and dropped, so memory stays bounded.
                    endpoint.incoming.tooLarge = true
                    endpoint.incoming.block = HTTP2HeaderBlock()
                    return 0
                }
                // Anything else (a response head, trailers): the stream is reset (nghttp2 answers a
                // temporal failure with RST_STREAM INTERNAL_ERROR); what remains of the block is
                // decoded to keep HPACK in step, unseen.
                endpoint.incoming = IncomingBlock()
                return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
            }
            // Appended in place (the block is a stored property: no copy of what came before).
            endpoint.incoming.block.appendReceived(name: name, nameCount: nameLength, value: value, valueCount: valueLength)
            return 0
        }
    }

    private static let onFrameReceived: nghttp2_on_frame_recv_callback = { _, frame, userData in
        withEndpoint(userData) { endpoint -> Int32 in
            let header = frame!.pointee.hd
            let endStream = header.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            switch UInt32(header.type) {
            case NGHTTP2_HEADERS.rawValue:
                guard endpoint.incoming.stream != 0, endpoint.incoming.stream == header.stream_id else { return 0 }
                // Taken out (moved: no reference counted), so the event holds the block's only reference.
                var block = IncomingBlock()
                swap(&block, &endpoint.incoming)
                let stream = header.stream_id, category = frame!.pointee.headers.cat
                // A request's head (server side); a response's first head, or its final one after
                // an informational one (client side); otherwise trailers.
                let isHead = endpoint.role == .server ? category == NGHTTP2_HCAT_REQUEST
                    : category == NGHTTP2_HCAT_RESPONSE || endpoint.informational.contains(stream)
                if block.tooLarge {
                    endpoint.events.append(.headTooLarge(stream: stream, endStream: endStream))
                    return 0
                }
                var headers = HTTP2HeaderBlock()
                swap(&headers, &block.block)
                // nghttp2 passed on only fields its HTTP messaging rules accept: lowercase names.
                headers.namesAreLowercase = true
                // Each event takes the block over (`consume`: no reference counted).
                guard isHead else {
                    endpoint.events.append(.trailers(stream: stream, headers: consume headers))
                    return 0
                }
                if endpoint.role == .client,
                   let status = headers.status, (100..<200).contains(status) {
                    endpoint.informational.insert(stream)
                    endpoint.events.append(.informational(stream: stream, headers: consume headers))
                    return 0
                }
                if !endpoint.informational.isEmpty { endpoint.informational.remove(stream) }
                endpoint.events.append(.head(stream: stream, headers: consume headers, endStream: endStream))
            case NGHTTP2_DATA.rawValue:
                if endStream { endpoint.events.append(.endOfBody(stream: header.stream_id)) }
            case NGHTTP2_GOAWAY.rawValue:
                let goAway = frame!.pointee.goaway
                endpoint.events.append(.goAway(lastStreamID: goAway.last_stream_id, errorCode: goAway.error_code))
            default:
                break
            }
            return 0
        }
    }


    private static let onDataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, stream, data, length, userData in
        withEndpoint(userData) { endpoint in
            let chunk = UnsafeBufferPointer(start: data, count: length)
            guard length <= HTTP2Recycler.maximumBufferCapacity else {
                return endpoint.events.append(.data(stream: stream, bytes: Array(chunk)))
            }
            var bytes = endpoint.recycler.takeBuffer()
            bytes.append(contentsOf: chunk)
            endpoint.events.append(.data(stream: stream, bytes: bytes))
        }
        return 0
    }

    private static let onStreamClose: nghttp2_on_stream_close_callback = { _, stream, errorCode, userData in
        withEndpoint(userData) { endpoint -> Int32 in
            if endpoint.incoming.stream == stream { endpoint.incoming = IncomingBlock() }
            if !endpoint.informational.isEmpty { endpoint.informational.remove(stream) }
            if var body = endpoint.outgoing.removeValue(forKey: stream) {
                if body.remaining > 0 { endpoint.events.append(.bodyTaken(stream: stream, count: body.remaining)) }
                endpoint.recycler.give(&body.bytes)
            }
            endpoint.events.append(.closed(stream: stream, errorCode: errorCode))
            return 0
        }
    }

    /// A request that never left (the peer said GOAWAY first): its stream is as good as refused.
    private static let onFrameNotSent: nghttp2_on_frame_not_send_callback = { _, frame, _, userData in
        withEndpoint(userData) { endpoint -> Int32 in
            let header = frame!.pointee.hd
            guard UInt32(header.type) == NGHTTP2_HEADERS.rawValue else { return 0 }
            endpoint.headersFrameDone(frame!)
            guard endpoint.role == .client,
                  frame!.pointee.headers.cat == NGHTTP2_HCAT_REQUEST else { return 0 }
            if let body = endpoint.outgoing.removeValue(forKey: header.stream_id), body.remaining > 0 {
                endpoint.events.append(.bodyTaken(stream: header.stream_id, count: body.remaining))
            }
            endpoint.events.append(.closed(stream: header.stream_id, errorCode: NGHTTP2_REFUSED_STREAM.rawValue))
            return 0
        }
    }

    /// A frame left: a HEADERS frame's fields are serialized, so their block may go.
    private static let onFrameSent: nghttp2_on_frame_send_callback = { _, frame, userData in
        guard UInt32(frame!.pointee.hd.type) == NGHTTP2_HEADERS.rawValue else { return 0 }
        return withEndpoint(userData) { endpoint -> Int32 in
            endpoint.headersFrameDone(frame!)
            return 0
        }
    }

    private static let readBody: nghttp2_data_source_read_callback = { session, stream, buffer, length, flags, _, userData in
        withEndpoint(userData) { endpoint -> Int in
            // The body is changed in place: a copy would share its bytes and make every change copy them.
            var result = Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
            var finished = false, trailers = HTTP2HeaderBlock(), resetCode: UInt32?
            endpoint.outgoing.update(stream) { body in
                let count = min(length, body.remaining)
                if count > 0 {
                    body.bytes.withUnsafeBufferPointer { bytes in
                        buffer!.update(from: bytes.baseAddress! + body.start, count: count)
                    }
                    body.start += count
                    if body.start == body.bytes.count {
                        body.bytes.removeAll(keepingCapacity: body.bytes.capacity <= 65_536)
                        body.start = 0
                    } else if body.start >= 65_536 {
                        body.bytes.removeFirst(body.start)
                        body.start = 0
                    }
                    endpoint.events.append(.bodyTaken(stream: stream, count: count))
                }
                result = count
                guard body.remaining == 0 else { return }
                if body.ended {
                    finished = true
                    trailers = body.trailers
                    resetCode = body.resetCode
                } else if count == 0 {
                    body.deferred = true
                    result = Int(NGHTTP2_ERR_DEFERRED.rawValue)
                }
            }
            guard finished else { return result }
            if var body = endpoint.outgoing.removeValue(forKey: stream) { endpoint.recycler.give(&body.bytes) }
            flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
            if let resetCode {
                nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, resetCode)
            }
            if !trailers.isEmpty {
                flags!.pointee |= UInt32(NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue)
                endpoint.submitHeaders(trailers, stream: stream) { list, listCount in
                    nghttp2_submit_trailer(session, stream, list, listCount)
                }
            }
            return result
        }
    }
}
