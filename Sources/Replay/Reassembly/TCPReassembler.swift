/// One TCP connection as the reassembler reports it. `id` is unique within one reassembler.
public struct TCPConnection: Hashable, Sendable, CustomStringConvertible {
    public let id: UInt64
    /// The side that sent the SYN, or for a connection first seen mid-stream the side
    /// `TCPReassembler` guessed (see there).
    public let client: TransportEndpoint
    public let server: TransportEndpoint

    public var description: String { "#\(id) \(client) -> \(server)" }
}

/// Which way bytes flow on a connection.
public enum TCPDirection: Sendable, Hashable {
    case clientToServer
    case serverToClient

    var opposite: TCPDirection { self == .clientToServer ? .serverToClient : .clientToServer }
}

/// Why a connection was closed.
public enum TCPCloseReason: Sendable, Hashable {
    /// Both directions ended with a FIN (or ended with a FIN after a gap).
    case fin
    case rst
    /// No segment for the idle timeout, by capture time.
    case idle
    /// The capture (or `finish`) ended with the connection open.
    case endOfCapture
    /// The connection table was full and this was the least recently active connection.
    case evicted
    /// A new SYN with another initial sequence number reused the same addresses and ports.
    case reused
}

/// What the reassembler tells its consumer, in capture order.
///
/// The bytes of `.data` are valid only during the handler call (they point into the
/// captured packet or the reassembler's buffers); copy what must be kept.
public enum TCPEvent {
    /// A connection was seen for the first time. `midstream` means no SYN was seen: the
    /// capture started after the handshake, the client is a guess, and the first bytes of
    /// each direction may be in the middle of a message; the consumer resynchronises or skips.
    case opened(TCPConnection, midstream: Bool)
    /// The next bytes of one direction, in order, never invented.
    case data(TCPConnection, TCPDirection, UnsafeRawBufferPointer)
    /// `missingBytes` of this direction were not captured (lost segments, a snaplen cut,
    /// out-of-order data past the cap). The direction is incomplete from here: no more
    /// `.data` for it.
    case gap(TCPConnection, TCPDirection, missingBytes: Int)
    /// A retransmission or overlap carried bytes that differ from those already seen for
    /// the same sequence numbers; the first copy won.
    case conflictingOverlap(TCPConnection, TCPDirection)
    /// The connection ended; no more events for it.
    case closed(TCPConnection, reason: TCPCloseReason)
}

/// Limits of the reassembler, owned by the caller.
public struct TCPReassemblyLimits: Sendable {
    /// Out-of-order bytes held per direction; past it, the hole in front is a gap.
    public var maximumBufferedBytesPerDirection = 1 << 20
    /// Out-of-order segments held per direction (so tiny segments cannot multiply the
    /// bookkeeping under the byte cap); past it, the hole in front is a gap too.
    public var maximumBufferedSegmentsPerDirection = 4096
    /// A connection with no segment for this much capture time is closed (`.idle`).
    public var idleTimeoutNanoseconds: UInt64 = 300_000_000_000
    /// Connections tracked at once; past it, the least recently active is evicted.
    public var maximumConnections = 100_000
    /// Delivered bytes kept per direction to compare retransmissions against (a
    /// retransmission of older bytes cannot be checked for conflicts).
    public var retransmissionCheckBytes = 16 * 1024

    public init() {}
}

/// Rebuilds the byte streams of TCP connections from captured segments.
///
/// Keyed by the address/port 4-tuple in either direction. The SYN sender is the client (a
/// SYN-ACK's receiver, if only that was seen). A connection first seen without a SYN is
/// `midstream`: its client is guessed as the endpoint with the higher port (ephemeral
/// ports are high; the server listens on the lower), or, with equal ports, the sender of
/// the first segment seen; each direction starts at the first byte seen in it (or at what
/// the other side acknowledged, if that comes first).
///
/// Delivers in order; out-of-order data is held (up to the per-direction cap); on overlap
/// the first copy wins and differing bytes are reported. A missing range — a lost
/// segment, proven when the peer acknowledges past it while later data waits, or when the
/// connection ends with data still waiting; a segment cut by the snaplen; the cap
/// exceeded — is reported once as a gap and ends delivery for that direction: the
/// consumer is never given invented bytes. Sequence numbers wrap (offsets are 64-bit).
///
/// Only a segment with a SYN or payload opens a connection: the last ACK after both
/// FINs, or a stray RST, does not open a new one. Memory is bounded by the limits; idle
/// connections are closed by capture time. Pure: no I/O, no clock but the segments'
/// timestamps. Not thread-safe; the handler must not call back into the reassembler.
public final class TCPReassembler {
    public typealias Handler = (_ event: TCPEvent, _ time: UInt64) -> Void

