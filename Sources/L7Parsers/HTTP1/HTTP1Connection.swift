/// The bytes `HTTP1Connection` sends back to a client on its own: the deny answer and the
/// answers to requests it cannot parse. Owned by the driver; the defaults are Sluice's.
public struct HTTP1LocalResponses: Sendable, Equatable {
    /// Answer to a denied request when the connection stays open.
    public var forbidden: [UInt8]
    /// Answer to a denied request when the connection then closes (the request asked for
    /// close, or its body will not follow because it expected 100-continue).
    public var forbiddenClosing: [UInt8]

    public init(forbidden: [UInt8], forbiddenClosing: [UInt8]) {
        self.forbidden = forbidden
        self.forbiddenClosing = forbiddenClosing
    }

    public static let standard = HTTP1LocalResponses(
        forbidden: Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\nContent-Type: text/plain\r\n\r\nAccess denied\r\n".utf8),
        forbiddenClosing: Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nAccess denied\r\n".utf8))

    /// The answer to a request the parser rejected with `status` (400, 414, 431, 501, 505),
    /// or that the proxy answers in place of the server (408, 502, 503, 504); it carries
    /// `Connection: close` and the connection closes after it (RFC 9112 §6.3: "the server
    /// MUST respond with a 400 (Bad Request) status code and then close the connection").
    public static func rejection(status: Int) -> [UInt8] {
        let reason: String
        switch status {
        case 408: reason = "Request Timeout"
        case 414: reason = "URI Too Long"
        case 431: reason = "Request Header Fields Too Large"
        case 501: reason = "Not Implemented"
        case 502: reason = "Bad Gateway"
        case 503: reason = "Service Unavailable"
        case 504: reason = "Gateway Timeout"
        case 505: reason = "HTTP Version Not Supported"
        default: reason = "Bad Request"
        }
        let body = reason + "\r\n"
        return Array("HTTP/1.1 \(status) \(reason)\r\nContent-Length: \(body.utf8.count)\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\(body)".utf8)
    }

    /// `307 Temporary Redirect` to `location` (RFC 9110 §15.4.8: the client repeats the
    /// request, method and body unchanged, at the new target), with no body; with
    /// `closes`, it also carries `Connection: close`. The answer to a target with escaped
    /// slashes (`HTTP1TargetNormalization.redirect`). Bytes of `location` that a field value
    /// cannot hold (controls, DEL) are percent-encoded.
    /// `location` as a Location field value: controls, spaces and DEL percent-encoded, so that
    /// no byte of it can end the field or the head.
    public static func locationValue(_ location: String) -> [UInt8] {
        var value: [UInt8] = []
        for byte in location.utf8 {
            if byte > 0x20 && byte != 0x7F {
                value.append(byte)
            } else {
                let digits = Array("0123456789ABCDEF".utf8)
                value += [UInt8(ascii: "%"), digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]]
            }
        }
        return value
    }

    public static func redirect(location: String, closes: Bool = false) -> [UInt8] {
        Array("HTTP/1.1 307 Temporary Redirect\r\nLocation: ".utf8) + locationValue(location)
            + Array("\r\nContent-Length: 0\r\n\(closes ? "Connection: close\r\n" : "")\r\n".utf8)
    }
}

/// The driver's verdict on a request head returned by `.verdictNeeded`.
public enum HTTP1RequestDecision: Sendable, Equatable {
    /// Forward the request (the head as received, or a rebuilt one the driver sends in its
    /// place); its response is relayed. An upgrade or CONNECT may switch the connection to a
    /// relay when the server agrees (101, or 2xx to CONNECT).
    case forward
    /// Forward the request as an ordinary one that does not switch protocol: its `Upgrade`
    /// is not permitted on this port (only upgrades the port allows may switch, and `h2c` is
    /// never relayed raw). The driver forwards a head rebuilt without `Upgrade`,
    /// `HTTP2-Settings` and the `upgrade` option of `Connection`
    /// (`HTTP1HeadRewrite(removesUpgrade: true)`). A `101` from the server to it is a
    /// response error. For CONNECT, which switches on a 2xx and not on `Upgrade`, this is
    /// `.forward`.
    case forwardWithoutUpgrade
    /// Answer the standard `403` (`HTTP1LocalResponses.forbidden`, or `forbiddenClosing`
    /// when the request ends the connection); the request never reaches the server.
    case deny
    /// Answer these bytes instead of forwarding (a `307` for escaped slashes, a `400` for an
    /// invalid target, ...), queued in request order exactly like a denial; the request's
    /// body is dropped. With `closes`, or when the request itself ends the connection
    /// (`HTTP1Head.closesAfterLocalAnswer`), the connection closes after the answer: later
    /// client bytes are dropped, and the bytes should then carry `Connection: close`.
    case answer([UInt8], closes: Bool)
}

