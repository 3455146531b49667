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
        /// The topics named in the piece (names, or IDs for v13+), in order, as indices for
        /// `topicName(_:)`, `withTopicName(_:_:)` and `topicID(_:)`.
        public var topics: Range<Int>
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

    /// A topic read so far: its name's bytes in `text` (v0-12) or its ID (v13+), and where
    /// its partitions start in `partitions` (they end where the next topic's start).
    private struct Topic: Sendable {
        var name: Range<Int>?
        var id: KafkaUUID?
        var firstPartition: Int
    }

    public private(set) var version: Int16
    public private(set) var flexible: Bool
    /// Bytes of the frame (after its size) not yet read.
    public private(set) var frameRemaining: Int
    public private(set) var acks: Int16 = 0
    private var phase = Phase.header
    private var topicsLeft = 0
    private var partitionsLeft = 0
    // Every topic and partition read so far (for an answer in the broker's place), in
    // storage that `reset` keeps: a producer's next request costs no allocation.
    private var text: [UInt8] = []
    private var transactionalIDBytes: Range<Int>?
    private var topicEntries: [Topic] = []
    private var partitions: [Int32] = []

    /// A request frame of `frameLength` bytes (after its size) of Produce `version`.
    public init(version: Int16, frameLength: Int) {
        self.version = version
        flexible = KafkaMessages.ProduceRequest.schema.isFlexible(version)
        frameRemaining = frameLength
    }

    /// Starts on the next request, keeping the storage of the last.
    public mutating func reset(version: Int16, frameLength: Int) {
        if version != self.version {
            self.version = version
            flexible = KafkaMessages.ProduceRequest.schema.isFlexible(version)
        }
        frameRemaining = frameLength
        acks = 0
        phase = .header
        topicsLeft = 0
        partitionsLeft = 0
        text.removeAll(keepingCapacity: true)
        transactionalIDBytes = nil
        topicEntries.removeAll(keepingCapacity: true)
        partitions.removeAll(keepingCapacity: true)
    }

    public var isDone: Bool { if case .done = phase { return true }; return false }

    /// Topics read so far.
    public var topicCount: Int { topicEntries.count }

    /// The name of topic `index` (nil for a topic named by ID).
    public func topicName(_ index: Int) -> String? {
        topicEntries[index].name.map { String(decoding: text[$0], as: UTF8.self) }
    }

    /// The bytes of topic `index`'s name (valid UTF-8; nil for a topic named by ID), in the
    /// stream's storage: a caller that keeps them copies them (else the next `reset` must).
    public func topicNameBytes(_ index: Int) -> ArraySlice<UInt8>? {
        topicEntries[index].name.map { text[$0] }
    }

    /// The ID of topic `index` (nil for a topic named by name).
    public func topicID(_ index: Int) -> KafkaUUID? { topicEntries[index].id }

    /// The partitions of topic `index` read so far.
    public func topicPartitions(_ index: Int) -> ArraySlice<Int32> {
        let end = index + 1 < topicEntries.count ? topicEntries[index + 1].firstPartition : partitions.count
        return partitions[topicEntries[index].firstPartition..<end]
    }

    public var transactionalID: String? {
        transactionalIDBytes.map { range in text.withUnsafeBytes { String(decoding: $0[range], as: UTF8.self) } }
    }

    /// Reads the next piece at the front of `bytes` (the size prefix included for the first).
    public mutating func next(_ bytes: UnsafeRawBufferPointer) -> Step {
        // A piece is read whole or not at all: what a failed read changed is put back.
        let saved = (phase, topicsLeft, partitionsLeft, frameRemaining, acks, transactionalIDBytes,
                     text.count, topicEntries.count, partitions.count)
        let available = min(bytes.count, (phase == .header ? 4 : 0) + frameRemaining)
        var reader = KafkaReader(bytes, from: 0, to: available)
        do {
            return .piece(try read(&reader))
        } catch {
            (phase, topicsLeft, partitionsLeft, frameRemaining, acks, transactionalIDBytes) =
                (saved.0, saved.1, saved.2, saved.3, saved.4, saved.5)
            text.removeLast(text.count - saved.6)
            topicEntries.removeLast(topicEntries.count - saved.7)
            partitions.removeLast(partitions.count - saved.8)
            // Ran out of bytes: more are needed if the frame has them, else the frame lies.
            if available < (phase == .header ? 4 : 0) + frameRemaining && bytes.count == available {
                return .needMore(minimumBytes: 1)
            }
            return .malformed("ProduceRequest v\(version): \(error.reason)")
        }
    }

    /// Keeps a string's bytes in `text` once they are known to be UTF-8.
    private mutating func keepText(_ bytes: UnsafeRawBufferPointer, what: String) throws(KafkaCodecError) -> Range<Int> {
        // Topic names are ASCII (Kafka allows [a-zA-Z0-9._-]); anything else is checked whole.
        if bytes.contains(where: { $0 >= 0x80 }) && String(validating: bytes, as: UTF8.self) == nil {
            throw KafkaCodecError("\(what) not UTF-8")
        }
        let start = text.count
        text.append(contentsOf: bytes)
        return start..<text.count
    }

    private mutating func read(_ reader: inout KafkaReader) throws(KafkaCodecError) -> Piece {
        let start = reader.offset
        let firstTopic = topicEntries.count
        func finish(_ records: Int, last: Bool, _ reader: KafkaReader) throws(KafkaCodecError) -> Piece {
            frameRemaining -= reader.offset - start + records
            // Records pass before what follows them is read: they must leave room for it, or
            // the broker would get a whole request that ends inside its structure.
            guard frameRemaining >= (last ? 0 : minimumRest()) else {
                throw KafkaCodecError("records of \(records) bytes leave no room for the rest of the request")
            }
            return Piece(structureBytes: reader.offset, recordBytes: records, topics: firstTopic..<topicEntries.count,
                         isLast: last)
        }
        while true {
            switch phase {
            case .header:
                // The first piece starts with the size prefix, which the frame length does not count.
                frameRemaining += 4
                let flexible = flexible
                let header = try KafkaFraming.requestHeader(reader.bytes, frameEnd: reader.end) { _, _ in flexible ? 2 : 1 }
                reader = KafkaReader(reader.bytes, from: header.bodyOffset, to: reader.end)
                if version >= 3 {
                    let length = try reader.length(compact: flexible, wide: false)
                    if length >= 0 {
                        transactionalIDBytes = try keepText(try reader.take(length), what: "transactional ID")
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
                var topic = Topic(firstPartition: partitions.count)
                if version >= 13 {
                    topic.id = KafkaUUID(high: try reader.bigEndian(8), low: try reader.bigEndian(8))
                } else {
                    let length = try reader.length(compact: flexible, wide: false)
                    guard length >= 0 else { throw KafkaCodecError("null topic name") }
                    topic.name = try keepText(try reader.take(length), what: "topic name")
                }
                partitionsLeft = try count(&reader)
                topicEntries.append(topic)
                phase = .partition
            case .partition:
                guard partitionsLeft > 0 else {
                    if flexible { try KafkaFraming.skipTaggedFields(&reader) }
                    topicsLeft -= 1
                    phase = .topic
                    continue
                }
                partitions.append(try reader.int32())
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

    /// The fewest bytes the request's structure takes after the records of the current
    /// partition: its tagged fields, the partitions and topics still to come (each at its
    /// smallest: no records, no tags), the topic's and the request's tagged fields.
    private func minimumRest() -> Int {
        let tags = flexible ? 1 : 0
        let count = flexible ? 1 : 4
        let partition = 4 + (flexible ? 1 : 4) + tags
        let topic = (version >= 13 ? 16 : (flexible ? 1 : 2)) + count + tags
        return tags + (partitionsLeft - 1) * partition + tags + (topicsLeft - 1) * topic + tags
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
        let topicValues: [KafkaValue] = topicEntries.indices.map { index in
            let partitions: [KafkaValue] = topicPartitions(index).map {
                .structure(KafkaStruct(values: [.int(Int64($0)), .bytes(nil)]))
            }
            return .structure(KafkaStruct(values: [topicName(index).map { .string($0) } ?? .absent,
                                                   topicID(index).map { .uuid($0) } ?? .absent, .array(partitions)]))
        }
        return KafkaStruct(values: [.string(transactionalID), .int(Int64(acks)), .int(0), .array(topicValues)])
    }
}
