import CNghttp2
import L7Parsers
import PolicyEngine

/// HTTP/2 (prior knowledge, h2c) under policy. The proxy terminates HTTP/2 on both sides: a
/// server endpoint faces the client, a client endpoint faces the original destination, and
/// every client stream whose request head the HTTP rules allow is opened upstream with the
/// same head (header actions applied), body and trailers; responses, trailers, resets and
/// GOAWAY come back the same way. A denied stream is answered by the proxy and never reaches
/// the server: `403` with `Access denied\r\n`, or for gRPC a trailers-only response with
/// `grpc-status: 7` (PERMISSION_DENIED), as the reference does. Other streams go on.
///
/// Driving: every input byte is fed to its endpoint at once and dropped; what the endpoints
/// have for either side comes out as `forward`/`reply` on later steps (the driver calls
/// again while something moves, and holds a step's output until its destination took it).
///
/// Flow control end to end: neither endpoint opens its receive window by itself. Body bytes
/// from one side wait in the other endpoint until it sent them within its peer's window; only
/// then are they consumed on the side they came from. A slow reader therefore throttles the
/// writer on the other side, and each connection holds at most its two receive windows of
/// body bytes (`HTTP2Limits`).
///
/// Audit (`SessionContext.audit`): denied streams are reported `DROPPED` and forwarded anyway.
public final class HTTP2PolicySession: L7Session {
    private let downstream: HTTP2Endpoint
    private let upstream: HTTP2Endpoint
    private var judge: HTTPRequestJudge
    private let settings: HTTPSettings
    private let reporter: L7FlowReporter?
    private let audit: Bool
    private let clock: () -> UInt64
    private let wallClock: () -> UInt64
    private var recordParts = L7RecordParts()
    /// Open client streams, by the client's stream ID.
    private var streams = HTTP2StreamTable<Stream>()
    /// The client's stream ID for each upstream stream ID.
    private var clientStream = HTTP2StreamTable<Int32>()
    /// Streams whose `awaitingResponse` is set (the driver asks after every step).
    private var awaitingCount = 0
    /// Why the connection must end (an endpoint failed, a side went away).
    private var ending: String?
    /// The proxy is draining and the client was sent GOAWAY (`beginDrain`).
    private var draining = false
    /// Requests judged on this connection (for tests and counters).
    public private(set) var allowedCount: UInt32 = 0
    public private(set) var deniedCount: UInt32 = 0

    private struct Stream {
        /// The upstream stream carrying it; nil when the proxy answered it.
        var upstreamID: Int32?
        var method: String
        var url: String
        var start: UInt64
        var direction: Direction
        var allowed: Bool
        /// Forwarded, its response head not back yet (counted in `awaitingCount`).
        var awaitingResponse: Bool
        /// The client ended its request (END_STREAM).
        var requestEnded: Bool
    }

    /// Bytes of one endpoint's output handed to the driver per step.
    static let outputBytesPerStep = 65_536
    static let deniedBody = Array("Access denied\r\n".utf8)
    static let badRequestBody = Array("Bad Request\r\n".utf8)
    /// The head of a denied stream's 403, made once.
    static let deniedHead = HTTP2HeaderBlock([
        HTTP2Header(":status", "403"), HTTP2Header("content-type", "text/plain"),
        HTTP2Header("content-length", String(deniedBody.count)),
    ])
    /// The reference's gRPC denial: a trailers-only response ("Trailers-Only ... HTTP-Status
    /// Content-Type Trailers"), status 7 (PERMISSION_DENIED), made once.
    static let grpcDenial = HTTP2HeaderBlock([
        HTTP2Header(":status", "200"), HTTP2Header("content-type", "application/grpc"),
        HTTP2Header("grpc-status", "7"), HTTP2Header("grpc-message", "Access denied"),
    ])