/// What the request side asks of the driver: an operation, or a verdict on a head.
public enum HTTP1RequestStep: Sendable, Equatable {
    case operation(ParserOperation)
    /// A complete request head is at the front of the bytes of this call (its ranges index
    /// them). Evaluate it, call `resolve(_:)`, then call `requestStep` again with the same
    /// bytes: it answers `.pass(head.length)` when forwarded, `.drop(head.length)` otherwise.
    indirect case verdictNeeded(HTTP1Head)
}

/// What the response side asks of the driver, and the head it just passed, if any.
public struct HTTP1ResponseStep: Sendable, Equatable {
    public var operation: ParserOperation
    /// Set when `operation` passes a response head (ranges index the bytes of this call),
    /// for flow records.
    public var head: HTTP1Head? {
        get { boxedHead.first }
        set { boxedHead = newValue.map { [$0] } ?? [] }
    }
    /// The head out of line: a step is returned and moved on every call, and most steps
    /// carry no head, so they should not carry its ~200 bytes either.
    private var boxedHead: [HTTP1Head]

    public init(operation: ParserOperation, head: HTTP1Head? = nil) {
        self.operation = operation
        boxedHead = head.map { [$0] } ?? []
    }
}

/// Both directions of one HTTP/1.1 connection, speaking `ParserOperation` to the driver, with
/// the verdict for each request asked in two phases so that this type holds no policy.
///
/// Request side (`requestStep`), per request:
/// - head → `.verdictNeeded(head)`; the driver calls `resolve(_:)` with an
///   `HTTP1RequestDecision` (`resolve(allowed:)` is `.forward` / `.deny`);
/// - forwarded (`.forward`, `.forwardWithoutUpgrade`): `.pass(head.length)`, then `.pass(n)`
///   for the body and chunk framing;
/// - denied or answered locally (`.deny`, `.answer`): `.drop(head.length)`, `.drop(n)` for
///   the body, then `.inject(answer)` when due (to HEAD, without its content: RFC 9110
///   §9.3.2);
/// - a request that cannot be parsed: `.inject(4xx with Connection: close)` when due, then
///   `.error`. Nothing of it was passed.
/// - a fault in the body of a *forwarded* request (a bad chunk size), whose head is already
///   upstream: the request is answered `.inject(4xx with Connection: close)` in its turn,
///   then `.error`, exactly like a request that cannot be parsed; earlier responses are
///   still relayed first and nothing more of it is passed. If the server had already begun
///   its final response to that request, that response is relayed whole instead and the
///   connection then closes with `.error` (an answer after it would be unsolicited).
/// - after a request that closes the connection (`Connection: close`, HTTP/1.0 without
///   keep-alive, a local answer that closes), later client bytes are `.drop`ped
///   (RFC 9112 §9.6).
///
/// Response side (`responseStep`): `.pass` for every byte of responses to forwarded requests
/// (1xx included, at most `limits.maximumInformationalResponses` before a final one), and
/// `.error` for what a server must not send: a response that cannot be framed (garbage,
/// Content-Length with Transfer-Encoding, a bare LF, a head over the limits, an invalid
/// Content-Length), bytes when no response is owed (an unsolicited response, a body after a
/// 204), a `101` to a request that was not allowed to switch, too many 1xx. Every complete
/// event before a fault is passed first: a valid response followed by garbage in the same
/// bytes passes whole, then `.error`. On `.error`, the driver ends the connection; if
/// `answerInsteadOfServer(status: 502)` gives bytes (`canAnswerInsteadOfServer`) it first
/// sends them to the client (the gateway answer HAProxy and the reference give), else it
/// just closes. `isAwaitingResponse` tells the driver when a response timeout (`504`)
/// applies. A final response that closes (`Connection: close`, HTTP/1.0, a body delimited
/// by the close) is the last thing the client gets (RFC 9112 §9.6): answers still queued
/// are dropped, nothing is owed any more, later client bytes are dropped.
///
/// Ordering (pipelining): responses must reach the client in request order (RFC 9112 §9.3.2:
/// a server "MUST send the corresponding responses in the same order that the requests were
/// received"). The connection keeps a queue of in-flight requests. A local
/// answer (403, 307, 4xx) is *due* only when every earlier request has had its final
/// response relayed; until then the request side keeps parsing later requests (an allowed
/// one behind a denial is still forwarded) and the response side stalls, between
/// responses, before any response that belongs after the local answer.
///
/// The driver's loop: call each side with the bytes it holds for that direction (possibly
/// none) and perform the operation; whenever either side performed anything, call the other
/// side again too. Stop when both answer `.needMore` or `.blocked`. In particular, after the
/// response side completes a response, a denial may have become due on the request side even
/// though no client byte arrived. `.inject` bytes go to the client and must be flushed
/// before the connection closes on a following `.error`.
///
/// Nothing here traps on what the network sends or on a driver calling out of turn: a state
/// that should not happen ends this connection with `.error`, never the process.
///
/// After a response that switches protocol (101 to an upgrade, 2xx to CONNECT), both sides
/// answer `.pass` for every byte: the connection is a relay. Header rewriting (headerMatches
/// ADD/DELETE/REPLACE, a normalised target, a removed upgrade) is left to the driver:
/// `HTTP1Field.line` ranges tile the header section, and `HTTP1HeadRewrite` builds the head
/// to emit instead of passing `head.length` bytes.
public struct HTTP1Connection: Sendable {
    /// The limits both parsers apply (kept once, in the parsers).
    public var limits: HTTP1Limits { requestParser.limits }
    public let localResponses: HTTP1LocalResponses

