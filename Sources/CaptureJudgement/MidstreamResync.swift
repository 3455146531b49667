import L7Parsers
import Replay

/// Connections the capture entered part-way (first seen after their handshake) whose port
/// carries HTTP: picked up at the first whole request line the client sends, and the server's
/// side at the first status line after it, as a new connection from there. Until then their
/// bytes are not judged: the parser is never fed the middle of a message. A line is looked for
/// after each line feed and at the start of each segment's bytes (messages start segments:
/// a response after a body that did not end a line is still found).
///
/// Other protocols are not entered part-way (a DNS-over-TCP stream has no marker to find a
/// message boundary by); those connections are skipped and counted.
struct MidstreamResync {
    private struct State {
        var clientFound = false
        var serverFound = false
    }

    private var states: [TCPConnection: State] = [:]
    /// Connections waiting at once; past it, newly seen ones are skipped (bounded memory).
    static let maximumWaiting = 16_384

    /// Starts looking for the place to enter `connection`; false when too many already wait.
    mutating func track(_ connection: TCPConnection) -> Bool {
        guard states.count < Self.maximumWaiting else { return false }
        states[connection] = State()
        return true
    }

    func isTracking(_ connection: TCPConnection) -> Bool { states[connection] != nil }

    /// What to judge of `bytes` from a tracked connection: nil while the stream is not
    /// entered yet; otherwise the offset to judge from and whether the connection is entered
    /// with these bytes (its request line is in them).
    mutating func data(_ connection: TCPConnection, _ direction: TCPDirection,
                       _ bytes: UnsafeRawBufferPointer) -> (from: Int, entered: Bool)? {
        guard var state = states[connection], !bytes.isEmpty else { return nil }
        defer { states[connection] = state }
        if direction == .clientToServer {
            if state.clientFound { return (0, false) }
            guard let start = HTTP1Resync.requestStart(in: bytes, atLineStart: true) else { return nil }
            state.clientFound = true
            return (start, true)
        }
        if state.serverFound { return (0, false) }
        guard state.clientFound, let start = HTTP1Resync.responseStart(in: bytes, atLineStart: true) else { return nil }
        state.serverFound = true
        return (start, false)
    }

    /// The connection ended; returns whether it was ever entered.
    mutating func end(_ connection: TCPConnection) -> Bool {
        states.removeValue(forKey: connection)?.clientFound ?? false
    }
}
