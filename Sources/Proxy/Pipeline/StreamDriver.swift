import L7Parsers

/// What a call to `StreamDriver.advance` achieved.
public enum DriverProgress: Equatable, Sendable {
    /// Nothing more can happen until bytes arrive or output drains.
    case idle
    /// Something moved (input consumed, output produced): call again, and advance the other
    /// direction too (its session state may have changed).
    case moreWork
    /// The connection must end now with resets (a session that cannot go on, a message over
    /// its limit, a session stuck without progress).
    case failed(reason: String)
}

/// The L7 half of a connection, without sockets: it runs an `L7Session` over two byte queues
/// per direction (input from the source, output for the destination) and performs every
/// operation the session answers.
///
/// Whoever owns the sockets (`RelayConnection`) or the recorded bytes (tests, replay) moves
/// bytes in with `inputSpace`/`received`, calls `advance` for each direction while it reports
/// progress, and moves bytes out with `output`/`sent`. The driver:
/// - calls the session again only once the bytes it asked for (`needMore(minimumBytes:)`)
///   have arrived, or when the other direction's progress may have changed its mind;
/// - grows a direction's input past one pool block only while the session waits for a
///   message larger than that, and never past the session's `maximumMessageBytes`;
/// - streams what the session passes (bytes it has judged need not be held whole) and what
///   it generates (a local answer, a rebuilt head or frame), whatever their size, a block at
///   a time as the destination takes them;
/// - keeps the client's byte stream in the order the session decided: an answer from the
///   request side and a response passing through are never interleaved.
public struct StreamDriver {
    /// One direction: bytes from its source and what is on its way to its destination.
    /// (Fields in this order so that the flags fill the buffers' padding: every L7
    /// connection holds two of these.)
    struct Lane {
        var input = RelayBuffer()
        var sourceEnded = false
        var endOfInputReported = false
        /// Something happened that the session has not seen.
        var dirty = true
        /// The session answered `.blocked` last.
        var blocked = false
        var output = RelayBuffer()
        /// Whether `generated` goes back to this direction's source (a reply) or on to its
        /// destination (a rebuilt head).
        var generatedToSource = false
        /// Bytes of input the session passed or dropped that have not all been moved yet.
        var pendingPass = 0
        var pendingDrop = 0
        /// Bytes the session generated, moved to an output from `generatedMoved` on.
        var generated: [UInt8] = []
        var generatedMoved = 0
        /// The input count below which the session has nothing new to say (`needMore`).
        var wanted = 0

        var holdsGenerated: Bool { generatedMoved < generated.count }
    }

    /// Why the session ended the connection, once it did (a class: the driver holds one
    /// pointer for it, not a string, while it never happens).
    public final class Closing: Sendable {
        public let reason: String
        /// The response side ended it (a response that cannot be relayed): the upstream goes
        /// at once; what is queued for the client is still delivered.
        public let byResponse: Bool

        init(reason: String, byResponse: Bool) {
            self.reason = reason
            self.byResponse = byResponse
        }
    }

    public let session: L7Session
    private var toServer = Lane()
    private var toClient = Lane()
    private var control = Control()

    /// The session ended the connection: what is queued for the client goes out, then it closes.
    public var closing: Closing? { control.closing }
    /// The session has acted on client input (passed, dropped or answered a request).
    public var hasActedOnRequest: Bool { control.hasActedOnRequest }

    /// Operations a session may answer in a row without consuming input or producing
    /// output; past it the session is stuck and the connection ends.
    static let maximumIdleOperations = 16

    public init(session: L7Session) {
        self.session = session
    }

    // MARK: Input

    /// Room at the tail of `side`'s input for bytes from its source (empty: do not read that
    /// source now). Grows the input when the session waits for a message larger than it holds.
    public mutating func inputSpace(_ side: TrafficDirection, pool: BufferPool) -> UnsafeMutableRawBufferPointer {
        let space = side == .request ? toServer.input.writableSpace(pool: pool) : toClient.input.writableSpace(pool: pool)
        guard space.count == 0 else { return space }
        let lane = side == .request ? toServer : toClient
        let capacity = lane.input.capacity(pool: pool)
        guard lane.wanted > capacity, !lane.blocked else { return space }
        let grown = min(max(lane.wanted, capacity * 2), max(session.maximumMessageBytes, lane.wanted))
        if side == .request {
            toServer.input.grow(toCapacity: grown, pool: pool)
            return toServer.input.writableSpace(pool: pool)
        }
        toClient.input.grow(toCapacity: grown, pool: pool)
        return toClient.input.writableSpace(pool: pool)
    }