    private enum InFlight: Sendable, Equatable {
        /// Forwarded upstream; its final response has not completed yet. `sent` once the
        /// whole request was forwarded (or nothing more of it ever will be).
        case forwarded(sent: Bool, isHead: Bool)
        /// Answered by the proxy: `answer` (nil: the standard 403); `ready` once its body
        /// was dropped (or it will never come); `closes` ends the connection after it;
        /// `isHead`: the answer goes without its content.
        case answered([UInt8]?, ready: Bool, closes: Bool, isHead: Bool)
        /// Rejected by the parser; the connection ends after the answer (without content
        /// when the request is known to be HEAD: a forwarded one cut short).
        case rejected(HTTP1ParseError, isHead: Bool)
    }

    /// What the rest of a request needs from its head, kept small so that moving the phase
    /// around copies a few bytes rather than a head and its field array.
    private struct MessageTraits: Sendable, Equatable {
        var length: Int
        /// Whether another request may follow this one on the connection.
        var keepAlive: Bool
        /// Forwarded as an upgrade or CONNECT: the connection may switch after it.
        var maySwitchProtocol: Bool
    }

    private enum RequestPhase: Sendable, Equatable {
        case idle
        /// The head waiting for a verdict is kept in `verdictStep`, outside the enum, so
        /// that switching on the phase never copies a head.
        case awaitingVerdict
        case resolved(forwarded: Bool, head: MessageTraits)
        case message(forwarded: Bool, head: MessageTraits)
        /// A forwarded upgrade or CONNECT was sent; later bytes wait for its response.
        case awaitingSwitch(keepAlive: Bool)
        /// The last request closes the connection; later bytes are dropped.
        case closing
        case tunnel
        /// A rejection is queued; nothing more is parsed.
        case rejected
        /// Nothing more is parsed; once every response owed has been relayed, the
        /// connection ends with `reason`.
        case closingAfterResponses(reason: String)
        /// The connection must close; `reason` is for the flow log.
        case finished(reason: String)
    }

    private var requestParser: HTTP1Parser
    private var responseParser: HTTP1Parser
    private var requestPhase: RequestPhase = .idle
    /// `.verdictNeeded(head)` for the head awaiting a verdict, nil otherwise. The step is
    /// kept rather than the head: its case is indirect, so this costs a pointer instead of
    /// a ~200-byte head inline in every connection, and asking again returns the same box.
    private var verdictStep: HTTP1RequestStep?
    private var inFlight: [InFlight] = []
    /// The response being relayed is a final one (its head passed, its end not yet).
    private var responseIsFinal = false
    private var responseSwitches = false
    /// The final response being relayed ends the connection (`Connection: close`, HTTP/1.0
    /// without keep-alive, a body delimited by the close).
    private var responseCloses = false
    /// Interim responses relayed since the last final one.
    private var informationalResponses = 0
    /// Set once the response side failed outside the parser; every later call repeats it.
    private var responseFailure: String?