    public let limits: TCPReassemblyLimits
    /// The connection counters (tcpConnections, midstreamConnections, evictedConnections,
    /// gaps, conflictingOverlaps, deliveredBytes).
    public private(set) var statistics = CaptureStatistics()
    private let handler: Handler
    private var connections: [ConnectionKey: ConnectionState] = [:]
    /// Least recently active at the tail.
    private var newest: ConnectionState?
    private var oldest: ConnectionState?
    private var nextIdentifier: UInt64 = 1

    public init(limits: TCPReassemblyLimits = TCPReassemblyLimits(), handler: @escaping Handler) {
        self.limits = limits
        self.handler = handler
    }

    /// Connections being tracked.
    public var connectionCount: Int { connections.count }

    /// Feeds one segment (in capture order).
    public func process(_ segment: TCPSegment) {
        let time = segment.timestamp
        expireIdle(now: time)
        let key = ConnectionKey(segment.source, segment.destination)
        let flags = segment.flags
        var state = connections[key]

        if flags.contains(.syn) && !flags.contains(.ack), let existing = state,
           existing.client == segment.source, existing.clientToServer.isSynchronized,
           existing.clientToServer.offset(of: segment.sequenceNumber &+ 1) != 0 {
            // Not this connection's SYN (whose first data byte is at offset 0): a new one.
            close(existing, reason: .reused, time: time)
            state = nil
        }
        if state == nil {
            guard flags.contains(.syn) || !segment.payload.isEmpty || segment.missingPayloadBytes > 0 else { return }
            state = open(segment, key: key)
        }
        guard let state else { return }
        touch(state, time: time)
        let direction: TCPDirection = segment.source == state.client ? .clientToServer : .serverToClient

        if flags.contains(.rst) {
            close(state, reason: .rst, time: time)
            return
        }
        var dataSequence = segment.sequenceNumber
        if flags.contains(.syn) {
            dataSequence &+= 1
            state.withDirection(direction) { stream in
                if !stream.isSynchronized { stream.synchronize(at: dataSequence, initial: segment.sequenceNumber) }
            }
        }
        if flags.contains(.ack) {
            acknowledge(state, direction: direction.opposite, acknowledgement: segment.acknowledgementNumber, time: time)
        }
        guard connections[key] != nil else { return }
        state.withDirection(direction) { stream in
            if !stream.isSynchronized { stream.synchronize(at: dataSequence, initial: nil) }
        }
        receive(state, direction: direction, sequence: dataSequence, payload: segment.payload,
                missing: segment.missingPayloadBytes, fin: flags.contains(.fin), time: time)
    }

    /// Closes every open connection as `.endOfCapture` (gaps reported first), oldest first.
    public func finish(time: UInt64) {
        while let connection = oldest { close(connection, reason: .endOfCapture, time: time) }
    }

    /// Closes connections idle for longer than the limit at capture time `now`.
    public func expireIdle(now: UInt64) {
        while let connection = oldest, now > connection.lastSeen &+ limits.idleTimeoutNanoseconds {
            close(connection, reason: .idle, time: now)
        }
    }

    // MARK: Connections

    private func open(_ segment: TCPSegment, key: ConnectionKey) -> ConnectionState {
        if connections.count >= limits.maximumConnections, let victim = oldest {
            statistics.evictedConnections += 1
            close(victim, reason: .evicted, time: segment.timestamp)
        }
        let client: TransportEndpoint
        let midstream: Bool
        if segment.flags.contains(.syn) {
            client = segment.flags.contains(.ack) ? segment.destination : segment.source
            midstream = false
        } else {
            midstream = true
            if segment.source.port != segment.destination.port {
                client = segment.source.port > segment.destination.port ? segment.source : segment.destination
            } else {
                client = segment.source
            }
        }
        let server = client == segment.source ? segment.destination : segment.source
        let connection = TCPConnection(id: nextIdentifier, client: client, server: server)
        nextIdentifier += 1
        let state = ConnectionState(key: key, connection: connection, lastSeen: segment.timestamp,
                                    historyLimit: limits.retransmissionCheckBytes)
        connections[key] = state
        statistics.tcpConnections += 1
        if midstream { statistics.midstreamConnections += 1 }
        handler(.opened(connection, midstream: midstream), segment.timestamp)
        return state
    }

