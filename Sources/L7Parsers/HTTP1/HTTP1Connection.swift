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

    /// The answer to a request the parser rejected with `status` (400, 414, 431, 501, 505);
    /// the connection closes after it (RFC 9112 §6.3: "the server MUST respond with a 400
    /// (Bad Request) status code and then close the connection").
    public static func rejection(status: Int) -> [UInt8] {
        let reason: String
        switch status {
        case 414: reason = "URI Too Long"
        case 431: reason = "Request Header Fields Too Large"
        case 501: reason = "Not Implemented"
        case 505: reason = "HTTP Version Not Supported"
        default: reason = "Bad Request"
        }
        let body = reason + "\r\n"
        return Array("HTTP/1.1 \(status) \(reason)\r\nContent-Length: \(body.utf8.count)\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\(body)".utf8)
    }
}

/// What the request side asks of the driver: an operation, or a verdict on a head.
public enum HTTP1RequestStep: Sendable, Equatable {
    case operation(ParserOperation)
    /// A complete request head is at the front of the bytes of this call (its ranges index
    /// them). Evaluate it, call `resolve(allowed:)`, then call `requestStep` again with the
    /// same bytes: it answers `.pass(head.length)` or `.drop(head.length)`.
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
/// - head → `.verdictNeeded(head)`; the driver calls `resolve(allowed:)`;
/// - allowed: `.pass(head.length)`, then `.pass(n)` for the body and chunk framing;
/// - denied: `.drop(head.length)`, `.drop(n)` for the body, then `.inject(403)` when due;
/// - a request that cannot be parsed: `.inject(4xx with Connection: close)` when due, then
///   `.error`. Nothing of it was passed. (A fault in the body of an *allowed* request, whose
///   head is already upstream, is `.error` alone: the connection is cut.)
/// - after a request that closes the connection (`Connection: close`, HTTP/1.0 without
///   keep-alive), later client bytes are `.drop`ped (RFC 9112 §9.6).
///
/// Response side (`responseStep`): `.pass` for every byte of responses to forwarded requests
/// (1xx included), `.error` for a response that cannot be framed or that no request asked
/// for. A driver that has passed nothing of the current response yet may answer 502 itself.
///
/// Ordering (pipelining): responses must reach the client in request order (RFC 9112 §9.3.2:
/// a server "MUST send the corresponding responses in the same order that the requests were
/// received"). The connection keeps a queue of in-flight requests. A local
/// answer (403, 4xx) is *due* only when every earlier request has had its final response
/// relayed; until then the request side keeps parsing later requests (an allowed one behind
/// a denial is still forwarded) and the response side stalls, between responses, before any
/// response that belongs after the local answer.
///
/// The driver's loop: call each side with the bytes it holds for that direction (possibly
/// none) and perform the operation; whenever either side performed anything, call the other
/// side again too. Stop when both answer `.needMore`. In particular, after the response side
/// completes a response, a denial may have become due on the request side even though no
/// client byte arrived. `.inject` bytes go to the client and must be flushed before the
/// connection closes on a following `.error`.
///
/// After a response that switches protocol (101 to an upgrade, 2xx to CONNECT), both sides
/// answer `.pass` for every byte: the connection is a relay. Header rewriting (headerMatches
/// ADD/DELETE/REPLACE) is left to the driver: `HTTP1Field.line` ranges tile the header
/// section, so a driver can emit a rebuilt head instead of passing `head.length` bytes.
public struct HTTP1Connection: Sendable {
    public let limits: HTTP1Limits
    public let localResponses: HTTP1LocalResponses

    private enum InFlight: Sendable, Equatable {
        /// Forwarded upstream; its final response has not completed yet.
        case forwarded(HTTP1RequestSummary)
        /// Denied; `ready` once its body was dropped (or it will never come).
        case denied(ready: Bool, closes: Bool)
        /// Rejected by the parser; the connection ends after the answer.
        case rejected(HTTP1ParseError)
    }

    /// What the rest of a request needs from its head, kept small so that moving the phase
    /// around copies a few bytes rather than a head and its field array.
    private struct MessageTraits: Sendable, Equatable {
        var length: Int
        var keepAlive: Bool
        var switchesProtocolIfAccepted: Bool
    }