    public init(limits: HTTP1Limits = .standard, localResponses: HTTP1LocalResponses = .standard) {
        self.localResponses = localResponses
        requestParser = HTTP1Parser(direction: .request, limits: limits)
        responseParser = HTTP1Parser(direction: .response, limits: limits)
    }

    /// Drops the request at the front of the queue; an emptied queue lets its storage go, so
    /// an idle keep-alive connection holds none (one small allocation per request instead).
    private mutating func removeFrontInFlight() {
        inFlight.removeFirst()
        if inFlight.isEmpty { inFlight = [] }
    }

    /// Requests forwarded, denied or rejected whose answer has not been completed yet.
    public var inFlightCount: Int { inFlight.count }

    /// True once the connection is an opaque relay in both directions.
    public var isTunnel: Bool { requestPhase == .tunnel && responseParser.isTunnel }

    /// True when the request at the front of the queue was forwarded and nothing of its
    /// final response has been passed to the client yet (interim 1xx responses may have
    /// been): an answer from the proxy in place of the server's (`502` after a response
    /// `.error`, `504` after a response timeout) is still a well-formed answer to it.
    /// False when nothing is owed, when a local answer is next, or in the middle of a final
    /// response (then the only thing left to do is to close).
    public var canAnswerInsteadOfServer: Bool {
        guard let front = inFlight.first, case .forwarded = front else { return false }
        return !responseIsFinal && !responseParser.isTunnel
    }

    /// The answer the driver sends in place of the server's response (`status` 502 after a
    /// response `.error`, 504 after a response timeout), `HTTP1LocalResponses.rejection`
    /// with `Connection: close`, without its content when the request was HEAD; nil when
    /// `canAnswerInsteadOfServer` is false (then the driver just closes).
    public func answerInsteadOfServer(status: Int) -> [UInt8]? {
        guard canAnswerInsteadOfServer, case .forwarded(_, let isHead)? = inFlight.first else { return nil }
        let answer = HTTP1LocalResponses.rejection(status: status)
        return isHead ? Self.withoutContent(answer) : answer
    }

    /// RFC 9110 §9.3.2: "The HEAD method is identical to GET except that the server MUST NOT
    /// send content in the response." A local answer to HEAD keeps its header section (its
    /// Content-Length says what a GET would get, §8.6) and loses what follows it; a client
    /// would read those bytes as the start of the next response.
    static func withoutContent(_ answer: [UInt8]) -> [UInt8] {
        var index = 0
        while index + 3 < answer.count {
            if answer[index] == HTTP1Grammar.carriageReturn && answer[index + 1] == HTTP1Grammar.lineFeed
                && answer[index + 2] == HTTP1Grammar.carriageReturn && answer[index + 3] == HTTP1Grammar.lineFeed {
                return Array(answer[..<(index + 4)])
            }
            index += 1
        }
        return answer
    }

    /// True while a request that was forwarded whole (or cut short: nothing more of it will
    /// come) is waiting for its final response to complete. The driver runs its response
    /// timeout (the reference's 15 s route timeout: it spans from the end of the request to
    /// the end of the response) while this is true and no response bytes arrive, then
    /// answers `504` if `canAnswerInsteadOfServer`, else closes. False while the client is
    /// still sending the only request in flight, and once the connection is a relay.
    public var isAwaitingResponse: Bool {
        inFlight.contains { entry in
            if case .forwarded(let sent, _) = entry { return sent }
            return false
        }
    }

    // MARK: - Request side

