/// Types the HTTP/1.1 parser reports. Every byte range is an offset range into the buffer
/// the caller passed to the `parse` call that returned it (offset 0 is the first
/// unconsumed byte); the parser never copies message bytes.

/// `HTTP/major.minor` from a start line. Only 1.0 and 1.1 are accepted.
public struct HTTP1Version: Sendable, Equatable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public init(major: Int, minor: Int) { self.major = major; self.minor = minor }
    public static let http10 = HTTP1Version(major: 1, minor: 0)
    public static let http11 = HTTP1Version(major: 1, minor: 1)
    public var description: String { "HTTP/\(major).\(minor)" }
}

/// One field line: the name as received (no case folding) and the value without the
/// optional whitespace around it (RFC 9112 §5.1 "OWS occurring before the first
/// non-whitespace octet of the field line value, or after the last ... is excluded").
/// `line` covers the whole field line including its CRLF, so a driver rewriting headers
/// can copy, skip or replace field lines by range.
public struct HTTP1Field: Sendable, Equatable {
    public var name: Range<Int>
    public var value: Range<Int>
    public var line: Range<Int>
    public init(name: Range<Int>, value: Range<Int>, line: Range<Int>) {
        self.name = name; self.value = value; self.line = line
    }
}

/// Which request-target form (RFC 9112 §3.2) a request used.
public enum HTTP1TargetForm: Sendable, Equatable {
    /// `/path?query`, the common case.
    case origin
    /// `http://host/path`, sent to forward proxies.
    case absolute
    /// `host:port`, only with CONNECT.
    case authority
    /// `*`, only with OPTIONS.
    case asterisk
}

/// How the body of a message is delimited (RFC 9112 §6.3).
public enum HTTP1Framing: Sendable, Equatable {
    /// No body: a request without Content-Length or Transfer-Encoding, a response to HEAD,
    /// 1xx, 204, 304, or a head after which the connection switches protocol.
    case none
    /// Exactly this many body bytes follow the head.
    case contentLength(Int)
    /// Chunked transfer coding: chunks, a last chunk, optional trailers.
    case chunked
    /// A response body that ends when the server closes the connection.
    case untilClose
}

/// A parsed request or response head. Ranges are into the buffer of the `parse` call that
/// returned it; `length` is how many bytes at the front the head occupies (leading empty
/// lines before a request line included).
public struct HTTP1Head: Sendable, Equatable {
    public var length: Int = 0
    /// The start line, without CRLF (after any leading empty lines).
    public var startLine: Range<Int> = 0..<0
    /// Request only: the method token.
    public var method: Range<Int> = 0..<0
    /// Request only: the request-target as received.
    public var target: Range<Int> = 0..<0
    public var targetForm: HTTP1TargetForm = .origin
    /// Request only: the path and query of the target, what a policy's `path` matches: the
    /// whole origin-form or asterisk-form target, the part after the authority of an
    /// absolute-form target (when that does not start with "/", the path is "/" followed by
    /// it: RFC 9110 §4.2.3 normalises an empty path to "/"), empty for CONNECT.
    public var path: Range<Int> = 0..<0
    /// Request only: the authority of an absolute-form or authority-form target. RFC 9112
    /// §3.2.2: a server receiving absolute-form "MUST ignore the received Host header field
    /// (if any) and instead use the host information of the request-target", so a policy's
    /// host check uses this when present, else `host`.
    public var authority: Range<Int>? = nil
    public var version: HTTP1Version = .http11
    /// Response only: the status code (0 for requests).
    public var statusCode: Int = 0
    /// Response only: the reason phrase (possibly empty).
    public var reason: Range<Int> = 0..<0
    /// Field lines in order of arrival. The range from the end of the start line's CRLF to
    /// `length - 2` is exactly the concatenation of their `line`s.
    public var fields: [HTTP1Field] = []
    /// Request only: the value of the single Host field line, if present.
    public var host: Range<Int>? = nil
    public var framing: HTTP1Framing = .none
    /// Request: `Expect: 100-continue` was present.
    public var expectsContinue = false
    /// Request: `Upgrade` present and `Connection` lists `upgrade` (RFC 9110 §7.8).
    public var upgradeRequested = false
    /// Request: the method is CONNECT.
    public var isConnect = false
    /// Request: the method is HEAD (its response has no body).
    public var isHead = false
    /// Whether the connection may carry another message after this one (RFC 9112 §9.3).
    public var keepAlive = true
    /// Response: `101 Switching Protocols` after an upgrade request, or 2xx to CONNECT;
    /// every byte after this head (both directions) is an opaque relay.
    public var switchesProtocol = false
    /// Response: 1xx other than 101; the final response to the same request follows.
    public var isInformational = false

    public init() {}