    /// `count` bytes were written at the start of the last `inputSpace`.
    public mutating func received(_ side: TrafficDirection, count: Int) {
        if side == .request {
            toServer.input.didWrite(count)
            toServer.dirty = true
        } else {
            toClient.input.didWrite(count)
            toClient.dirty = true
        }
    }

    /// Returns `side`'s input block to the pool if it holds nothing (after a read that
    /// brought nothing).
    public mutating func releaseInputIfEmpty(_ side: TrafficDirection, pool: BufferPool) {
        if side == .request { toServer.input.releaseIfEmpty(pool: pool) } else { toClient.input.releaseIfEmpty(pool: pool) }
    }

    /// `side`'s source ended (FIN).
    public mutating func inputEnded(_ side: TrafficDirection) {
        if side == .request {
            toServer.sourceEnded = true
            toServer.dirty = true
        } else {
            toClient.sourceEnded = true
            toClient.dirty = true
        }
    }

    /// Drops what `side`'s input holds and treats its source as ended (the client stops
    /// being read before a local answer and close; the upstream went away).
    public mutating func discardInput(_ side: TrafficDirection, pool: BufferPool) {
        if side == .request {
            toServer.input.discard(pool: pool)
            toServer.sourceEnded = true
        } else {
            toClient.input.discard(pool: pool)
            toClient.sourceEnded = true
        }
    }

    /// Bytes held in `side`'s input that the session has not consumed.
    public func inputCount(_ side: TrafficDirection) -> Int {
        side == .request ? toServer.input.readableCount : toClient.input.readableCount
    }

    public func sourceEnded(_ side: TrafficDirection) -> Bool {
        side == .request ? toServer.sourceEnded : toClient.sourceEnded
    }

    // MARK: Output

    /// The bytes waiting for `side`'s destination (the server for `.request`).
    public func output(_ side: TrafficDirection) -> UnsafeRawBufferPointer {
        side == .request ? toServer.output.readableBytes : toClient.output.readableBytes
    }

    /// `count` bytes of `output(side)` were delivered.
    public mutating func sent(_ side: TrafficDirection, count: Int, pool: BufferPool) {
        if side == .request {
            toServer.output.didRead(count, pool: pool)
            // Room in an output can let a stalled pass or answer go on.
            if toServer.pendingPass > 0 || toServer.holdsGenerated { toServer.dirty = true }
        } else {
            toClient.output.didRead(count, pool: pool)
            if toClient.pendingPass > 0 || toClient.holdsGenerated { toClient.dirty = true }
            if toServer.holdsGenerated && toServer.generatedToSource { toServer.dirty = true }
        }
    }

    /// Whether something is on its way to `side`'s destination: output waiting, or passed
    /// or generated bytes not yet moved there.
    public func holdsOutput(_ side: TrafficDirection) -> Bool {
        let lane = side == .request ? toServer : toClient
        let other = side == .request ? toClient : toServer
        return !lane.output.isEmpty || lane.pendingPass > 0 || (lane.holdsGenerated && !lane.generatedToSource)
            || (other.holdsGenerated && other.generatedToSource)
    }

    /// `side`'s source ended and everything from it was delivered or dropped: the end of
    /// stream may be forwarded to its destination.
    public func isDelivered(_ side: TrafficDirection) -> Bool {
        let lane = side == .request ? toServer : toClient
        return lane.sourceEnded && lane.input.isEmpty && !holdsOutput(side)
    }

    /// `side`'s session passed bytes that have not all arrived or moved yet.
    public func isPassing(_ side: TrafficDirection) -> Bool {
        (side == .request ? toServer : toClient).pendingPass > 0
    }

    /// The client's input holds (or, before the first request, awaits) the start of a message
    /// the session cannot decide yet: the incomplete-message clock runs.
    public var awaitsMessage: Bool {
        let beforeFirstRequest = !hasActedOnRequest && !toServer.sourceEnded
        return (!toServer.input.isEmpty || beforeFirstRequest) && toServer.pendingPass == 0 && toServer.pendingDrop == 0
            && !toServer.blocked
    }

    /// Nothing is owed either way and nothing is held: a draining proxy may close now.
    public var isIdle: Bool {
        session.isIdle && closing == nil && toServer.input.isEmpty && toClient.input.isEmpty
            && !holdsOutput(.request) && !holdsOutput(.response)
    }

    // MARK: Answers from the proxy

    /// Queues `bytes` for the client after everything already on its way there (a 503 when
    /// the upstream failed, a 504 or 408 when a clock ran out).
    public mutating func answerClient(_ bytes: [UInt8]) {
        toClient.generated.append(contentsOf: bytes)
        toClient.generatedToSource = false
        toClient.dirty = true
    }

