/// The one contract between the proxy's connection driver and every L7 protocol parser.
///
/// A per-connection parser is fed the bytes of one direction, as they arrive, and answers
/// with one operation for the bytes at the front of what it was given. The driver (in
/// `Proxy`) owns the buffer and the call loop: it performs the operation, removes the bytes
/// it consumed, and calls again while bytes remain. A parser never touches a socket and
/// never sees policy directly: where a verdict is needed it asks the driver through its
/// own state machine (see each protocol's folder). (Cilium proxylib's OnData with
/// PASS/DROP/MORE/INJECT/ERROR.)
public enum ParserOperation: Equatable, Sendable {
    /// The bytes given do not yet decide anything; call again once at least
    /// `minimumBytes` more have arrived (1 when the framing does not say).
    case needMore(minimumBytes: Int)
    /// Nothing at the front can be consumed until the other direction makes progress (a
    /// pipelining limit, a protocol switch awaiting its response, a local answer not yet
    /// due). Unlike `needMore`, more bytes of this direction would not help: the driver
    /// stops reading this side once its buffer is full. That is backpressure, never an
    /// error, whatever the buffer holds.
    case blocked
    /// Forward the next `count` bytes to the peer unchanged.
    case pass(Int)
    /// Discard the next `count` bytes.
    case drop(Int)
    /// Send these bytes back to the side the input came from (a deny response, an error
    /// answer); consumes no input.
    case inject([UInt8])
    /// The input cannot be parsed; the connection must close. `reason` is for the flow log.
    case error(reason: String)
}

/// Which way the bytes a parser is fed are flowing.
public enum TrafficDirection: Sendable {
    /// From the client that opened the connection to the server.
    case request
    /// From the server back to the client.
    case response
}
