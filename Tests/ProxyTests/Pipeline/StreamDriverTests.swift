import Testing
import L7Parsers
@testable import Proxy

/// A toy framed protocol for the driver: each message is a 4-byte big-endian length and a
/// payload. A payload starting with "deny" is answered by the proxy (`answer`, of any size)
/// and dropped; others go to the server. With `judgeWhole` the session asks for the whole
/// message before it decides (`needMore(minimumBytes:)` with the exact remainder); otherwise
/// it decides on the first 8 bytes and lets the rest stream through. Responses pass as they
/// come. It records every call so tests can see what the driver asked of it.
final class FramedToySession: L7Session {
    let judgeWhole: Bool
    let maximumMessageBytes: Int
    let answer: [UInt8]
    /// Calls of `step` for the request side, and the largest input the session was shown.
    var requestSteps = 0
    var largestInput = 0
    /// A denied message was answered; it is dropped next (all of it, as it arrives).
    private var dropNext = 0

    init(judgeWhole: Bool, maximumMessageBytes: Int = 2 << 20, answer: [UInt8] = Array("DENIED\n".utf8)) {
        self.judgeWhole = judgeWhole
        self.maximumMessageBytes = maximumMessageBytes
        self.answer = answer
    }

    static func frame(_ payload: [UInt8]) -> [UInt8] {
        let count = UInt32(payload.count)
        return [UInt8(count >> 24), UInt8(count >> 16 & 0xff), UInt8(count >> 8 & 0xff), UInt8(count & 0xff)] + payload
    }

    func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        guard direction == .request else { return bytes.isEmpty ? .needMore(minimumBytes: 1) : .pass(bytes.count) }
        requestSteps += 1
        largestInput = max(largestInput, bytes.count)
        if dropNext > 0 {
            defer { dropNext = 0 }
            return .drop(dropNext)
        }
        guard bytes.count >= 8 else { return .needMore(minimumBytes: 8 - bytes.count) }
        let total = 4 + bytes[0..<4].reduce(0) { $0 << 8 | Int($1) }
        if judgeWhole && bytes.count < total { return .needMore(minimumBytes: total - bytes.count) }
        if Array(bytes[4..<8]) == Array("deny".utf8) {
            dropNext = total
            return .reply(answer)
        }
        // Judged: the whole message passes, however much of it has arrived.
        return .pass(total)
    }

    func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? { nil }
    func incompleteMessageTimedOut() -> [UInt8]? { nil }
    func upstreamFailed(reason: String) -> [UInt8]? { nil }
    var isAwaitingResponse: Bool { false }
    func responseTimedOut() -> [UInt8]? { nil }
    var isIdle: Bool { true }
}

@Suite struct StreamDriverTests {
    static let mebibyte = 1 << 20

