/// A ProduceRequest read as it streams (ProduceRequest.json), so that its record data never
/// has to be held: the structure around the records (header, transactional ID, acks, each
/// topic's name or ID, each partition's index and records length, tagged fields) is read a
/// piece at a time, and each piece ends where a partition's record bytes begin. The caller
/// judges the topics a piece named and then passes (or drops) the piece and the record
/// bytes after it, which it need not have received yet.
///
/// A piece is read whole or not at all: `next` on bytes that end inside one says how many
/// more it needs at least, and changes nothing.
public struct KafkaProduceStream: Sendable {
    /// One piece of structure and the record bytes that follow it.
    public struct Piece: Sendable, Equatable {
        /// Bytes of structure at the front of what `next` was given.
        public var structureBytes: Int
        /// Record bytes right after them (0 when the piece ends the request).
        public var recordBytes: Int
        /// Topics named in the piece (names, or IDs for v13+), in order.
        public var topics: [KafkaProduceTopic]
        /// The piece is the request's last: nothing of it follows.
        public var isLast: Bool
    }

    public enum Step: Sendable, Equatable {
        case needMore(minimumBytes: Int)
        case piece(Piece)
        case malformed(String)
    }

    private enum Phase: Sendable {
        case header, topic, partition, partitionTags, requestTags, done
    }

    public let version: Int16
    public let flexible: Bool
    /// Bytes of the frame (after its size) not yet read.
    public private(set) var frameRemaining: Int
    public private(set) var acks: Int16 = 0
    public private(set) var transactionalID: String?
    /// Every topic and partition read so far (for an answer in the broker's place).
    public private(set) var topics: [KafkaProduceTopic] = []
    private var phase = Phase.header
    private var topicsLeft = 0
    private var partitionsLeft = 0

    /// A request frame of `frameLength` bytes (after its size) of Produce `version`.
    public init(version: Int16, frameLength: Int) {
        self.version = version
        flexible = KafkaMessages.ProduceRequest.schema.isFlexible(version)
        frameRemaining = frameLength
    }

    public var isDone: Bool { if case .done = phase { return true }; return false }

    /// Reads the next piece at the front of `bytes` (the size prefix included for the first).
    public mutating func next(_ bytes: UnsafeRawBufferPointer) -> Step {
        var copy = self
        let available = min(bytes.count, (phase == .header ? 4 : 0) + frameRemaining)
        var reader = KafkaReader(bytes, from: 0, to: available)
        do {
            let piece = try copy.read(&reader)
            self = copy
            return .piece(piece)
        } catch {
            // Ran out of bytes: more are needed if the frame has them, else the frame lies.
            if available < (phase == .header ? 4 : 0) + frameRemaining && bytes.count == available {
                return .needMore(minimumBytes: 1)
            }
            return .malformed("ProduceRequest v\(version): \(error.reason)")
        }
    }

    private mutating func read(_ reader: inout KafkaReader) throws(KafkaCodecError) -> Piece {
        var named: [KafkaProduceTopic] = []
        let start = reader.offset
        func finish(_ records: Int, last: Bool, _ reader: KafkaReader) throws(KafkaCodecError) -> Piece {
            frameRemaining -= reader.offset - start + records
            guard frameRemaining >= 0 else { throw KafkaCodecError("records of \(records) bytes past the end of the frame") }
            return Piece(structureBytes: reader.offset, recordBytes: records, topics: named, isLast: last)
        }
        while true {
            switch phase {
            case .header:
                // The first piece starts with the size prefix, which the frame length does not count.
                frameRemaining += 4
                let header = try KafkaFraming.requestHeader(reader.bytes, frameEnd: reader.end) { _, _ in flexible ? 2 : 1 }
                reader = KafkaReader(reader.bytes, from: header.bodyOffset, to: reader.end)
                if version >= 3 {
                    let length = try reader.length(compact: flexible, wide: false)
                    if length >= 0 {
                        guard let text = String(validating: try reader.take(length), as: UTF8.self) else {
                            throw KafkaCodecError("transactional ID not UTF-8")
                        }
                        transactionalID = text
                    }
                }
                acks = try reader.int16()
                _ = try reader.int32()
                topicsLeft = try count(&reader)
                phase = .topic
            case .topic:
                guard topicsLeft > 0 else {
                    phase = .requestTags
                    continue
                }
                var topic = KafkaProduceTopic()
                if version >= 13 {
                    topic.id = KafkaUUID(high: try reader.bigEndian(8), low: try reader.bigEndian(8))
                } else {
                    let length = try reader.length(compact: flexible, wide: false)
                    guard length >= 0 else { throw KafkaCodecError("null topic name") }
                    guard let name = String(validating: try reader.take(length), as: UTF8.self) else {
                        throw KafkaCodecError("topic name not UTF-8")
                    }
                    topic.name = name
                }
                partitionsLeft = try count(&reader)
                topics.append(topic)
                named.append(topic)
                phase = .partition
            case .partition:
                guard partitionsLeft > 0 else {
                    if flexible { try KafkaFraming.skipTaggedFields(&reader) }
                    topicsLeft -= 1
                    phase = .topic
                    continue
                }
                let index = try reader.int32()
                topics[topics.count - 1].partitions.append(index)
                let length = try reader.length(compact: flexible, wide: true)
                phase = .partitionTags
                if length > 0 { return try finish(length, last: false, reader) }
            case .partitionTags:
                if flexible { try KafkaFraming.skipTaggedFields(&reader) }
                partitionsLeft -= 1
                phase = .partition
            case .requestTags:
                if flexible { try KafkaFraming.skipTaggedFields(&reader) }
                phase = .done
                let piece = try finish(0, last: true, reader)
                guard frameRemaining == 0 else {
                    throw KafkaCodecError("\(frameRemaining) bytes after the request")
                }
                return piece
            case .done:
                throw KafkaCodecError("read past the end")
            }
        }
    }

    private func count(_ reader: inout KafkaReader) throws(KafkaCodecError) -> Int {
        let count = try reader.length(compact: flexible, wide: true)
        guard count >= 0 else { throw KafkaCodecError("null array") }
        guard count <= frameRemaining else { throw KafkaCodecError("\(count) elements in a frame of \(frameRemaining) bytes") }
        return count
    }

    /// The request as the codec's tree (topics and partitions, no records): what an answer
    /// in the broker's place is shaped from.
    public func skeleton() -> KafkaStruct {
        let topicValues: [KafkaValue] = topics.map { topic in
            let partitions: [KafkaValue] = topic.partitions.map {
                .structure(KafkaStruct(values: [.int(Int64($0)), .bytes(nil)]))
            }
            return .structure(KafkaStruct(values: [topic.name.map { .string($0) } ?? .absent,
                                                   topic.id.map { .uuid($0) } ?? .absent, .array(partitions)]))
        }
        return KafkaStruct(values: [.string(transactionalID), .int(Int64(acks)), .int(0), .array(topicValues)])
    }
}

/// One topic of a produce request: its name (v0-12) or ID (v13+), and its partitions.
public struct KafkaProduceTopic: Sendable, Equatable {
    public var name: String?
    public var id: KafkaUUID?
    public var partitions: [Int32] = []

    public init(name: String? = nil, id: KafkaUUID? = nil) {
        self.name = name
        self.id = id
    }
}