    private enum RequestPhase: Sendable, Equatable {
        case idle
        /// The head waiting for a verdict is kept in `headAwaitingVerdict`, outside the
        /// enum, so that switching on the phase never copies a head.
        case awaitingVerdict
        case resolved(allowed: Bool, head: MessageTraits)
        case message(allowed: Bool, head: MessageTraits)
        /// An allowed upgrade or CONNECT request was sent; later bytes wait for its response.
        case awaitingSwitch
        /// The last request closes the connection; later bytes are dropped.
        case closing
        case tunnel
        /// A rejection is queued; nothing more is parsed.
        case rejected
        /// The connection must close; `reason` is for the flow log.
        case finished(reason: String)
    }

    private var requestParser: HTTP1Parser
    private var responseParser: HTTP1Parser
    private var requestPhase: RequestPhase = .idle
    private var headAwaitingVerdict = HTTP1Head()
    private var inFlight: [InFlight] = []
    private var responseIsFinal = false
    private var responseSwitches = false

    public init(limits: HTTP1Limits = .standard, localResponses: HTTP1LocalResponses = .standard) {
        self.limits = limits
        self.localResponses = localResponses
        requestParser = HTTP1Parser(direction: .request, limits: limits)
        responseParser = HTTP1Parser(direction: .response, limits: limits)
    }

    /// Requests forwarded, denied or rejected whose answer has not been completed yet.
    public var inFlightCount: Int { inFlight.count }

    /// True once the connection is an opaque relay in both directions.
    public var isTunnel: Bool { requestPhase == .tunnel && responseParser.isTunnel }

    // MARK: - Request side