    /// The verdict on the head last returned by `.verdictNeeded`. Without a head awaiting a
    /// verdict (a driver out of step), the connection ends with `.error` on the next step.
    public mutating func resolve(_ decision: HTTP1RequestDecision) {
        guard case .awaitingVerdict = requestPhase else {
            if case .finished = requestPhase { return }
            requestPhase = .finished(reason: "HTTP/1.1 verdict given with no request head awaiting one")
            return
        }
        guard case .verdictNeeded(let head)? = verdictStep else {
            requestPhase = .finished(reason: "HTTP/1.1 verdict given with no request head awaiting one")
            return
        }
        // Release the head and its field list: an idle keep-alive connection keeps nothing of it.
        verdictStep = nil
        let traits: MessageTraits
        let forwarded: Bool
        switch decision {
        case .forward, .forwardWithoutUpgrade:
            var summary = HTTP1RequestSummary(head)
            if case .forwardWithoutUpgrade = decision {
                // The server will not see the upgrade; a 101 from it is a response error.
                summary.upgradeRequested = false
            }
            inFlight.append(.forwarded(sent: false, isHead: head.isHead))
            responseParser.expectResponse(to: summary)
            forwarded = true
            traits = MessageTraits(length: head.length, keepAlive: head.keepAlive,
                                   maySwitchProtocol: summary.upgradeRequested || summary.isConnect)
        case .deny, .answer:
            var answer: [UInt8]? = nil
            var closes = head.closesAfterLocalAnswer
            if case .answer(let bytes, let answerCloses) = decision {
                answer = bytes
                closes = closes || answerCloses
            }
            // RFC 9110 §10.1.1: a client that sent 100-continue may never send the body
            // after a final answer; we answer at once and close instead of guessing whether
            // it follows.
            let bodyMayNotFollow = head.expectsContinue && head.framing != .none
            inFlight.append(.answered(answer, ready: bodyMayNotFollow, closes: closes, isHead: head.isHead))
            forwarded = false
            traits = MessageTraits(length: head.length, keepAlive: !closes, maySwitchProtocol: false)
        }
        requestPhase = .resolved(forwarded: forwarded, head: traits)
    }

    /// `.forward` when `allowed`, else `.deny` (the verdict before `HTTP1RequestDecision`).
    public mutating func resolve(allowed: Bool) {
        resolve(allowed ? .forward : .deny)
    }

    /// Convenience for tests and tools.
    public mutating func requestStep(_ bytes: [UInt8]) -> HTTP1RequestStep {
        bytes.withUnsafeBytes { requestStep($0) }
    }

    /// One step of the client-to-server direction for the bytes at the front of `bytes`.
    public mutating func requestStep(_ bytes: UnsafeRawBufferPointer) -> HTTP1RequestStep {
        while true {
            // A resolved head is consumed before any local answer, so a driver never holds
            // the bytes of a request that was already answered.
            if case .resolved = requestPhase {} else if let injection = dueLocalAnswer() {
                return .operation(injection)
            }
            switch requestPhase {
            case .finished(let reason):
                return .operation(.error(reason: reason))
            case .closingAfterResponses(let reason):
                if inFlight.isEmpty {
                    requestPhase = .finished(reason: reason)
                    continue
                }
                return .operation(.blocked)
            case .rejected, .awaitingSwitch:
                return .operation(.blocked)
            case .awaitingVerdict:
                guard let verdictStep else {
                    requestPhase = .finished(reason: "HTTP/1.1 request head awaiting a verdict went missing")
                    continue
                }
                return verdictStep
            case .resolved(let forwarded, let head):
                requestPhase = .message(forwarded: forwarded, head: head)
                return .operation(forwarded ? .pass(head.length) : .drop(head.length))
            case .tunnel:
                return .operation(bytes.isEmpty ? .needMore(minimumBytes: 1) : .pass(bytes.count))
            case .closing:
                return .operation(bytes.isEmpty ? .needMore(minimumBytes: 1) : .drop(bytes.count))
            case .idle:
                if inFlight.count >= limits.maximumPipelinedRequests {
                    return .operation(.blocked)
                }
                switch requestParser.parse(bytes) {
                case .head(let head):
                    let step = HTTP1RequestStep.verdictNeeded(head)
                    verdictStep = step
                    requestPhase = .awaitingVerdict
                    return step
                case .needMore(let minimum):
                    return .operation(.needMore(minimumBytes: minimum))
                case .error(let error):
                    reject(error)
                    continue
                case .body, .chunkFraming, .messageComplete, .tunnel:
                    requestPhase = .finished(reason: "HTTP/1.1 request parser out of step between messages")
                    continue
                }
            case .message(let forwarded, let head):
                switch requestParser.parse(bytes) {
                case .body(let count), .chunkFraming(let count):
                    return .operation(forwarded ? .pass(count) : .drop(count))
                case .messageComplete(let consumed, _):
                    finishRequest(forwarded: forwarded, head: head)
                    if consumed > 0 { return .operation(forwarded ? .pass(consumed) : .drop(consumed)) }
                    continue
                case .needMore(let minimum):
                    return .operation(.needMore(minimumBytes: minimum))
                case .error(let error):
                    if forwarded {
                        cutShortForwardedRequest(error)
                    } else {
                        // The 4xx replaces the queued answer (to HEAD, without content too).
                        var isHead = false
                        if case .answered(_, _, _, let answeredHead)? = inFlight.last {
                            inFlight.removeLast()
                            isHead = answeredHead
                        }
                        inFlight.append(.rejected(error, isHead: isHead))
                        requestPhase = .rejected
                    }
                    continue
                case .head, .tunnel:
                    requestPhase = .finished(reason: "HTTP/1.1 request parser out of step inside a message")
                    continue
                }
            }
        }
    }

