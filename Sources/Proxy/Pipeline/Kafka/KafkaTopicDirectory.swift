import L7Parsers
import Synchronization

/// Topic names by topic ID (KIP-516), learned from the Metadata responses Sluice relays: a
/// request that names topics by ID (Fetch v13+, Produce v13+, ...) is judged by those names.
/// An ID not learned here is unknown, and a request naming it is denied (fail closed).
///
/// Shared by every Kafka connection of the process (a client learns IDs on one connection,
/// usually to its bootstrap broker, and uses them on another, to the partition's leader).
/// Bounded: past `maximumEntries` it forgets everything and learns again.
public final class KafkaTopicDirectory: Sendable {
    private let names = Mutex<[KafkaUUID: String]>([:])
    public let maximumEntries: Int

    public init(maximumEntries: Int = 65_536) {
        self.maximumEntries = maximumEntries
    }

    public func learn(_ pairs: [(id: KafkaUUID, name: String)]) {
        guard !pairs.isEmpty else { return }
        names.withLock { names in
            if names.count + pairs.count > maximumEntries { names.removeAll(keepingCapacity: true) }
            for pair in pairs { names[pair.id] = pair.name }
        }
    }

    public func name(of id: KafkaUUID) -> String? {
        names.withLock { $0[id] }
    }
}
