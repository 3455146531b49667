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
        case missingHost, duplicateHost, invalidHost
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