    private mutating func reject(_ error: HTTP1ParseError) {
        inFlight.append(.rejected(error, isHead: false))
        requestPhase = .rejected
    }

    /// The body of the forwarded request being sent is faulty (RFC 9112 §7.1: a chunk size
    /// that is not 1*HEXDIG, ...). Its head is upstream, so the server may be waiting for the
    /// rest; we stop sending and answer the client ourselves, in its turn (the earlier
    /// responses are relayed first), with the 4xx the fault calls for, then close. This
    /// request is the last in the queue: nothing is parsed after an unfinished one.
    private mutating func cutShortForwardedRequest(_ error: HTTP1ParseError) {
        let reason = "HTTP/1.1 request body: \(error)"
        guard let last = inFlight.indices.last, case .forwarded(_, let isHead) = inFlight[last] else {
            // The server already answered it whole (an early response): an answer from us
            // now would be one response too many. Close.
            requestPhase = .finished(reason: reason)
            return
        }
        if last == 0 && (responseIsFinal || !responseParser.isAtMessageBoundary) {
            // Its final response has begun (or may have: a head is partly read): relay it
            // whole, then close. Nothing more of the request will be sent.
            inFlight[last] = .forwarded(sent: true, isHead: isHead)
            requestPhase = .closingAfterResponses(reason: reason)
            return
        }
        inFlight[last] = .rejected(error, isHead: isHead)
        requestPhase = .rejected
    }

    private mutating func finishRequest(forwarded: Bool, head: MessageTraits) {
        if forwarded {
            if let last = inFlight.indices.last, case .forwarded(_, let isHead) = inFlight[last] {
                inFlight[last] = .forwarded(sent: true, isHead: isHead)
            }
            if head.maySwitchProtocol {
                requestPhase = .awaitingSwitch(keepAlive: head.keepAlive)
                return
            }
        } else if let last = inFlight.indices.last, case .answered(let answer, _, let closes, let isHead) = inFlight[last] {
            inFlight[last] = .answered(answer, ready: true, closes: closes, isHead: isHead)
        }
        requestPhase = head.keepAlive ? .idle : .closing
    }

    /// The local answer at the front of the queue, if its turn has come.
    private mutating func dueLocalAnswer() -> ParserOperation? {
        guard let front = inFlight.first else { return nil }
        switch front {
        case .forwarded:
            return nil
        case .answered(let answer, let ready, let closes, let isHead):
            guard ready else { return nil }
            removeFrontInFlight()
            let bytes = answer ?? (closes ? localResponses.forbiddenClosing : localResponses.forbidden)
            if closes {
                requestPhase = .finished(reason: answer == nil ? "closed after a denied request" : "closed after a local answer")
            }
            return .inject(isHead ? Self.withoutContent(bytes) : bytes)
        case .rejected(let error, let isHead):
            removeFrontInFlight()
            requestPhase = .finished(reason: "HTTP/1.1 request rejected: \(error)")
            let answer = HTTP1LocalResponses.rejection(status: error.status)
            return .inject(isHead ? Self.withoutContent(answer) : answer)
        }
    }

    // MARK: - Response side

    /// Convenience for tests and tools.
    public mutating func responseStep(_ bytes: [UInt8]) -> HTTP1ResponseStep {
        bytes.withUnsafeBytes { responseStep($0) }
    }

