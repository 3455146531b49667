/// Replay events with their bytes copied out of the reader's buffers, so that a thread other
/// than the one reading the capture can consume them (`sluice replay` reads and reassembles
/// on one thread and judges on another).
///
/// A batch is filled by `append` and emptied by `removeAll`, keeping its storage, so that a
/// pair of threads can pass a few batches back and forth without allocating. `forEach`
/// hands the events back in the order they were appended, with payloads pointing into the
/// batch: valid only during that call, as `ReplayEvent` promises.
public struct ReplayEventBatch: Sendable {
    private enum Stored: Sendable {
        case opened(TCPConnection, midstream: Bool, time: UInt64)
        case data(TCPConnection, TCPDirection, Range<Int>, time: UInt64)
        case gap(TCPConnection, TCPDirection, missingBytes: Int, time: UInt64)
        case conflictingOverlap(TCPConnection, TCPDirection, time: UInt64)
        case closed(TCPConnection, reason: TCPCloseReason, time: UInt64)
        case datagram(source: TransportEndpoint, destination: TransportEndpoint, payload: Range<Int>,
                      missingPayloadBytes: Int, time: UInt64)
    }

    private var bytes: [UInt8] = []
    private var events: [Stored] = []
    /// Past this many payload bytes (or `eventCapacity` events), `isFull` says to hand it on.
    public let byteCapacity: Int
    public let eventCapacity: Int

    public init(byteCapacity: Int = 256 << 10, eventCapacity: Int = 4096) {
        self.byteCapacity = byteCapacity
        self.eventCapacity = eventCapacity
        bytes.reserveCapacity(byteCapacity)
        events.reserveCapacity(eventCapacity)
    }

    public var isEmpty: Bool { events.isEmpty }
    public var isFull: Bool { bytes.count >= byteCapacity || events.count >= eventCapacity }
    public var count: Int { events.count }

    /// Copies `event`, its payload included.
    public mutating func append(_ event: ReplayEvent) {
        switch event {
        case .tcp(let tcp, let time):
            switch tcp {
            case .opened(let connection, let midstream):
                events.append(.opened(connection, midstream: midstream, time: time))
            case .data(let connection, let direction, let payload):
                events.append(.data(connection, direction, copy(payload), time: time))
            case .gap(let connection, let direction, let missing):
                events.append(.gap(connection, direction, missingBytes: missing, time: time))
            case .conflictingOverlap(let connection, let direction):
                events.append(.conflictingOverlap(connection, direction, time: time))
            case .closed(let connection, let reason):
                events.append(.closed(connection, reason: reason, time: time))
            }
        case .datagram(let source, let destination, let payload, let missing, let time):
            events.append(.datagram(source: source, destination: destination, payload: copy(payload),
                                    missingPayloadBytes: missing, time: time))
        }
    }

    private mutating func copy(_ payload: UnsafeRawBufferPointer) -> Range<Int> {
        let start = bytes.count
        bytes.append(contentsOf: payload)
        return start..<bytes.count
    }

    /// The events, in order, as the reader delivered them.
    public func forEach(_ body: (ReplayEvent) -> Void) {
        bytes.withUnsafeBytes { all in
            for event in events {
                switch event {
                case .opened(let connection, let midstream, let time):
                    body(.tcp(.opened(connection, midstream: midstream), time: time))
                case .data(let connection, let direction, let range, let time):
                    body(.tcp(.data(connection, direction, UnsafeRawBufferPointer(rebasing: all[range])), time: time))
                case .gap(let connection, let direction, let missing, let time):
                    body(.tcp(.gap(connection, direction, missingBytes: missing), time: time))
                case .conflictingOverlap(let connection, let direction, let time):
                    body(.tcp(.conflictingOverlap(connection, direction), time: time))
                case .closed(let connection, let reason, let time):
                    body(.tcp(.closed(connection, reason: reason), time: time))
                case .datagram(let source, let destination, let range, let missing, let time):
                    body(.datagram(source: source, destination: destination,
                                   payload: UnsafeRawBufferPointer(rebasing: all[range]), missingPayloadBytes: missing,
                                   time: time))
                }
            }
        }
    }

    /// Empties the batch, keeping its storage for the next events.
    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        events.removeAll(keepingCapacity: true)
    }
}