    private func touch(_ state: ConnectionState, time: UInt64) {
        state.lastSeen = max(state.lastSeen, time)
        guard newest !== state else { return }
        unlink(state)
        state.older = newest
        newest?.newer = state
        newest = state
        if oldest == nil { oldest = state }
    }

    private func unlink(_ state: ConnectionState) {
        if let newer = state.newer { newer.older = state.older } else if newest === state { newest = state.older }
        if let older = state.older { older.newer = state.newer } else if oldest === state { oldest = state.newer }
        state.newer = nil
        state.older = nil
    }

    private func close(_ state: ConnectionState, reason: TCPCloseReason, time: UInt64) {
        for direction in [TCPDirection.clientToServer, .serverToClient] {
            let missing = state.withDirection(direction) { $0.missingAtEnd() }
            if let missing { reportGap(state, direction, missing: missing, time: time) }
        }
        unlink(state)
        connections[state.key] = nil
        handler(.closed(state.connection, reason: reason), time)
    }

    // MARK: Streams

    /// The peer acknowledged up to `acknowledgement` in `direction`: a hole before it
    /// while later data waits was lost by the capture, not the network.
    private func acknowledge(_ state: ConnectionState, direction: TCPDirection, acknowledgement: UInt32, time: UInt64) {
        let missing: Int? = state.withDirection(direction) { stream in
            guard stream.isSynchronized else {
                stream.synchronize(at: acknowledgement, initial: nil)
                return nil
            }
            guard !stream.isIncomplete, !stream.isFinished else { return nil }
            let acknowledged = stream.offset(of: acknowledgement)
            guard acknowledged > Int64(stream.delivered) else { return nil }
            if !stream.pending.isEmpty { return stream.holeInFront }
            if let finOffset = stream.finOffset, acknowledged > Int64(finOffset) {
                return Int(finOffset - stream.delivered)
            }
            return nil
        }
        if let missing, missing > 0 { reportGap(state, direction, missing: missing, time: time) }
    }

    private func receive(_ state: ConnectionState, direction: TCPDirection, sequence: UInt32,
                         payload: UnsafeRawBufferPointer, missing: Int, fin: Bool, time: UInt64) {
        let connection = state.connection
        var conflict = false
        var gap: Int?
        let handler = self.handler
        var delivered = 0
        state.withDirection(direction) { stream in
            let start = stream.offset(of: sequence)
            if fin && stream.finOffset == nil {
                let end = start + Int64(payload.count + missing)
                if end >= 0 { stream.finOffset = UInt64(end) }
            }
            guard !stream.isIncomplete else {
                if stream.finOffset != nil { stream.isFinished = true }
                return
            }
            if !payload.isEmpty || missing > 0 {
                (conflict, gap, delivered) = stream.accept(
                    start: start, payload: payload, missing: missing,
                    cap: limits.maximumBufferedBytesPerDirection,
                    segmentCap: limits.maximumBufferedSegmentsPerDirection) { bytes in
                        handler(.data(connection, direction, bytes), time)
                    }
            }
            if let finOffset = stream.finOffset, stream.delivered >= finOffset, stream.pending.isEmpty {
                stream.isFinished = true
            }
        }
        statistics.deliveredBytes += delivered
        if conflict {
            statistics.conflictingOverlaps += 1
            handler(.conflictingOverlap(connection, direction), time)
        }
        if let gap { reportGap(state, direction, missing: gap, time: time) }
        if state.clientToServer.isFinished && state.serverToClient.isFinished {
            close(state, reason: .fin, time: time)
        }
    }

    private func reportGap(_ state: ConnectionState, _ direction: TCPDirection, missing: Int, time: UInt64) {
        state.withDirection(direction) { stream in
            stream.isIncomplete = true
            stream.pending = []
            stream.pendingBytes = 0
            if stream.finOffset != nil { stream.isFinished = true }
        }
        statistics.gaps += 1
        handler(.gap(state.connection, direction, missingBytes: missing), time)
    }
}

/// The 4-tuple with its two endpoints in a fixed order, so both directions find one entry.
struct ConnectionKey: Hashable {
    let lower: TransportEndpoint
    let higher: TransportEndpoint

    init(_ first: TransportEndpoint, _ second: TransportEndpoint) {
        if first < second { lower = first; higher = second } else { lower = second; higher = first }
    }
}