    /// Request: whether a local answer to this request (a deny, a redirect, a 400) ends
    /// the connection whatever the answer says: the request asked for close (`Connection:
    /// close`, HTTP/1.0 without keep-alive), or it expects `100-continue` and has a body
    /// that may never follow a final answer (RFC 9110 §10.1.1), so its end cannot be found.
    /// An answer built for such a request should carry `Connection: close`.
    public var closesAfterLocalAnswer: Bool {
        !keepAlive || (expectsContinue && framing != .none)
    }

    /// Request: the protocols the `Upgrade` field lines offer (RFC 9110 §7.8: Upgrade =
    /// #protocol, protocol = protocol-name ["/" protocol-version]), each lower-cased, in
    /// order, with their version if any ("websocket", "h2c", "http/2.0"); empty when no
    /// upgrade is asked for. `bytes` is the buffer the head's ranges index.
    public func upgradeProtocols(in bytes: UnsafeRawBufferPointer) -> [String] {
        guard upgradeRequested, length <= bytes.count else { return [] }
        var protocols: [String] = []
        for field in fields where HTTP1Grammar.equalsIgnoringCase(bytes, field.name, "upgrade") {
            _ = HTTP1Grammar.forEachListElement(bytes, field.value) { element in
                if !element.isEmpty {
                    protocols.append(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[element]), as: UTF8.self).lowercased())
                }
                return true
            }
        }
        return protocols
    }
}

/// A request head rebuilt with changes, for a driver that must not forward the head as
/// received: a normalised target (`HTTP1TargetNormalization`), an upgrade that is not
/// permitted (`HTTP1RequestDecision.forwardWithoutUpgrade`), header rewriting. Pure: bytes
/// of the received head in, bytes of the head to forward out (start line, kept field lines
/// in their order, added field lines, the empty line). Leading empty lines are dropped.
public struct HTTP1HeadRewrite: Sendable, Equatable {
    /// A field line to append, as `name: value` (both already valid field syntax).
    public struct AddedField: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) { self.name = name; self.value = value }
    }

    /// The request-target to send instead of the received one (nil keeps it).
    public var target: [UInt8]?
    /// Removes what asks for a protocol switch: the `Upgrade` and `HTTP2-Settings` field
    /// lines, and the `upgrade` and `http2-settings` options of `Connection` (RFC 9110 §7.6.1:
    /// connection options name the fields that belong to this hop); a `Connection` line left
    /// with no option goes too. The server then sees an ordinary request.
    public var removesUpgrade: Bool
    /// Field names (compared ignoring case) whose lines are left out.
    public var removedFieldNames: [String]
    /// Field lines appended after the kept ones.
    public var addedFields: [AddedField]

    public init(target: [UInt8]? = nil, removesUpgrade: Bool = false, removedFieldNames: [String] = [],
                addedFields: [AddedField] = []) {
        self.target = target
        self.removesUpgrade = removesUpgrade
        self.removedFieldNames = removedFieldNames
        self.addedFields = addedFields
    }

    /// The rebuilt head for `head`, whose ranges index `bytes` (empty if `bytes` is shorter
    /// than the head: a driver that passed the wrong buffer).
    public func apply(to head: HTTP1Head, in bytes: UnsafeRawBufferPointer) -> [UInt8] {
        guard head.length <= bytes.count, head.startLine.upperBound + 2 <= head.length else { return [] }
        func slice(_ range: Range<Int>) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[range]) }
        let removed = removedFieldNames.map { Array($0.lowercased().utf8) }
        func isRemoved(_ name: Range<Int>) -> Bool {
            removed.contains { candidate in
                candidate.count == name.count && zip(candidate, slice(name)).allSatisfy { expected, byte in
                    expected == ((byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) ? byte | 0x20 : byte)
                }
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(head.length - head.startLine.lowerBound + (target?.count ?? 0))
        if let target, head.target.lowerBound >= head.startLine.lowerBound, head.target.upperBound <= head.startLine.upperBound {
            out.append(contentsOf: slice(head.startLine.lowerBound..<head.target.lowerBound))
            out.append(contentsOf: target)
            out.append(contentsOf: slice(head.target.upperBound..<head.startLine.upperBound))
        } else {
            out.append(contentsOf: slice(head.startLine))
        }
        out.append(contentsOf: [HTTP1Grammar.carriageReturn, HTTP1Grammar.lineFeed])
        for field in head.fields {
            if isRemoved(field.name) { continue }
            if removesUpgrade {
                if HTTP1Grammar.equalsIgnoringCase(bytes, field.name, "upgrade")
                    || HTTP1Grammar.equalsIgnoringCase(bytes, field.name, "http2-settings") { continue }
                if HTTP1Grammar.equalsIgnoringCase(bytes, field.name, "connection") {
                    var options: [Range<Int>] = []
                    _ = HTTP1Grammar.forEachListElement(bytes, field.value) { option in
                        if !option.isEmpty && !HTTP1Grammar.equalsIgnoringCase(bytes, option, "upgrade")
                            && !HTTP1Grammar.equalsIgnoringCase(bytes, option, "http2-settings") {
                            options.append(option)
                        }
                        return true
                    }
                    if options.isEmpty { continue }
                    out.append(contentsOf: slice(field.name))
                    out.append(contentsOf: Array(": ".utf8))
                    for (index, option) in options.enumerated() {
                        if index > 0 { out.append(contentsOf: Array(", ".utf8)) }
                        out.append(contentsOf: slice(option))
                    }
                    out.append(contentsOf: [HTTP1Grammar.carriageReturn, HTTP1Grammar.lineFeed])
                    continue
                }
            }
            out.append(contentsOf: slice(field.line))
        }
        for field in addedFields {
            out.append(contentsOf: Array("\(field.name): \(field.value)\r\n".utf8))
        }
        out.append(contentsOf: [HTTP1Grammar.carriageReturn, HTTP1Grammar.lineFeed])
        return out
    }
}