    /// The session has something new to say without new bytes (it was told to drain): both
    /// directions ask it again on their next advance.
    public mutating func sessionChanged() {
        toServer.dirty = true
        toServer.wanted = 0
        toClient.dirty = true
        toClient.wanted = 0
    }

    /// Ends the connection once what is queued for the client has been delivered.
    public mutating func close(reason: String) {
        if control.closing == nil { control.closing = Closing(reason: reason, byResponse: false) }
    }

    /// Returns every buffer to the pool (the connection is gone).
    public mutating func release(pool: BufferPool) {
        for side in [TrafficDirection.request, .response] {
            if side == .request {
                toServer.input.discard(pool: pool)
                toServer.output.discard(pool: pool)
            } else {
                toClient.input.discard(pool: pool)
                toClient.output.discard(pool: pool)
            }
        }
    }

    // MARK: Running the session

    /// Runs the session over `side`'s input until it needs more bytes, the output is full or
    /// the connection must end.
    public mutating func advance(_ side: TrafficDirection, pool: BufferPool) -> DriverProgress {
        let result = side == .request
            ? Self.advance(&toServer, replies: &toClient, side: side, session: session, control: &control, pool: pool)
            : Self.advance(&toClient, replies: &toServer, side: side, session: session, control: &control, pool: pool)
        if result == .moreWork {
            // The session's state moved on: the other direction may have something new to say
            // even without new bytes (an answer that became due).
            if side == .request {
                toClient.dirty = true
                toClient.wanted = 0
            } else {
                toServer.dirty = true
                toServer.wanted = 0
            }
        }
        return result
    }

    /// Calls both directions until neither makes progress (for drivers without an event
    /// loop: tests and replay). Stops at `.failed`.
    public mutating func run(pool: BufferPool) -> DriverProgress {
        var any = false
        for _ in 0..<1_000_000 {
            let request = advance(.request, pool: pool)
            if case .failed = request { return request }
            let response = advance(.response, pool: pool)
            if case .failed = response { return response }
            guard request == .moreWork || response == .moreWork else { return any ? .moreWork : .idle }
            any = true
        }
        return .failed(reason: "the session made no end of progress")
    }

    /// The state both directions share.
    private struct Control {
        /// Which direction is moving bytes into the client's output, when a move is
        /// unfinished: the other waits so that the two never interleave.
        var clientWriter: TrafficDirection?
        var closing: Closing?
        var hasActedOnRequest = false
    }

