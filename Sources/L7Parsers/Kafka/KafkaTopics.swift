/// What a decoded message says about topics, found by the schemas' own annotations: a field
/// whose `entityType` is `topicName` (a string or an array of strings) names a topic, and a
/// `uuid` field called `TopicId` identifies one (KIP-516).

/// The topics one request names.
public struct KafkaTopicReferences: Sendable, Equatable {
    /// Topic names, in the order they appear (repeats kept once).
    public var names: [String] = []
    /// Topic IDs (Fetch v13+, Produce v13+, Metadata v10+, ...), non-zero ones only.
    public var ids: [KafkaUUID] = []

    public init(names: [String] = [], ids: [KafkaUUID] = []) {
        self.names = names
        self.ids = ids
    }

    public var isEmpty: Bool { names.isEmpty && ids.isEmpty }

    mutating func add(name: String) { if !names.contains(name) { names.append(name) } }
    mutating func add(id: KafkaUUID) { if !id.isZero, !ids.contains(id) { ids.append(id) } }
}

public enum KafkaTopics {
    /// Every topic `message` (decoded with `schema`) names.
    public static func referenced(in message: KafkaStruct, schema: KafkaStructSchema) -> KafkaTopicReferences {
        var references = KafkaTopicReferences()
        collect(message, schema, into: &references)
        return references
    }

    private static func collect(_ value: KafkaStruct, _ schema: KafkaStructSchema, into references: inout KafkaTopicReferences) {
        for (index, field) in schema.fields.enumerated() where index < value.values.count {
            let item = value.values[index]
            if field.entity == "topicName" {
                switch item {
                case .string(let name?): references.add(name: name)
                case .array(let names?):
                    for case .string(let name?) in names { references.add(name: name) }
                default: break
                }
                continue
            }
            if field.name == "TopicId", case .uuid(let id) = item {
                references.add(id: id)
                continue
            }
            switch (field.type, item) {
            case (.array(.structure(let inner)), .array(let elements?)):
                for case .structure(let element?) in elements { collect(element, inner, into: &references) }
            case (.structure(let inner), .structure(let element?)):
                collect(element, inner, into: &references)
            default:
                break
            }
        }
    }

    /// The (ID, name) pairs a Metadata response teaches (MetadataResponse v10+: each topic's
    /// `Name` and `TopicId`), zero IDs and null names left out.
    public static func learned(fromMetadataResponse message: KafkaStruct) -> [(id: KafkaUUID, name: String)] {
        let root = KafkaMessages.MetadataResponse.schema.root
        guard let topicsIndex = root.index(of: "Topics"), case .array(.structure(let topicSchema)) = root.fields[topicsIndex].type,
              let nameIndex = topicSchema.index(of: "Name"), let idIndex = topicSchema.index(of: "TopicId"),
              case .array(let topics?) = message.values[topicsIndex] else { return [] }
        var pairs: [(id: KafkaUUID, name: String)] = []
        for case .structure(let topic?) in topics {
            guard case .string(let name?) = topic.values[nameIndex], case .uuid(let id) = topic.values[idIndex], !id.isZero else { continue }
            pairs.append((id, name))
        }
        return pairs
    }

    /// The first non-zero `ErrorCode` anywhere in a decoded response (depth first), else 0:
    /// what a flow record reports as the response's `error_code`.
    public static func firstErrorCode(in message: KafkaStruct, schema: KafkaStructSchema) -> Int16 {
        for (index, field) in schema.fields.enumerated() where index < message.values.count {
            if field.name == "ErrorCode", case .int(let code) = message.values[index], code != 0 { return Int16(truncatingIfNeeded: code) }
        }
        for (index, field) in schema.fields.enumerated() where index < message.values.count {
            switch (field.type, message.values[index]) {
            case (.array(.structure(let inner)), .array(let elements?)):
                for case .structure(let element?) in elements {
                    let code = firstErrorCode(in: element, schema: inner)
                    if code != 0 { return code }
                }
            case (.structure(let inner), .structure(let element?)):
                let code = firstErrorCode(in: element, schema: inner)
                if code != 0 { return code }
            default:
                break
            }
        }
        return 0
    }
}