/// What the response parser must know about the request a response answers
/// (RFC 9112 §6.3: the body of a response to HEAD, and a 2xx to CONNECT, are framed by the
/// request, not by the response).
public struct HTTP1RequestSummary: Sendable, Equatable {
    public var isHead: Bool
    public var isConnect: Bool
    public var upgradeRequested: Bool
    public init(isHead: Bool = false, isConnect: Bool = false, upgradeRequested: Bool = false) {
        self.isHead = isHead; self.isConnect = isConnect; self.upgradeRequested = upgradeRequested
    }
    public init(_ head: HTTP1Head) {
        self.init(isHead: head.isHead, isConnect: head.isConnect, upgradeRequested: head.upgradeRequested)
    }
}

/// One step of parsing: what the bytes at the front of the buffer are. Every case but
/// `needMore` and `error` consumes a number of bytes at the front (stated per case); the
/// caller removes exactly those before the next call. `needMore` consumes nothing: the next
/// call must present the same bytes with more appended.
public enum HTTP1Event: Sendable, Equatable {
    /// Nothing decided yet; call again once at least `minimumBytes` more have arrived.
    case needMore(minimumBytes: Int)
    /// A complete head; consumes `head.length` bytes.
    // Indirect: the event is returned and moved on every parser call, and a head inline
    // would make every move of every event a ~200-byte copy.
    indirect case head(HTTP1Head)
    /// This many bytes at the front are body payload; consumes them.
    case body(Int)
    /// This many bytes at the front are chunk framing (a chunk-size line, or the CRLF
    /// after chunk data); consumes them. A driver treats them like body bytes.
    case chunkFraming(Int)
    /// The message is complete; consumes `consumed` bytes (the last chunk and trailer
    /// section of a chunked body, else 0). `trailers` are ranges into this call's buffer.
    case messageComplete(consumed: Int, trailers: [HTTP1Field])
    /// After a protocol switch: this many bytes at the front are opaque; consumes them.
    case tunnel(Int)
    /// The input is invalid. Nothing after the last completed event may be forwarded.
    case error(HTTP1ParseError)
}

/// Why the input is not HTTP/1.1 this parser accepts, where, and what to answer.
public struct HTTP1ParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        case requestLineTooLong, statusLineTooLong, headerSectionTooLarge, tooManyHeaderFields
        case trailerSectionTooLarge, tooManyTrailerFields, tooManyLeadingEmptyLines
        case bareLineFeed, bareCarriageReturn
        case malformedRequestLine, invalidMethod, invalidTarget, unsupportedVersion
        case malformedStatusLine, invalidStatusCode
        case invalidFieldName, whitespaceBeforeColon, obsoleteLineFolding, invalidFieldValue
        case missingHost, duplicateHost, invalidHost, hostDiffersFromTarget
        case contentLengthWithTransferEncoding, duplicateContentLength, invalidContentLength
        case transferEncodingInHTTP10, chunkedNotFinal, unsupportedTransferCoding, invalidTransferEncoding
        case connectWithBody
        case invalidChunkSize, chunkSizeTooLong, invalidChunkExtension, chunkLineTooLong
        case missingChunkTerminator
        case unsolicitedResponse, unexpectedSwitchingProtocols
        case truncatedMessage, dataAfterClose
    }

    public var kind: Kind
    /// Offset of the offending byte, or of the line or field holding it, in the buffer of
    /// the failing call (for `truncatedMessage`, the number of unconsumed bytes).
    public var offset: Int
    /// The status to answer: for a request, the client's error; for a response, 502.
    public var status: Int

    public init(kind: Kind, offset: Int, status: Int) {
        self.kind = kind; self.offset = offset; self.status = status
    }

    public var description: String { "\(kind.rawValue) at byte \(offset) (\(status))" }
}
