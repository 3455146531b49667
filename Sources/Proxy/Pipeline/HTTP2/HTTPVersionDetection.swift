import Glibc
import L7Parsers

/// Phase "detect protocol" on a port with HTTP rules: HTTP/2 with prior knowledge (h2c)
/// when the client opens with the HTTP/2 connection preface, HTTP/1.1 otherwise, on the same
/// port. Until the first bytes decide, it holds them; then it becomes the chosen session and
/// hands it every call.
///
/// RFC 9113 §3.4: "the client connection preface starts with a sequence of 24 octets ...
/// PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n". No HTTP/1.1 request starts that way (`PRI` is no method
/// an HTTP/1.1 server serves, and the version is 2.0), so a mismatch at any byte decides for HTTP/1.1.
public final class HTTPVersionDetectingSession: L7Session {
    public typealias Factory = () -> L7Session
    private let makeHTTP1: Factory
    private let makeHTTP2: Factory
    /// The session the first bytes chose; nil until they did.
    public private(set) var chosen: L7Session?

    public static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    public init(http1: @escaping Factory, http2: @escaping Factory) {
        makeHTTP1 = http1
        makeHTTP2 = http2
    }

    public var maximumMessageBytes: Int { chosen?.maximumMessageBytes ?? Self.preface.count }

    public func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if let chosen { return chosen.step(direction, bytes) }
        // The server speaking first waits for the client's first bytes to decide.
        guard direction == .request else { return .needMore(minimumBytes: 1) }
        let count = min(bytes.count, Self.preface.count)
        if count == 0 { return .needMore(minimumBytes: 1) }
        let matches = Self.preface.withUnsafeBytes { preface in
            memcmp(preface.baseAddress!, bytes.baseAddress!, count) == 0
        }
        if matches && count < Self.preface.count { return .needMore(minimumBytes: Self.preface.count - count) }
        let session = matches ? makeHTTP2() : makeHTTP1()
        chosen = session
        return session.step(direction, bytes)
    }

    public func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? {
        chosen?.endOfInput(direction, unconsumed: unconsumed)
    }

    public func incompleteMessageTimedOut() -> [UInt8]? { chosenOrHTTP1.incompleteMessageTimedOut() }

    public func upstreamFailed(reason: String) -> [UInt8]? { chosenOrHTTP1.upstreamFailed(reason: reason) }

    public var isAwaitingResponse: Bool { chosen?.isAwaitingResponse ?? false }

    public func responseTimedOut() -> [UInt8]? { chosen?.responseTimedOut() }

    public var responseTimeout: UInt64? { chosen?.responseTimeout }

    public var isIdle: Bool { chosen?.isIdle ?? true }

    public func beginDrain() -> Bool { chosen?.beginDrain() ?? false }

    /// A client that said nothing yet is answered as HTTP/1.1 clients are (a 408, a 503).
    private var chosenOrHTTP1: L7Session {
        if let chosen { return chosen }
        let session = makeHTTP1()
        chosen = session
        return session
    }
}