/// One tracked connection: both directions' streams and its place in the activity list.
final class ConnectionState {
    let key: ConnectionKey
    let connection: TCPConnection
    var client: TransportEndpoint { connection.client }
    var lastSeen: UInt64
    var clientToServer: StreamState
    var serverToClient: StreamState
    var newer: ConnectionState?
    var older: ConnectionState?

    init(key: ConnectionKey, connection: TCPConnection, lastSeen: UInt64, historyLimit: Int) {
        self.key = key
        self.connection = connection
        self.lastSeen = lastSeen
        clientToServer = StreamState(historyLimit: historyLimit)
        serverToClient = StreamState(historyLimit: historyLimit)
    }

    func withDirection<Result>(_ direction: TCPDirection, _ body: (inout StreamState) -> Result) -> Result {
        direction == .clientToServer ? body(&clientToServer) : body(&serverToClient)
    }
}

/// Out-of-order bytes waiting for the hole in front of them, or (empty `bytes`,
/// `missingAfter` > 0) the point where a snaplen-cut segment's missing bytes begin.
struct PendingSegment {
    var start: UInt64
    var bytes: [UInt8]
    var missingAfter: Int = 0
    var end: UInt64 { start + UInt64(bytes.count) }
}

/// One direction of a connection: where delivery stands, what waits, what was delivered
/// last (for retransmission checks). Offsets count bytes from the first byte of the
/// direction seen, 64-bit so sequence numbers may wrap.
struct StreamState {
    var isSynchronized = false
    var initialSequence: UInt32?
    /// The sequence number of the next byte to deliver.
    var nextSequence: UInt32 = 0
    /// The offset of the next byte to deliver.
    var delivered: UInt64 = 0
    var isIncomplete = false
    var isFinished = false
    var finOffset: UInt64?
    /// Sorted by start; data ranges never overlap each other.
    var pending: [PendingSegment] = []
    var pendingBytes = 0
    /// The last delivered bytes, ending at `delivered`.
    var history: [UInt8] = []
    let historyLimit: Int

    init(historyLimit: Int) { self.historyLimit = historyLimit }

    mutating func synchronize(at sequence: UInt32, initial: UInt32?) {
        isSynchronized = true
        nextSequence = sequence
        initialSequence = initial
    }

    /// The offset of `sequence`: within 2 GiB either side of the next byte (RFC 9293's
    /// modular comparison), so wraparound needs no special case.
    func offset(of sequence: UInt32) -> Int64 {
        Int64(delivered) + Int64(Int32(bitPattern: sequence &- nextSequence))
    }

    /// The bytes missing between the next one to deliver and the first waiting segment
    /// (at least 1: waiting data always starts past the next byte).
    var holeInFront: Int {
        guard let first = pending.first, first.start > delivered else { return 1 }
        return Int(first.start - delivered)
    }

    /// What a close must report as missing: the hole in front of waiting data, or before
    /// a FIN not yet reached.
    func missingAtEnd() -> Int? {
        guard isSynchronized, !isIncomplete, !isFinished else { return nil }
        if !pending.isEmpty { return holeInFront }
        if let finOffset, finOffset > delivered { return Int(finOffset - delivered) }
        return nil
    }

    /// Takes a segment's bytes at `start`: delivers what is in order (through `deliver`),
    /// holds what is ahead, compares what overlaps. Returns whether bytes conflicted, the
    /// size of a gap found (the caller reports it), and how many bytes were delivered.
    mutating func accept(start: Int64, payload: UnsafeRawBufferPointer, missing: Int, cap: Int, segmentCap: Int,
                         deliver: (UnsafeRawBufferPointer) -> Void) -> (conflict: Bool, gap: Int?, delivered: Int) {
        var conflict = false
        var deliveredCount = 0
        let end = start + Int64(payload.count)
        // Bytes before the next one to deliver: a retransmission, checked against history.
        var skip = 0
        if start < Int64(delivered) {
            let overlapEnd = min(end, Int64(delivered))
            let historyStart = Int64(delivered) - Int64(history.count)
            let checkFrom = max(start, historyStart)
            if checkFrom < overlapEnd {
                let payloadFrom = Int(checkFrom - start), historyFrom = Int(checkFrom - historyStart)
                let count = Int(overlapEnd - checkFrom)
                if !history[historyFrom..<(historyFrom + count)].elementsEqual(payload[payloadFrom..<(payloadFrom + count)]) {
                    conflict = true
                }
            }
            skip = Int(overlapEnd - start)
        }
        let fresh = payload.slice(skip, payload.count)
        let freshStart = UInt64(max(start, Int64(delivered)))
        if fresh.isEmpty && missing == 0 { return (conflict, nil, 0) }

        if freshStart == delivered {
            if !fresh.isEmpty {
                // Waiting copies of these bytes lose to this one only if they came later;
                // they came first, so compare and keep theirs where they overlap.
                if pending.first.map({ $0.start < freshStart + UInt64(fresh.count) }) ?? false {
                    conflict = insert(start: freshStart, fresh) || conflict
                } else {
                    emit(fresh, deliver: deliver)
                    deliveredCount += fresh.count
                }
            }
            if missing > 0 {
                insertMarker(at: freshStart + UInt64(fresh.count), missing: missing)
            }
        } else {
            if !fresh.isEmpty { conflict = insert(start: freshStart, fresh) || conflict }
            if missing > 0 { insertMarker(at: freshStart + UInt64(fresh.count), missing: missing) }
        }
        let (drained, gap) = drain(deliver: deliver)
        deliveredCount += drained
        if gap == nil, pendingBytes > cap || pending.count > segmentCap, !pending.isEmpty {
            return (conflict, holeInFront, deliveredCount)
        }
        return (conflict, gap, deliveredCount)
    }

