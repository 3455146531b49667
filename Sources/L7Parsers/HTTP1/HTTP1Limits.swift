/// Caller-owned limits for one HTTP/1.1 connection's parser. Every buffer the parser asks
/// the driver to hold is bounded by one of these; going past one is a typed error
/// (`HTTP1ParseError`) that carries the status to answer.
///
/// Why these statuses:
/// - Request line: RFC 9112 §3 "A server that receives a request-target longer than any URI
///   it wishes to parse MUST respond with a 414 (URI Too Long) status code". The target is
///   what makes a request line long in practice, so the whole line's limit answers 414.
/// - Header bytes and count: RFC 6585 §5, 431 (Request Header Fields Too Large) "indicates
///   that the server is unwilling to process the request because its header fields are too
///   large"; the trailer section is a field section too and answers the same.
/// - Chunk-size digits and chunk-line length: a malformed or hostile chunk header, 400
///   (RFC 9112 §7.1 "recipients MUST anticipate potentially large hexadecimal numerals and
///   prevent parsing errors due to integer conversion overflows or precision loss").
public struct HTTP1Limits: Sendable, Equatable {
    /// The limits as 32-bit numbers: no limit a buffer could reach needs more (values past
    /// `Int32.max` read back as it, which no message that fits in memory can tell apart).
    private struct Stored: Sendable, Equatable {
        var maximumRequestLineBytes: Int32 = 0
        var maximumStatusLineBytes: Int32 = 0
        var maximumHeaderBytes: Int32 = 0
        var maximumHeaderCount: Int32 = 0
        var maximumChunkSizeDigits: Int32 = 0
        var maximumChunkLineBytes: Int32 = 0
        var maximumTrailerBytes: Int32 = 0
        var maximumLeadingEmptyLines: Int32 = 0
        var maximumPipelinedRequests: Int32 = 0
        var maximumInformationalResponses: Int32 = 0
    }

    /// The numbers, shared copy-on-write: both parsers of every connection hold the same
    /// limits, so each holds a reference rather than a copy.
    private final class Storage: @unchecked Sendable {
        var values: Stored
        init(_ values: Stored) { self.values = values }
    }

    private var storage = Storage(Stored())

    private var stored: Stored {
        get { storage.values }
        set {
            if !isKnownUniquelyReferenced(&storage) { storage = Storage(newValue) } else { storage.values = newValue }
        }
    }

    public static func == (lhs: HTTP1Limits, rhs: HTTP1Limits) -> Bool { lhs.storage.values == rhs.storage.values }

    /// Bytes of the request line (method, target, version), without its CRLF. Default 8 KiB.
    public var maximumRequestLineBytes: Int {
        get { Int(storage.values.maximumRequestLineBytes) }
        set { stored.maximumRequestLineBytes = Int32(clamping: newValue) }
    }
    /// Bytes of a response's status line, without its CRLF. Default 8 KiB.
    public var maximumStatusLineBytes: Int {
        get { Int(storage.values.maximumStatusLineBytes) }
        set { stored.maximumStatusLineBytes = Int32(clamping: newValue) }
    }
    /// Bytes of the header section after the start line, CRLFs included. Default 64 KiB.
    public var maximumHeaderBytes: Int {
        get { Int(storage.values.maximumHeaderBytes) }
        set { stored.maximumHeaderBytes = Int32(clamping: newValue) }
    }
    /// Field lines in the header section (and, separately, in a trailer section). Default 100.
    public var maximumHeaderCount: Int {
        get { Int(storage.values.maximumHeaderCount) }
        set { stored.maximumHeaderCount = Int32(clamping: newValue) }
    }
    /// Hexadecimal digits in a chunk size (leading zeros count). Default 16 (64 bits).
    public var maximumChunkSizeDigits: Int {
        get { Int(storage.values.maximumChunkSizeDigits) }
        set { stored.maximumChunkSizeDigits = Int32(clamping: newValue) }
    }
    /// Bytes of one chunk-size line including extensions, without its CRLF. Default 4 KiB.
    public var maximumChunkLineBytes: Int {
        get { Int(storage.values.maximumChunkLineBytes) }
        set { stored.maximumChunkLineBytes = Int32(clamping: newValue) }
    }
    /// Bytes of the trailer section, CRLFs included. Default 16 KiB.
    public var maximumTrailerBytes: Int {
        get { Int(storage.values.maximumTrailerBytes) }
        set { stored.maximumTrailerBytes = Int32(clamping: newValue) }
    }
    /// Empty lines (CRLF) accepted before a request line (RFC 9112 §2.2). Default 8.
    public var maximumLeadingEmptyLines: Int {
        get { Int(storage.values.maximumLeadingEmptyLines) }
        set { stored.maximumLeadingEmptyLines = Int32(clamping: newValue) }
    }
    /// Requests forwarded but not yet answered that `HTTP1Connection` lets a client pipeline;
    /// beyond this the request side waits (back-pressure, not an error). Default 32.
    public var maximumPipelinedRequests: Int {
        get { Int(storage.values.maximumPipelinedRequests) }
        set { stored.maximumPipelinedRequests = Int32(clamping: newValue) }
    }
    /// Interim (1xx) responses `HTTP1Connection` relays before one final response; a server
    /// sending more is treated as faulty (a 1xx costs the client a parse and nothing bounds
    /// them otherwise: RFC 9110 §15.2 "A client MUST be able to parse one or more 1xx
    /// responses received prior to a final response"). Default 10.
    public var maximumInformationalResponses: Int {
        get { Int(storage.values.maximumInformationalResponses) }
        set { stored.maximumInformationalResponses = Int32(clamping: newValue) }
    }

    public init(maximumRequestLineBytes: Int = 8192,
                maximumStatusLineBytes: Int = 8192,
                maximumHeaderBytes: Int = 65536,
                maximumHeaderCount: Int = 100,
                maximumChunkSizeDigits: Int = 16,
                maximumChunkLineBytes: Int = 4096,
                maximumTrailerBytes: Int = 16384,
                maximumLeadingEmptyLines: Int = 8,
                maximumPipelinedRequests: Int = 32,
                maximumInformationalResponses: Int = 10) {
        self.maximumRequestLineBytes = maximumRequestLineBytes
        self.maximumStatusLineBytes = maximumStatusLineBytes
        self.maximumHeaderBytes = maximumHeaderBytes
        self.maximumHeaderCount = maximumHeaderCount
        self.maximumChunkSizeDigits = maximumChunkSizeDigits
        self.maximumChunkLineBytes = maximumChunkLineBytes
        self.maximumTrailerBytes = maximumTrailerBytes
        self.maximumLeadingEmptyLines = maximumLeadingEmptyLines
        self.maximumPipelinedRequests = maximumPipelinedRequests
        self.maximumInformationalResponses = maximumInformationalResponses
    }

    /// The defaults above.
    public static let standard = HTTP1Limits()
}