    static func payload(_ count: Int, prefix: String = "data") -> [UInt8] {
        Array(prefix.utf8) + (0..<(count - prefix.utf8.count)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    }

    static func send(_ bytes: [UInt8], in chunk: Int, to connection: inout MemoryConnection) {
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + chunk, bytes.count)
            connection.clientSends(bytes[offset..<end])
            offset = end
        }
    }

    /// A 1 MiB message the session must see whole passes through 64 KiB blocks: the driver
    /// grows the input to the size asked for, and frees it once the message is through.
    @Test func aMessageSixteenBlocksLongIsHeldWholeAndPasses() {
        let session = FramedToySession(judgeWhole: true)
        var connection = MemoryConnection(session: session, blockSize: 65536)
        let message = FramedToySession.frame(Self.payload(Self.mebibyte))
        Self.send(message, in: 16384, to: &connection)
        #expect(connection.closedReason == nil)
        #expect(connection.deliveredToServer == message)
        #expect(session.largestInput == message.count, "the session saw the message whole")
        // needMore(minimumBytes:) is honoured: the session is not asked again for every
        // 16 KiB that arrives while it waits for the rest.
        #expect(session.requestSteps <= 4, "asked \(session.requestSteps) times")
        #expect(connection.pool.outstanding == 0, "nothing is held once the message is through")
    }

    /// The largest frame HTTP/2 allows (16 MiB) held whole: the input grows to it and no further.
    @Test func aSixteenMebibyteFrameCanBeHeldWhole() {
        let session = FramedToySession(judgeWhole: true, maximumMessageBytes: 16 << 20 + 4)
        var connection = MemoryConnection(session: session, blockSize: 65536)
        let message = FramedToySession.frame(Self.payload(16 << 20))
        Self.send(message, in: 1 << 20, to: &connection)
        #expect(connection.closedReason == nil)
        #expect(connection.deliveredToServer.count == message.count)
        #expect(connection.deliveredToServer == message)
        #expect(session.largestInput == message.count)
        #expect(connection.pool.outstanding == 0)
    }

    /// A message judged by its start streams through without ever being held whole.
    @Test func aJudgedMessageStreamsThroughOneBlock() {
        let session = FramedToySession(judgeWhole: false, maximumMessageBytes: 4096)
        var connection = MemoryConnection(session: session, blockSize: 4096)
        let message = FramedToySession.frame(Self.payload(Self.mebibyte))
        Self.send(message, in: 1000, to: &connection)
        #expect(connection.closedReason == nil)
        #expect(connection.deliveredToServer == message)
        #expect(session.largestInput <= 4096, "never more than one block held")
    }

    /// What the session generates streams too, whatever its size, ahead of what follows.
    @Test func aGeneratedAnswerLargerThanABlockArrivesWholeAndInOrder() {
        let answer = Array(repeating: UInt8(ascii: "x"), count: 300_000)
        let session = FramedToySession(judgeWhole: true, answer: answer)
        var connection = MemoryConnection(session: session, blockSize: 65536)
        let denied = FramedToySession.frame(Self.payload(100, prefix: "deny"))
        let allowed = FramedToySession.frame(Self.payload(100))
        connection.clientSends(denied + allowed)
        #expect(connection.closedReason == nil)
        #expect(connection.deliveredToClient == answer)
        #expect(connection.deliveredToServer == allowed, "the denied message never reaches the server")
    }

    /// A message over the session's declared limit ends the connection instead of growing
    /// the buffer without bound.
    @Test func aMessageOverTheSessionsLimitEndsTheConnection() {
        let session = FramedToySession(judgeWhole: true, maximumMessageBytes: 100_000)
        var connection = MemoryConnection(session: session, blockSize: 65536)
        Self.send(FramedToySession.frame(Self.payload(200_000)), in: 65536, to: &connection)
        #expect(connection.failure == "a message of more than 100000 bytes")
        #expect(connection.deliveredToServer.isEmpty)
    }

    /// With 16-byte blocks every move is partial. A response half moved to a client that is
    /// not reading holds the client's stream: an answer to a denied message queued meanwhile
    /// waits for it instead of being cut into it.
    @Test func answersAndResponsesNeverInterleaveInTheClientsStream() {
        let session = FramedToySession(judgeWhole: true, answer: Array("DENIED-DENIED-DENIED\n".utf8))
        var connection = MemoryConnection(session: session, blockSize: 16)
        let allowed = FramedToySession.frame(Self.payload(8))
        connection.clientSends(allowed)
        #expect(connection.deliveredToServer == allowed)
        connection.clientReads = false
        // Ten bytes fill the client's output part way; of the next twelve, six fit and six
        // wait, still owed to the client as one passed piece.
        connection.serverSends(Array("response-1".utf8))
        connection.serverSends(Array("RESPONSE-two".utf8))
        #expect(connection.deliveredToClient.isEmpty)
        connection.clientSends(FramedToySession.frame(Self.payload(8, prefix: "deny")))
        connection.clientReads = true
        connection.pump()
        #expect(String(decoding: connection.deliveredToClient, as: UTF8.self)
                == "response-1RESPONSE-twoDENIED-DENIED-DENIED\n")
        #expect(connection.deliveredToServer == allowed)
    }
}
