/// Caller-owned limits for one HTTP/2 endpoint (one `nghttp2_session`). Every buffer an
/// endpoint holds is bounded by one of these; nghttp2 enforces most of them itself and
/// answers violations with the RFC 9113 error (a stream or a connection error).
public struct HTTP2Limits: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to the peer. RFC 9113 §5.1.2: "An endpoint
    /// that receives a HEADERS frame that causes its advertised concurrent stream limit to be
    /// exceeded MUST treat this as a stream error of type PROTOCOL_ERROR or REFUSED_STREAM."
    public var maximumConcurrentStreams: UInt32 = 100
    /// SETTINGS_INITIAL_WINDOW_SIZE: what a peer may send on one stream before the other side
    /// took it. Bounds the body bytes held per stream.
    public var streamWindowBytes: Int32 = 65_535
    /// The connection's receive window: bounds the body bytes held per connection and direction.
    public var connectionWindowBytes: Int32 = 1 << 20
    /// Decoded bytes of one header block (names, values and 32 per field, RFC 9113 §6.5.2's
    /// SETTINGS_MAX_HEADER_LIST_SIZE accounting); past it a request head is decoded and dropped
    /// and its stream answered 431 (RFC 9113 §10.5.1), any other block's stream reset. Bounds
    /// an HPACK bomb: a small block that references a large table entry many times.
    public var maximumHeaderListBytes: Int = 65_536
    /// Fields in one header block (past it, as past `maximumHeaderListBytes`).
    public var maximumHeaderCount: Int = 256
    /// SETTINGS_HEADER_TABLE_SIZE: the HPACK decoder's dynamic table.
    public var headerTableBytes: UInt32 = 4096
    /// CONTINUATION frames after one HEADERS frame (a CONTINUATION flood, CVE-2024-27316).
    public var maximumContinuations: Int = 8
    /// RST_STREAM frames a peer may send in a burst, then per second (rapid reset, CVE-2023-44487);
    /// past it the connection ends with GOAWAY (ENHANCE_YOUR_CALM).
    public var streamResetBurst: UInt64 = 1000
    public var streamResetsPerSecond: UInt64 = 33
    /// Entries in one SETTINGS frame.
    public var maximumSettingsEntries: Int = 32
    /// Control frames (SETTINGS and PING acknowledgements, RST_STREAM) queued for a peer that
    /// does not read them (SETTINGS and PING floods).
    public var maximumQueuedControlFrames: Int = 1000

    public init() {}

    public static let standard = HTTP2Limits()
}
