import L7Parsers

/// What an L7 session asks the connection driver to do with the bytes at the front of one
/// direction's input: the parser contract (`ParserOperation`), plus `forward`, which
/// replaces bytes on their way (a rewritten request head) and `close` after local answers.
public enum SessionOperation: Equatable, Sendable {
    /// Nothing can be decided yet; call again once at least `minimumBytes` more have arrived.
    case needMore(minimumBytes: Int)
    /// Nothing can be consumed until the other direction makes progress: stop reading
    /// this side when its buffer is full (backpressure, never an error).
    case blocked
    /// Forward the next `count` input bytes to the destination unchanged.
    case pass(Int)
    /// Discard the next `count` input bytes.
    case drop(Int)
    /// Send these bytes back to the side the input came from (403, 400, ...).
    case reply([UInt8])
    /// Send these bytes to the destination, consuming no input (a rebuilt head).
    case forward([UInt8])
    /// The connection must end once what is queued for the client has been sent.
    case close(reason: String)

    /// `needMore` or `blocked`: the operation consumes and produces nothing.
    public var isWaiting: Bool {
        switch self {
        case .needMore, .blocked: return true
        default: return false
        }
    }

    public init(_ operation: ParserOperation) {
        switch operation {
        case .needMore(let minimum): self = .needMore(minimumBytes: minimum)
        case .blocked: self = .blocked
        case .pass(let count): self = .pass(count)
        case .drop(let count): self = .drop(count)
        case .inject(let bytes): self = .reply(bytes)
        case .error(let reason): self = .close(reason: reason)
        }
    }
}

/// A protocol handler for one connection: a parser from `L7Parsers` joined with a policy
/// decision, which the driver (`StreamDriver`) calls with the unconsumed bytes of each
/// direction. The driver owns buffers and the call loop (and `RelayConnection`, around it,
/// the sockets and clocks); the session owns the protocol state and the flow records of its
/// messages. Register a session for its L7 kind in `SessionRegistry`.
public protocol L7Session: AnyObject {
    /// The largest message the session must see whole before it can answer (its head, for a
    /// protocol whose body streams once judged). The driver holds up to this many bytes of one
    /// direction when the session asks for them; more ends the connection.
    var maximumMessageBytes: Int { get }
    /// The next operation for the bytes at the front of `direction`'s input (possibly none:
    /// a session may have something to say without new bytes, such as a denial that became
    /// due after a response completed).
    func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation
    /// The source of `direction` closed with `unconsumed` bytes still held.
    func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation?
    /// The client took longer than the incomplete-message timeout to complete what the
    /// session waits for (HTTP: a request head); returns what to tell it before the
    /// connection closes (nil: close without a word).
    func incompleteMessageTimedOut() -> [UInt8]?
    /// The upstream could not be reached; returns what to tell the client before closing
    /// (nil: reset the client, as at L4).
    func upstreamFailed(reason: String) -> [UInt8]?
    /// True while a request was forwarded and its response is not complete: the driver's
    /// response clock runs.
    var isAwaitingResponse: Bool { get }
    /// The upstream stayed silent for the response timeout; returns what to tell the client
    /// before closing (nil: close without a word, e.g. part of the response already went out).
    func responseTimedOut() -> [UInt8]?
    /// How long the upstream may stay silent while a response is owed, when the protocol
    /// has its own (DNS: `dns.responseTimeout`); nil: the listener's `timeouts.response`.
    var responseTimeout: UInt64? { get }
    /// True between messages with nothing owed either way: a draining proxy may close now.
    var isIdle: Bool { get }
    /// The proxy is draining (a successor serves new connections). A session whose protocol
    /// can tell its client to stop opening messages here (HTTP/2's GOAWAY) does so and returns
    /// true: it ends the connection itself (`.close` from `step`) once what it took on is done,
    /// and the driver does not close it for being idle. False (the default): the connection
    /// closes as soon as it is idle between messages. Called again on later pumps while it
    /// returns false (a session may choose its protocol after the drain began).
    func beginDrain() -> Bool
}

extension L7Session {
    public var responseTimeout: UInt64? { nil }
    public func beginDrain() -> Bool { false }
}

/// Receives the flow records of L7 sessions.
public protocol L7FlowReporter: AnyObject {
    func report(_ record: JSONObject)
    /// A record not made yet: by default made now and reported; a reporter that writes on a
    /// thread of its own may make it there.
    func report(_ draft: L7RecordDraft)
}

extension L7FlowReporter {
    public func report(_ draft: L7RecordDraft) { report(draft.record()) }
}