    public init(limits: HTTP2Limits = .standard, settings: HTTPSettings = HTTPSettings(), policy: WorkerPolicy?,
                identities: ConnectionIdentities, reporter: L7FlowReporter?, audit: Bool = false,
                clock: @escaping () -> UInt64 = MonotonicClock.now,
                wallClock: @escaping () -> UInt64 = WallClock.nanosecondsNow) {
        var limits = limits
        if audit {
            // A recording's peers kept to each other's windows and stream limits, not to
            // the proxy's: take whatever they sent (nothing waits for a reader here).
            limits.streamWindowBytes = Int32.max
            limits.connectionWindowBytes = Int32.max
            limits.maximumConcurrentStreams = UInt32(Int32.max)
        }
        downstream = HTTP2Endpoint(role: .server, limits: limits)
        upstream = HTTP2Endpoint(role: .client, limits: limits)
        judge = HTTPRequestJudge(policy: policy, identities: identities)
        self.settings = settings
        self.reporter = reporter
        self.audit = audit
        self.clock = clock
        self.wallClock = wallClock
    }

    // MARK: L7Session

    /// Input is fed to nghttp2 as it comes: the driver never holds more than a block.
    public var maximumMessageBytes: Int { 65_536 }

    public func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        // Output first: what an endpoint has for a side leaves before more input adds to it.
        let (ahead, back) = direction == .request ? (upstream, downstream) : (downstream, upstream)
        if let output = output(of: ahead) { return .forward(output) }
        if let output = output(of: back) { return .reply(output) }
        if ending == nil {
            if !downstream.wantsToRead && !downstream.wantsToWrite {
                ending = draining ? "drained (GOAWAY sent, every stream done)" : "the client's HTTP/2 connection ended"
            } else if !upstream.wantsToRead && !upstream.wantsToWrite && streams.isEmpty {
                downstream.goAway(errorCode: NGHTTP2_NO_ERROR.rawValue)
                ending = "the server's HTTP/2 connection ended"
                if let output = output(of: downstream) { return direction == .request ? .reply(output) : .forward(output) }
            }
        }
        if let ending { return .close(reason: ending) }
        guard bytes.count > 0 else { return .needMore(minimumBytes: 1) }
        let endpoint = direction == .request ? downstream : upstream
        switch endpoint.receive(bytes) {
        case .success(let count):
            process()
            return .drop(count)
        case .failure(let failure):
            // nghttp2 queued GOAWAY with the RFC 9113 error where one applies: it goes out
            // on the next steps, then the connection closes.
            ending = (direction == .request ? "client" : "server") + " HTTP/2 error: \(failure.description)"
            process()
            if direction == .response { failStreamsUpstreamLost() }
            return .drop(bytes.count)
        }
    }

    public func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? {
        if direction == .request {
            ending = ending ?? "client closed"
            return .close(reason: ending!)
        }
        // The server went away: streams it still owed are reset, the client told GOAWAY.
        ending = ending ?? "server closed"
        failStreamsUpstreamLost()
        return output(of: downstream).map(SessionOperation.forward) ?? .close(reason: ending!)
    }

    public func incompleteMessageTimedOut() -> [UInt8]? { nil }

    public func upstreamFailed(reason: String) -> [UInt8]? {
        reporter?.report(draft(type: .response, verdict: .error, direction: .ingress, method: nil, url: nil,
                                code: 503, latency: nil, rules: [], allowed: false))
        downstream.goAway(errorCode: NGHTTP2_REFUSED_STREAM.rawValue)
        return output(of: downstream)
    }

    public var isAwaitingResponse: Bool { awaitingCount > 0 }

    public func responseTimedOut() -> [UInt8]? {
        // RFC 9110 §15.6.5: 504 for each stream the server left without a response head.
        for (id, stream) in streams.entries where stream.awaitingResponse {
            if let upstreamID = stream.upstreamID { upstream.resetStream(upstreamID, errorCode: NGHTTP2_CANCEL.rawValue) }
            reporter?.report(draft(type: .response, verdict: .error, direction: stream.direction, method: stream.method,
                                    url: stream.url, code: 504, latency: clock() &- stream.start, rules: [],
                                    allowed: true))
            answer(stream: id, status: 504, body: Array("upstream timed out\r\n".utf8))
        }
        downstream.goAway(errorCode: NGHTTP2_NO_ERROR.rawValue)
        return output(of: downstream)
    }

    public var isIdle: Bool { streams.isEmpty }

    /// RFC 9113 §6.8: "A server that is attempting to gracefully shut down a connection SHOULD
    /// send an initial GOAWAY frame", whose last stream ID is the highest one processed here: the
    /// client opens no more streams on this connection and knows that any it sent after that
    /// one was not processed (nghttp2 ignores them), so it may retry them on a new connection
    /// (to the successor). Streams in flight finish; once none is left the connection ends
    /// (`step`: nghttp2 neither reads nor writes any more).
    public func beginDrain() -> Bool {
        if !draining && ending == nil {
            draining = true
            downstream.goAway(errorCode: NGHTTP2_NO_ERROR.rawValue)
        }
        return true
    }

    // MARK: Moving events between the endpoints

    private func output(of endpoint: HTTP2Endpoint) -> [UInt8]? {
        switch endpoint.takeOutput(limit: Self.outputBytesPerStep) {
        case .success(let bytes):
            // Sending bodies may have freed window on the other side.
            if endpoint.hasEvents { process() }
            return bytes.isEmpty ? nil : bytes
        case .failure(let failure):
            ending = ending ?? "HTTP/2 output failed: \(failure.description)"
            return nil
        }
    }

    /// Acts on what both peers did until neither endpoint has anything new.
    private func process() {
        while downstream.hasEvents || upstream.hasEvents {
            downstream.drainEvents { clientDid($0) }
            upstream.drainEvents { serverDid($0) }
        }
    }

    /// Takes the event over (`consuming`): a head's block and a chunk's bytes move on to the
    /// other endpoint without a reference counted.
    private func clientDid(_ event: consuming HTTP2Event) {
        switch consume event {
        case .head(let id, let headers, let endStream):
            request(id, headers: headers, endStream: endStream)
        case .data(let id, let bytes):
            if let upstreamID = streams.read(id, \.upstreamID) ?? nil, upstream.sendsBody(stream: upstreamID) {
                upstream.appendBody(stream: upstreamID, bytes)
            } else {
                downstream.consume(stream: id, count: bytes.count)
            }
        case .endOfBody(let id):
            var upstreamID: Int32?
            streams.update(id) { $0.requestEnded = true; upstreamID = $0.upstreamID }
            if let upstreamID { upstream.endBody(stream: upstreamID) }
        case .trailers(let id, let headers):
            var upstreamID: Int32?
            streams.update(id) { $0.requestEnded = true; upstreamID = $0.upstreamID }
            if let upstreamID { upstream.endBody(stream: upstreamID, trailers: headers) }
        case .closed(let id, let errorCode):
            guard let stream = streams.removeValue(forKey: id) else { return }
            if stream.awaitingResponse { awaitingCount -= 1 }
            if let upstreamID = stream.upstreamID, clientStream.removeValue(forKey: upstreamID) != nil {
                // The client reset the stream (or nghttp2 did, for a violation): so is the upstream one.
                upstream.resetStream(upstreamID, errorCode: errorCode == NGHTTP2_NO_ERROR.rawValue
                                     ? NGHTTP2_CANCEL.rawValue : errorCode)
            }
        case .bodyTaken(let id, let count):
            // Response body bytes left for the client: the server may send as much more.
            guard let upstreamID = streams.read(id, \.upstreamID) ?? nil else { return }
            upstream.consume(stream: upstreamID, count: count)
        case .goAway(_, let errorCode):
            upstream.goAway(errorCode: errorCode, lastStreamID: 0)
        case .headTooLarge(let id, let endStream):
            // Never judged (its fields were dropped unread) and never sent upstream.
            deniedCount += 1
            streams[id] = Stream(upstreamID: nil, method: "", url: "", start: clock(), direction: .ingress,
                                 allowed: false, awaitingResponse: false, requestEnded: endStream)
            answer(stream: id, status: 431, body: Self.tooLargeBody)
            // As HTTP/1.1 reports its local answers to heads it could not read: the response only.
            reporter?.report(draft(type: .response, verdict: .forwarded, direction: .ingress, method: nil, url: nil,
                                    code: 431, latency: nil, rules: [], allowed: false))
        case .informational:
            break  // only a client endpoint reports these
        }
    }

    private static let tooLargeBody = Array("Request header fields too large\r\n".utf8)

    private func serverDid(_ event: consuming HTTP2Event) {
        switch consume event {
        case .head(let upstreamID, let headers, let endStream):
            guard let id = clientStream[upstreamID] else { return }
            var wasAwaiting = false
            // In place: a copy of the stream would count references to its method and URL.
            guard streams.update(id, { wasAwaiting = $0.awaitingResponse; $0.awaitingResponse = false }) else { return }
            if wasAwaiting { awaitingCount -= 1 }
            if let reporter {
                let status = headers.status
                streams.read(id) { stream in
                    reporter.report(draft(type: .response, verdict: stream.allowed ? .forwarded : .dropped,
                                          direction: stream.direction, method: stream.method, url: stream.url,
                                          code: status, latency: clock() &- stream.start, rules: [],
                                          allowed: stream.allowed))
                }
            }
            if !downstream.submitResponse(stream: id, headers, hasBody: !endStream) {
                upstream.resetStream(upstreamID, errorCode: NGHTTP2_INTERNAL_ERROR.rawValue)
            }
        case .data(let upstreamID, let bytes):
            if let id = clientStream[upstreamID], downstream.sendsBody(stream: id) {
                downstream.appendBody(stream: id, bytes)
            } else {
                upstream.consume(stream: upstreamID, count: bytes.count)
            }
        case .endOfBody(let upstreamID):
            if let id = clientStream[upstreamID] { downstream.endBody(stream: id) }
        case .trailers(let upstreamID, let headers):
            if let id = clientStream[upstreamID] { downstream.endBody(stream: id, trailers: headers) }
        case .closed(let upstreamID, let errorCode):
            guard let id = clientStream.removeValue(forKey: upstreamID) else { return }
            if errorCode != NGHTTP2_NO_ERROR.rawValue {
                // The server reset the stream (or it was refused, or broke the protocol).
                downstream.resetStream(id, errorCode: errorCode)
            } else if streams.read(id, \.requestEnded) == false {
                // RFC 9113 §8.1: the server answered before the request ended and asks the client
                // to stop sending "by sending a RST_STREAM with an error code of NO_ERROR after
                // sending a complete response": relayed after the response, in that order.
                downstream.resetAfterBody(id, errorCode: NGHTTP2_NO_ERROR.rawValue)
            }
        case .bodyTaken(let upstreamID, let count):
            // Request body bytes left for the server: the client may send as much more.
            downstream.consume(stream: clientStream[upstreamID], count: count)
        case .goAway(let lastStreamID, let errorCode):
            // Streams above `lastStreamID` are closed REFUSED_STREAM by nghttp2 (and reset to
            // the client); the client is told that no stream past those in flight will be taken.
            let inFlight = clientStream.entries.filter { $0.stream <= lastStreamID }.map(\.value).max() ?? 0
            downstream.goAway(errorCode: errorCode, lastStreamID: max(inFlight, 0))
            if ending == nil && streams.isEmpty { ending = "server sent GOAWAY" }
        case .informational(let upstreamID, let headers):
            // 100 Continue, 103 Early Hints: relayed ahead of the final response.
            if let id = clientStream[upstreamID] { downstream.submitInformational(stream: id, headers) }
        case .headTooLarge:
            break  // only a server endpoint reports these
        }
    }

    /// Phase "evaluate" for one stream: judged by the HTTP rules, then opened upstream or
    /// answered here.
    private func request(_ id: Int32, headers: HTTP2HeaderBlock, endStream: Bool) {
        var method = "", path = "", authority: String?, host: String?, grpc = false
        var fields: [(name: String, value: String)] = []
        // Header fields become text only when a rule can read them.
        let readsHeaders = judge.needsHeaders()
        // The path normalised from the field's own bytes (no copy of its text).
        let normalizes = settings.normalizePaths
        var pathNormalization: HTTP1TargetNormalization?
        var hasPath = false, isPathValid = false, hostsDiffer = false
        headers.forEachField { name, value in
            if name.first == UInt8(ascii: ":") {
                if HTTP2HeaderBlock.equal(name, ":method") {
                    method = Self.methodText(value)
                } else if HTTP2HeaderBlock.equal(name, ":path") {
                    path = String(decoding: value, as: UTF8.self)
                    hasPath = true
                    isPathValid = HTTP2HeaderBlock.isValidPath(value, isOptions: true)
                    if normalizes {
                        pathNormalization = HTTP1TargetNormalization.normalize(target: UnsafeRawBufferPointer(value))
                    }
                } else if HTTP2HeaderBlock.equal(name, ":authority") {
                    authority = authorityText(value)
                } // :scheme, :protocol
                return true
            }
            if HTTP2HeaderBlock.equal(name, "host") {
                // Pseudo-header fields come first, so :authority is known here; nghttp2 resets a
                // stream with a second Host field itself.
                let text = String(decoding: value, as: UTF8.self)
                if let authority, authority.lowercased() != text.lowercased() { hostsDiffer = true }
                host = text
            }
            if HTTP2HeaderBlock.equal(name, "content-type")
                && HTTP2HeaderBlock.starts(value, with: "application/grpc") { grpc = true }
            if readsHeaders {
                fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            }
            return true
        }
        var forwarded = headers
        // Answered 400 before any judging:
        // - a :path outside the target grammar, as HTTP/1.1's parser refuses such a target: the
        //   text judged and the bytes forwarded could differ otherwise (nghttp2 has reset a
        //   stream that lacks the :path its method needs);
        // - a Host field naming another host than :authority (RFC 9113 §8.3.1: "A server SHOULD
        //   treat a request as malformed if it contains a Host header field that identifies an
        //   entity that differs from the entity in the :authority pseudo-header field"): Sluice
        //   judges :authority, and a server that read Host would serve a host never judged.
        if hostsDiffer || (hasPath && !(isPathValid && (path != "*" || method == "OPTIONS"))) {
            let stream = Stream(upstreamID: nil, method: method, url: path, start: clock(), direction: .ingress,
                                allowed: false, awaitingResponse: false, requestEnded: endStream)
            streams[id] = stream
            deniedCount += 1
            reportRequest(method: method, url: path, judgement: .init(allowed: false))
            answer(stream: id, status: 400, body: Self.badRequestBody)
            return reportAnswer(stream, code: 400)
        }
        var url = path
        if settings.normalizePaths {
            // The reference normalises before matching; the server receives what was judged.
            switch pathNormalization ?? HTTP1TargetNormalization.normalize(target: Array(path.utf8)) {
            case .unchanged:
                break
            case .normalized(let target, _):
                url = target
                var changed = forwarded.headers
                if let index = changed.firstIndex(where: { $0.name.elementsEqual(Self.pathName) }) {
                    changed[index].value = ArraySlice(target.utf8)
                }
                forwarded = HTTP2HeaderBlock(changed)
            case .redirect(let location):
                // As over HTTP/1.1: an escaped slash is sent to the unescaped path (307).
                return answerUnjudged(id, method: method, url: path, endStream: endStream, forwarded: forwarded) {
                    self.downstream.submitResponse(stream: id, [
                        HTTP2Header(":status", "307"),
                        HTTP2Header(name: Array("location".utf8), value: HTTP1LocalResponses.locationValue(location)),
                        HTTP2Header("content-length", "0"),
                    ], hasBody: false)
                    return 307
                }
            case .invalid:
                return answerUnjudged(id, method: method, url: path, endStream: endStream, forwarded: forwarded) {
                    self.answer(stream: id, status: 400, body: Self.badRequestBody)
                    return 400
                }
            }
        }
        // RFC 9113 §8.3.1: ":authority ... clients that generate HTTP/2 requests directly MUST
        // use the :authority pseudo-header field to convey authority information"; a Host field
        // is the fallback.
        let facts = HTTPRequestFacts(method: method, path: url, host: authority ?? host, headers: fields)
        let judgement = judge.judge(facts, references: reporter != nil)
        if judgement.allowed { allowedCount += 1 } else { deniedCount += 1 }
        // The start is read only for flow records (their latency).
        var stream = Stream(upstreamID: nil, method: method, url: url, start: reporter == nil ? 0 : clock(),
                            direction: judgement.direction, allowed: judgement.allowed, awaitingResponse: false,
                            requestEnded: endStream)
        reportRequest(method: method, url: url, judgement: judgement)
        guard judgement.allowed || audit else {
            streams[id] = stream
            if grpc {
                // The reference's gRPC denial: a trailers-only response (gRPC over HTTP/2:
                // "Trailers-Only ... HTTP-Status Content-Type Trailers"), status 7.
                downstream.submitResponse(stream: id, Self.grpcDenial, hasBody: false)
                reportAnswer(stream, code: 200)
            } else {
                answer(stream: id, status: 403, body: Self.deniedBody)
                reportAnswer(stream, code: 403)
            }
            return
        }
        if judgement.allowed && !judgement.actions.isEmpty { apply(judgement.actions, to: &forwarded) }
        guard let upstreamID = upstream.submitRequest(consume forwarded, hasBody: !endStream, streamID: id) else {
            // The server said GOAWAY: the client may retry elsewhere (RFC 9113 §8.7).
            downstream.resetStream(id, errorCode: NGHTTP2_REFUSED_STREAM.rawValue)
            return
        }
        stream.upstreamID = upstreamID
        stream.awaitingResponse = true
        awaitingCount += 1
        streams[id] = stream
        clientStream[upstreamID] = id
    }

    private static let pathName = Array(":path".utf8)

    /// A method's text, without making a string for a common one (literals are constant).
    private static func methodText(_ value: UnsafeBufferPointer<UInt8>) -> String {
        switch value.count {
        case 3 where HTTP2HeaderBlock.equal(value, "GET"): return "GET"
        case 4 where HTTP2HeaderBlock.equal(value, "POST"): return "POST"
        case 3 where HTTP2HeaderBlock.equal(value, "PUT"): return "PUT"
        case 6 where HTTP2HeaderBlock.equal(value, "DELETE"): return "DELETE"
        case 5 where HTTP2HeaderBlock.equal(value, "PATCH"): return "PATCH"
        case 4 where HTTP2HeaderBlock.equal(value, "HEAD"): return "HEAD"
        case 7 where HTTP2HeaderBlock.equal(value, "OPTIONS"): return "OPTIONS"
        default: return String(decoding: value, as: UTF8.self)
        }
    }

    /// The connection's last `:authority`, bytes and text: a client sends the same one on
    /// nearly every stream, and its text is made once.
    private var lastAuthority: (bytes: [UInt8], text: String) = ([], "")

    private func authorityText(_ value: UnsafeBufferPointer<UInt8>) -> String {
        if HTTP2HeaderBlock.equal(value, lastAuthority.bytes) { return lastAuthority.text }
        let text = String(decoding: value, as: UTF8.self)
        // Kept only while short: a bound on what an idle connection holds.
        if value.count <= 256 { lastAuthority = (Array(value), text) }
        return text
    }

    /// Answers a stream from the proxy with `status` and a plain-text body.
    private func answer(stream id: Int32, status: Int, body: [UInt8]) {
        let head = status == 403 && body == Self.deniedBody ? Self.deniedHead : HTTP2HeaderBlock([
            HTTP2Header(":status", String(status)), HTTP2Header("content-type", "text/plain"),
            HTTP2Header("content-length", String(body.count)),
        ])
        guard downstream.submitResponse(stream: id, head, hasBody: true) else { return }
        downstream.appendBody(stream: id, body)
        downstream.endBody(stream: id)
    }

    /// Header actions of the allowing rules (names are lowercase on HTTP/2, RFC 9113 §8.2.1).
    private func apply(_ actions: [HeaderAction], to block: inout HTTP2HeaderBlock) {
        var headers = block.headers
        defer { block = HTTP2HeaderBlock(headers) }
        for action in actions {
            switch action {
            case .add(let name, let value):
                headers.append(HTTP2Header(name.lowercased(), value.value))
            case .replace(let name, let value):
                let lowered = ArraySlice(name.lowercased().utf8)
                headers.removeAll { $0.name == lowered }
                headers.append(HTTP2Header(name: lowered, value: ArraySlice(value.value.utf8)))
            case .remove(let name):
                let lowered = ArraySlice(name.lowercased().utf8)
                headers.removeAll { $0.name == lowered }
            }
        }
    }

    /// The server is gone: every stream it owed is reset to the client, and the client is
    /// told GOAWAY.
    private func failStreamsUpstreamLost() {
        for (id, stream) in streams.entries where stream.upstreamID != nil {
            downstream.resetStream(id, errorCode: NGHTTP2_INTERNAL_ERROR.rawValue)
        }
        clientStream.removeAll()
        downstream.goAway(errorCode: NGHTTP2_NO_ERROR.rawValue)
    }

    // MARK: Flow records

    /// A request answered here before any rule is asked (a target to redirect, or one that
    /// cannot be normalised): reported denied, answered by `answer` (which returns its status);
    /// in audit mode forwarded as recorded instead, unjudged.
    private func answerUnjudged(_ id: Int32, method: String, url: String, endStream: Bool, forwarded: HTTP2HeaderBlock,
                                answer: () -> Int) {
        deniedCount += 1
        reportRequest(method: method, url: url, judgement: .init(allowed: false))
        var stream = Stream(upstreamID: nil, method: method, url: url, start: clock(), direction: .ingress,
                            allowed: false, awaitingResponse: false, requestEnded: endStream)
        guard audit, let upstreamID = upstream.submitRequest(forwarded, hasBody: !endStream, streamID: id) else {
            streams[id] = stream
            reportAnswer(stream, code: answer())
            return
        }
        stream.upstreamID = upstreamID
        stream.awaitingResponse = true
        awaitingCount += 1
        streams[id] = stream
        clientStream[upstreamID] = id
    }

    private func reportRequest(method: String, url: String, judgement: HTTPRequestJudge.Judgement) {
        reporter?.report(draft(type: .request, verdict: judgement.allowed ? .forwarded : .dropped,
                                direction: judgement.direction, method: method, url: url, code: nil, latency: nil,
                                rules: judgement.rules, allowed: judgement.allowed))
    }

    private func reportAnswer(_ stream: Stream, code: Int) {
        reporter?.report(draft(type: .response, verdict: .forwarded, direction: stream.direction, method: stream.method,
                                url: stream.url, code: code, latency: clock() &- stream.start, rules: [], allowed: false))
    }

    private func draft(type: L7FlowType, verdict: FlowVerdict, direction: Direction, method: String?, url: String?,
                       code: Int?, latency: UInt64?, rules: [RuleReference], allowed: Bool) -> L7RecordDraft {
        FlowRecords.httpDraft(verdict: verdict, connection: judge.identities, parts: &recordParts, time: wallClock(),
                              direction: direction, type: type, method: method, url: url, code: code, latency: latency,
                              rules: rules, allowed: allowed, version: "HTTP/2")
    }
}