    /// One step of the server-to-client direction for the bytes at the front of `bytes`.
    public mutating func responseStep(_ bytes: UnsafeRawBufferPointer) -> HTTP1ResponseStep {
        if let responseFailure { return HTTP1ResponseStep(operation: .error(reason: responseFailure)) }
        while true {
            if responseParser.isAtMessageBoundary && !responseParser.isTunnel {
                // Between responses: the next one must answer the request at the front. A
                // local answer due first is the request side's to inject; wait for it.
                if let front = inFlight.first, case .forwarded = front {} else if !bytes.isEmpty || !inFlight.isEmpty {
                    if inFlight.isEmpty {
                        // RFC 9112 §9.3.2 pairs responses with requests; bytes when none is
                        // owed (a second response, a body after a 204) are not HTTP we relay.
                        return failResponse("HTTP/1.1 response without a request")
                    }
                    return HTTP1ResponseStep(operation: .blocked)
                }
            }
            switch responseParser.parse(bytes) {
            case .head(let head):
                if head.isInformational {
                    informationalResponses += 1
                    if informationalResponses > limits.maximumInformationalResponses {
                        return failResponse("HTTP/1.1 response: more than \(limits.maximumInformationalResponses) interim (1xx) responses")
                    }
                }
                responseIsFinal = !head.isInformational
                responseSwitches = head.switchesProtocol
                responseCloses = responseIsFinal && !head.keepAlive && !head.switchesProtocol
                // The upgrade or CONNECT request is the last in flight (nothing is parsed
                // after it), so its response is the one that leaves it alone in the queue.
                if responseIsFinal && inFlight.count == 1 && !head.switchesProtocol,
                   case .awaitingSwitch(let keepAlive) = requestPhase {
                    // The upgrade or CONNECT was refused: the client may send HTTP again.
                    requestPhase = keepAlive ? .idle : .closing
                }
                return HTTP1ResponseStep(operation: .pass(head.length), head: head)
            case .body(let count), .chunkFraming(let count), .tunnel(let count):
                return HTTP1ResponseStep(operation: .pass(count))
            case .messageComplete(let consumed, _):
                if responseIsFinal {
                    if !inFlight.isEmpty { removeFrontInFlight() }
                    informationalResponses = 0
                    if responseCloses { serverEndedTheConnection() }
                    if responseSwitches {
                        switch requestPhase {
                        case .awaitingSwitch, .message(forwarded: true, _):
                            requestParser.enterTunnel()
                            requestPhase = .tunnel
                        default:
                            // The request side is closing (its request was cut short): the
                            // client's later bytes are not relayed.
                            break
                        }
                    }
                }
                responseIsFinal = false
                responseSwitches = false
                responseCloses = false
                if consumed > 0 { return HTTP1ResponseStep(operation: .pass(consumed)) }
                continue
            case .needMore(let minimum):
                return HTTP1ResponseStep(operation: .needMore(minimumBytes: minimum))
            case .error(let error):
                return HTTP1ResponseStep(operation: .error(reason: "HTTP/1.1 response: \(error)"))
            }
        }
    }

    /// RFC 9112 §9.6: a server that sends "close" "MUST initiate closure of the connection
    /// after it sends the response containing the close option" and does not process later
    /// requests; the client "MUST NOT send further requests" and retries unanswered ones on a
    /// new connection. So the relayed closing response is the last thing the client gets:
    /// answers still queued (a 403 for a later request) are dropped rather than sent after
    /// it, nothing is owed any more, and later client bytes are dropped until the close.
    private mutating func serverEndedTheConnection() {
        inFlight.removeAll()
        if case .finished = requestPhase { return }
        requestPhase = .closing
    }

    private mutating func failResponse(_ reason: String) -> HTTP1ResponseStep {
        responseFailure = reason
        return HTTP1ResponseStep(operation: .error(reason: reason))
    }

    /// The server closed its side with `unconsumedBytes` still held. Returns `.error` when a
    /// response was cut short, nil when the close ended things cleanly (including a body
    /// delimited by the close).
    public mutating func responseEndOfInput(unconsumedBytes: Int) -> ParserOperation? {
        if let responseFailure { return .error(reason: responseFailure) }
        switch responseParser.endOfInput(unconsumedBytes: unconsumedBytes) {
        case .cleanClose:
            return nil
        case .messageComplete:
            if responseIsFinal && !inFlight.isEmpty { removeFrontInFlight() }
            if responseIsFinal && responseCloses { serverEndedTheConnection() }
            responseIsFinal = false
            responseCloses = false
            return nil
        case .truncated(let error):
            return .error(reason: "HTTP/1.1 response truncated: \(error)")
        }
    }
}