    private static func advance(_ lane: inout Lane, replies: inout Lane, side: TrafficDirection, session: L7Session,
                                control: inout Control, pool: BufferPool) -> DriverProgress {
        // Nothing new for this side and nothing half done: the session's answer would be
        // the same as last time.
        guard lane.dirty || lane.pendingPass > 0 || lane.pendingDrop > 0 || lane.holdsGenerated else { return .idle }
        lane.dirty = false
        var progressed = false
        var idleOperations = 0
        /// Takes the client's output for this direction; false while the other one holds it.
        func claimClient() -> Bool {
            if control.clientWriter == nil { control.clientWriter = side }
            return control.clientWriter == side
        }
        func releaseClient() {
            guard control.clientWriter == side else { return }
            control.clientWriter = nil
            // The other direction may have been waiting for the client's output.
            replies.dirty = true
        }
        while true {
            // Finish what earlier operations started before asking for more.
            if lane.holdsGenerated {
                let toClient = (side == .request) == lane.generatedToSource
                if toClient && !claimClient() { break }
                let moved = lane.generatedToSource
                    ? move(lane.generated, from: &lane.generatedMoved, into: &replies.output, pool: pool)
                    : move(lane.generated, from: &lane.generatedMoved, into: &lane.output, pool: pool)
                if moved > 0 { progressed = true }
                if lane.holdsGenerated { break }
                lane.generated = []
                lane.generatedMoved = 0
                if toClient && !(side == .response && lane.pendingPass > 0) { releaseClient() }
            }
            if lane.pendingDrop > 0 {
                let count = min(lane.pendingDrop, lane.input.readableCount)
                lane.input.didRead(count, pool: pool)
                lane.pendingDrop -= count
                if count > 0 { progressed = true }
                if lane.pendingDrop > 0 { break }
            }
            if lane.pendingPass > 0 {
                if side == .response && !claimClient() { break }
                let space = lane.output.writableSpace(pool: pool)
                let count = min(lane.pendingPass, lane.input.readableCount, space.count)
                if count > 0 {
                    space.copyMemory(from: UnsafeRawBufferPointer(rebasing: lane.input.readableBytes[0..<count]))
                    lane.output.didWrite(count)
                    lane.input.didRead(count, pool: pool)
                    lane.pendingPass -= count
                    progressed = true
                }
                lane.output.releaseIfEmpty(pool: pool)
                if lane.pendingPass > 0 && lane.sourceEnded && lane.input.isEmpty {
                    // The source ended before all the bytes the session passed arrived: a
                    // truncated message; nothing more will come.
                    lane.pendingPass = 0
                }
                if lane.pendingPass > 0 { break }
                if side == .response { releaseClient() }
            }
            if control.closing != nil { break }
            if lane.sourceEnded && !lane.endOfInputReported && lane.input.isEmpty {
                lane.endOfInputReported = true
                if let operation = session.endOfInput(side, unconsumed: 0) {
                    perform(operation, on: &lane, side: side, control: &control)
                    progressed = true
                    continue
                }
            }
            // The session asked for more bytes than have come: it has nothing new to say.
            if lane.input.readableCount < lane.wanted && !lane.sourceEnded { break }
            let operation = session.step(side, lane.input.readableBytes)
            lane.blocked = operation == .blocked
            if operation == .blocked {
                // Backpressure: the bytes stay; once the input is full this side is not read
                // until the other direction's progress unblocks the session.
                break
            }
            if case .needMore(let minimum) = operation {
                lane.wanted = lane.input.readableCount + max(minimum, 1)
                if lane.sourceEnded && !lane.input.isEmpty {
                    // The source closed in the middle of a message: those bytes never form
                    // one, and none of them was forwarded.
                    if side == .response, !lane.endOfInputReported {
                        lane.endOfInputReported = true
                        if let ending = session.endOfInput(side, unconsumed: lane.input.readableCount) {
                            perform(ending, on: &lane, side: side, control: &control)
                            continue
                        }
                    }
                    lane.input.discard(pool: pool)
                    lane.wanted = 0
                    progressed = true
                } else if lane.wanted > session.maximumMessageBytes {
                    return .failed(reason: "a message of more than \(session.maximumMessageBytes) bytes")
                }
                break
            }
            lane.wanted = 0
            let before = (lane.pendingPass, lane.pendingDrop, lane.generated.count, control.closing == nil)
            if case .failed(let reason) = validate(operation, lane: lane) { return .failed(reason: reason) }
            perform(operation, on: &lane, side: side, control: &control)
            if (lane.pendingPass, lane.pendingDrop, lane.generated.count, control.closing == nil) == before {
                idleOperations += 1
                if idleOperations > maximumIdleOperations { return .failed(reason: "the session makes no progress") }
            } else {
                idleOperations = 0
            }
        }
        return progressed ? .moreWork : .idle
    }

    /// A pass or drop counts bytes forward. It may claim more than the input holds: a
    /// session that judged a message by its start lets the rest stream through as it comes.
    private static func validate(_ operation: SessionOperation, lane: Lane) -> DriverProgress {
        switch operation {
        case .pass(let count), .drop(let count):
            if count < 0 { return .failed(reason: "the session consumed \(count) bytes") }
        default:
            break
        }
        return .idle
    }

    /// Records one operation of the session.
    private static func perform(_ operation: SessionOperation, on lane: inout Lane, side: TrafficDirection,
                                control: inout Control) {
        if side == .request, !operation.isWaiting { control.hasActedOnRequest = true }
        switch operation {
        case .needMore, .blocked:
            break
        case .pass(let count):
            lane.pendingPass += count
        case .drop(let count):
            lane.pendingDrop += count
        case .reply(let bytes):
            take(bytes, into: &lane.generated)
            lane.generatedToSource = true
        case .forward(let bytes):
            take(bytes, into: &lane.generated)
            lane.generatedToSource = false
        case .close(let reason):
            // A request-side close follows the answer already queued for the client. A
            // response-side close (a response that cannot be relayed) drops the upstream and
            // closes once what is queued for the client (valid responses before the fault,
            // the session's 502) has been delivered.
            if control.closing == nil { control.closing = Closing(reason: reason, byResponse: side == .response) }
        }
    }

    /// Queues a session's generated bytes: taken as they are when nothing waits (no copy, no
    /// allocation), else appended.
    private static func take(_ bytes: [UInt8], into generated: inout [UInt8]) {
        if generated.isEmpty { generated = bytes } else { generated += bytes }
    }

    /// Moves as much of `generated` (from `moved` on) as fits into `output`; returns how many
    /// bytes moved.
    private static func move(_ generated: [UInt8], from moved: inout Int, into output: inout RelayBuffer,
                             pool: BufferPool) -> Int {
        let space = output.writableSpace(pool: pool)
        let count = min(space.count, generated.count - moved)
        if count > 0 {
            let start = moved
            generated.withUnsafeBytes { bytes in
                space.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[start..<(start + count)]))
            }
            output.didWrite(count)
            moved += count
        }
        output.releaseIfEmpty(pool: pool)
        return count
    }
}