    private mutating func emit(_ bytes: UnsafeRawBufferPointer, deliver: (UnsafeRawBufferPointer) -> Void) {
        deliver(bytes)
        delivered += UInt64(bytes.count)
        nextSequence &+= UInt32(truncatingIfNeeded: bytes.count)
        guard historyLimit > 0 else { return }
        history.append(contentsOf: bytes.count > historyLimit ? bytes.slice(bytes.count - historyLimit, bytes.count) : bytes)
        if history.count > 2 * historyLimit { history.removeFirst(history.count - historyLimit) }
    }

    /// Delivers waiting segments that now start at the next byte. Returns the bytes
    /// delivered and a gap when a snaplen marker is reached with nothing to fill it.
    private mutating func drain(deliver: (UnsafeRawBufferPointer) -> Void) -> (Int, Int?) {
        var count = 0
        while let first = pending.first, first.start <= delivered {
            pending.removeFirst()
            pendingBytes -= first.bytes.count
            if first.bytes.isEmpty {
                // A snaplen marker: a gap unless other data continues from here.
                if first.start == delivered, !(pending.first.map { $0.start == delivered && !$0.bytes.isEmpty } ?? false) {
                    return (count, first.missingAfter)
                }
                continue
            }
            if first.end <= delivered { continue }
            first.bytes.withUnsafeBytes { bytes in
                let tail = bytes.slice(Int(delivered - first.start), bytes.count)
                count += tail.count
                emit(tail, deliver: deliver)
            }
        }
        return (count, nil)
    }

    /// Holds `bytes` at `start`; where waiting data already covers a range, the first copy
    /// wins and a difference is returned as a conflict.
    private mutating func insert(start: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        let end = start + UInt64(bytes.count)
        var conflict = false
        var cursor = start
        var pieces: [PendingSegment] = []
        for existing in pending where !existing.bytes.isEmpty {
            if existing.end <= cursor { continue }
            if existing.start >= end { break }
            if existing.start > cursor {
                pieces.append(PendingSegment(start: cursor, bytes: Array(bytes.slice(Int(cursor - start), Int(existing.start - start)))))
                cursor = existing.start
            }
            let overlapEnd = min(existing.end, end)
            let mine = bytes.slice(Int(cursor - start), Int(overlapEnd - start))
            let theirs = existing.bytes[Int(cursor - existing.start)..<Int(overlapEnd - existing.start)]
            if !theirs.elementsEqual(mine) { conflict = true }
            cursor = overlapEnd
            if cursor >= end { break }
        }
        if cursor < end {
            pieces.append(PendingSegment(start: cursor, bytes: Array(bytes.slice(Int(cursor - start), bytes.count))))
        }
        for piece in pieces { insertSorted(piece) }
        return conflict
    }

    private mutating func insertMarker(at offset: UInt64, missing: Int) {
        insertSorted(PendingSegment(start: offset, bytes: [], missingAfter: missing))
    }

    private mutating func insertSorted(_ segment: PendingSegment) {
        pendingBytes += segment.bytes.count
        // Data before a marker at the same offset, so the marker is only reached when nothing fills it.
        let index = pending.firstIndex { $0.start > segment.start || ($0.start == segment.start && segment.bytes.isEmpty == false && $0.bytes.isEmpty) } ?? pending.endIndex
        pending.insert(segment, at: index)
    }
}