    /// The verdict on the head last returned by `.verdictNeeded`.
    public mutating func resolve(allowed: Bool) {
        guard case .awaitingVerdict = requestPhase else {
            preconditionFailure("resolve(allowed:) without a pending verdict")
        }
        let head = headAwaitingVerdict
        // Release the head's field list: an idle keep-alive connection keeps nothing of it.
        headAwaitingVerdict = HTTP1Head()
        if allowed {
            let summary = HTTP1RequestSummary(head)
            inFlight.append(.forwarded(summary))
            responseParser.expectResponse(to: summary)
        } else {
            // RFC 9110 §10.1.1: a client that sent 100-continue may never send the body
            // after a final answer; we close instead of guessing whether it follows.
            let bodyMayNotFollow = head.expectsContinue && head.framing != .none
            inFlight.append(.denied(ready: bodyMayNotFollow, closes: bodyMayNotFollow || !head.keepAlive))
        }
        requestPhase = .resolved(allowed: allowed, head: MessageTraits(
            length: head.length, keepAlive: head.keepAlive,
            switchesProtocolIfAccepted: head.upgradeRequested || head.isConnect))
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
            case .rejected, .awaitingSwitch:
                return .operation(.blocked)
            case .awaitingVerdict:
                return .verdictNeeded(headAwaitingVerdict)
            case .resolved(let allowed, let head):
                requestPhase = .message(allowed: allowed, head: head)
                return .operation(allowed ? .pass(head.length) : .drop(head.length))
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
                    headAwaitingVerdict = head
                    requestPhase = .awaitingVerdict
                    return .verdictNeeded(head)
                case .needMore(let minimum):
                    return .operation(.needMore(minimumBytes: minimum))
                case .error(let error):
                    reject(error)
                    continue
                case let other:
                    preconditionFailure("request parser between messages answered \(other)")
                }
            case .message(let allowed, let head):
                switch requestParser.parse(bytes) {
                case .body(let count), .chunkFraming(let count):
                    return .operation(allowed ? .pass(count) : .drop(count))
                case .messageComplete(let consumed, _):
                    finishRequest(allowed: allowed, head: head)
                    if consumed > 0 { return .operation(allowed ? .pass(consumed) : .drop(consumed)) }
                    continue
                case .needMore(let minimum):
                    return .operation(.needMore(minimumBytes: minimum))
                case .error(let error):
                    if allowed {
                        // Part of this request is already upstream: the only safe answer is
                        // to cut the connection; the client gets no 400 from us.
                        requestPhase = .finished(reason: "HTTP/1.1 request body: \(error)")
                    } else {
                        inFlight.removeLast()
                        reject(error)
                    }
                    continue
                case let other:
                    preconditionFailure("request parser inside a message answered \(other)")
                }
            }
        }
    }

    private mutating func reject(_ error: HTTP1ParseError) {
        inFlight.append(.rejected(error))
        requestPhase = .rejected
    }

    private mutating func finishRequest(allowed: Bool, head: MessageTraits) {
        if allowed {
            if head.switchesProtocolIfAccepted {
                requestPhase = .awaitingSwitch
                return
            }
        } else if let index = inFlight.lastIndex(where: { if case .denied = $0 { true } else { false } }),
                  case .denied(_, let closes) = inFlight[index] {
            inFlight[index] = .denied(ready: true, closes: closes)
        }
        requestPhase = head.keepAlive ? .idle : .closing
    }

    /// The local answer at the front of the queue, if its turn has come.
    private mutating func dueLocalAnswer() -> ParserOperation? {
        guard let front = inFlight.first else { return nil }
        switch front {
        case .forwarded:
            return nil
        case .denied(let ready, let closes):
            guard ready else { return nil }
            inFlight.removeFirst()
            if closes {
                requestPhase = .finished(reason: "closed after a denied request")
                return .inject(localResponses.forbiddenClosing)
            }
            return .inject(localResponses.forbidden)
        case .rejected(let error):
            inFlight.removeFirst()
            requestPhase = .finished(reason: "HTTP/1.1 request rejected: \(error)")
            return .inject(HTTP1LocalResponses.rejection(status: error.status))
        }
    }

    // MARK: - Response side

    /// Convenience for tests and tools.
    public mutating func responseStep(_ bytes: [UInt8]) -> HTTP1ResponseStep {
        bytes.withUnsafeBytes { responseStep($0) }
    }

    /// One step of the server-to-client direction for the bytes at the front of `bytes`.
    public mutating func responseStep(_ bytes: UnsafeRawBufferPointer) -> HTTP1ResponseStep {
        while true {
            if responseParser.isAtMessageBoundary && !responseParser.isTunnel {
                // Between responses: the next one must answer the request at the front. A
                // local answer due first is the request side's to inject; wait for it.
                if let front = inFlight.first, case .forwarded = front {} else if !bytes.isEmpty || !inFlight.isEmpty {
                    if inFlight.isEmpty {
                        return HTTP1ResponseStep(operation: .error(reason: "HTTP/1.1 response without a request"))
                    }
                    return HTTP1ResponseStep(operation: .blocked)
                }
            }
            switch responseParser.parse(bytes) {
            case .head(let head):
                responseIsFinal = !head.isInformational
                responseSwitches = head.switchesProtocol
                // The upgrade or CONNECT request is the last in flight (nothing is parsed
                // after it), so its response is the one that leaves it alone in the queue.
                if responseIsFinal && requestPhase == .awaitingSwitch && inFlight.count == 1 && !head.switchesProtocol {
                    // The upgrade or CONNECT was refused: the client may send HTTP again.
                    requestPhase = .idle
                }
                return HTTP1ResponseStep(operation: .pass(head.length), head: head)
            case .body(let count), .chunkFraming(let count), .tunnel(let count):
                return HTTP1ResponseStep(operation: .pass(count))
            case .messageComplete(let consumed, _):
                if responseIsFinal {
                    inFlight.removeFirst()
                    if responseSwitches {
                        requestParser.enterTunnel()
                        requestPhase = .tunnel
                    }
                }
                responseIsFinal = false
                responseSwitches = false
                if consumed > 0 { return HTTP1ResponseStep(operation: .pass(consumed)) }
                continue
            case .needMore(let minimum):
                return HTTP1ResponseStep(operation: .needMore(minimumBytes: minimum))
            case .error(let error):
                return HTTP1ResponseStep(operation: .error(reason: "HTTP/1.1 response: \(error)"))
            }
        }
    }

    /// The server closed its side with `unconsumedBytes` still held. Returns `.error` when a
    /// response was cut short, nil when the close ended things cleanly (including a body
    /// delimited by the close).
    public mutating func responseEndOfInput(unconsumedBytes: Int) -> ParserOperation? {
        switch responseParser.endOfInput(unconsumedBytes: unconsumedBytes) {
        case .cleanClose:
            return nil
        case .messageComplete:
            if responseIsFinal && !inFlight.isEmpty { inFlight.removeFirst() }
            responseIsFinal = false
            return nil
        case .truncated(let error):
            return .error(reason: "HTTP/1.1 response truncated: \(error)")
        }
    }
}
