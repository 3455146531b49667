/// Responses Sluice gives in the broker's place, shaped from the request they answer.
///
/// A denied request is answered with a response of its own API and version (what Kafka's
/// brokers do in `getErrorResponse`): every topic and partition the request named is listed
/// again with the error code (29, TOPIC_AUTHORIZATION_FAILED), and an API whose response has
/// no per-topic errors carries the error in its top-level `ErrorCode`. The shape comes from
/// the schemas, not from per-API code: a response array is filled from the request array of
/// the same kind (topics from topics, by name or ID; partitions from partitions, from
/// structures or from a list of indexes; any other array from the request array of the same
/// name), copying the topic name, topic ID, partition index and same-named scalar fields;
/// every other field takes its schema default.
public enum KafkaErrorResponses {
    /// TOPIC_AUTHORIZATION_FAILED.
    public static let topicAuthorizationFailed: Int16 = 29
    /// GROUP_AUTHORIZATION_FAILED.
    public static let groupAuthorizationFailed: Int16 = 30
    /// CLUSTER_AUTHORIZATION_FAILED.
    public static let clusterAuthorizationFailed: Int16 = 31
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
    public static let transactionalIDAuthorizationFailed: Int16 = 53

    /// The authorization error an API's top-level `ErrorCode` carries when it names no topics.
    public static func topLevelAuthorizationError(apiKey: Int16) -> Int16 {
        switch apiKey {
        case 10, 11, 12, 13, 14, 15, 16, 42, 47: return groupAuthorizationFailed
        case 22, 25, 26, 65, 66: return transactionalIDAuthorizationFailed
        default: return KafkaMessages.apis[apiKey]?.namesTopics == true ? topicAuthorizationFailed : clusterAuthorizationFailed
        }
    }

    /// The body of a response to `request` (decoded as `api.request` at `version`) with
    /// `errorCode` in every topic and partition, or the API's top-level authorization error.
    public static func deniedBody(api: KafkaAPI, version: Int16, request: KafkaStruct,
                                  errorCode: Int16 = topicAuthorizationFailed) -> [UInt8] {
        var builder = Builder(version: version, errorCode: errorCode,
                              topLevelCode: topLevelAuthorizationError(apiKey: api.request.apiKey))
        let response = builder.mirror(api.response.root, from: .structure(request, api.request.root), depth: 0)
        var writer = KafkaWriter(capacity: 128)
        KafkaCodec.encode(response, api.response, version: version, into: &writer)
        return writer.bytes
    }

    /// A whole response frame (size and header included) answering a denied request.
    public static func deniedFrame(api: KafkaAPI, version: Int16, correlationID: Int32, request: KafkaStruct,
                                   errorCode: Int16 = topicAuthorizationFailed) -> [UInt8] {
        KafkaFraming.responseFrame(correlationID: correlationID, headerVersion: api.responseHeaderVersion(version),
                                   body: deniedBody(api: api, version: version, request: request, errorCode: errorCode))
    }

    /// A Metadata request (decoded, `version`) keeping only the topics `keep` allows, for the
    /// broker; nil when its topic list cannot be narrowed (v0, where an empty list means every
    /// topic, would widen to all).
    public static func narrowedMetadataRequest(_ request: KafkaStruct, version: Int16,
                                               keep: (String) -> Bool) -> KafkaStruct? {
        let root = KafkaMessages.MetadataRequest.schema.root
        guard version >= 1, let topicsIndex = root.index(of: "Topics"),
              case .array(.structure(let topicSchema)) = root.fields[topicsIndex].type,
              let nameIndex = topicSchema.index(of: "Name"),
              case .array(let topics?) = request.values[topicsIndex] else { return nil }
        var narrowed = request
        narrowed.values[topicsIndex] = .array(topics.filter { topic in
            guard case .structure(let element?) = topic, case .string(let name?) = element.values[nameIndex] else { return true }
            return keep(name)
        })
        return narrowed
    }

    /// A Metadata response (decoded, `version`) with an entry for each of `denied` added, error
    /// 29 and no partitions: what a broker answers for topics the client may not see.
    public static func metadataResponse(_ response: KafkaStruct, version: Int16, adding denied: [String]) -> KafkaStruct {
        let root = KafkaMessages.MetadataResponse.schema.root
        guard let topicsIndex = root.index(of: "Topics"), case .array(.structure(let topicSchema)) = root.fields[topicsIndex].type,
              case .array(let topics?) = response.values[topicsIndex] else { return response }
        var builder = Builder(version: version, errorCode: topicAuthorizationFailed, topLevelCode: topicAuthorizationFailed)
        var widened = response
        widened.values[topicsIndex] = .array(topics + denied.map { .structure(builder.mirror(topicSchema, from: .topicName($0), depth: 1)) })
        return widened
    }

    /// Where a response element's values come from.
    enum Source {
        case structure(KafkaStruct, KafkaStructSchema)
        case topicName(String)
        case partition(Int64)
    }

    static let partitionFieldNames: Set<String> = ["PartitionIndex", "Partition", "Index", "PartitionId"]

    /// Responses seldom mark their topic names (`entityType`): a string called Name, Topic or
    /// TopicName in a response element is one.
    static let topicNameFieldNames: Set<String> = ["Name", "Topic", "TopicName"]

    static func isTopicName(_ field: KafkaFieldSchema) -> Bool {
        guard case .string = field.type else { return false }
        return field.entity == "topicName" || topicNameFieldNames.contains(field.name)
    }

    static func isTopicField(_ field: KafkaFieldSchema) -> Bool {
        if isTopicName(field) { return true }
        if field.name == "TopicId", case .uuid = field.type { return true }
        return false
    }

    static func isPartitionField(_ field: KafkaFieldSchema) -> Bool {
        guard case .int32 = field.type else { return false }
        return partitionFieldNames.contains(field.name)
    }

    /// An element names a topic when one of its own fields does; a partition when it has a
    /// partition index and no topic.
    static func kind(of schema: KafkaStructSchema, version: Int16) -> ElementKind {
        let fields = schema.fields.filter { $0.versions.contains(version) }
        if fields.contains(where: { field in
            if case .array = field.type { return false }
            return isTopicField(field)
        }) { return .topic }
        if fields.contains(where: isPartitionField) { return .partition }
        return .other
    }

    enum ElementKind { case topic, partition, other }

    struct Builder {
        let version: Int16
        let errorCode: Int16
        let topLevelCode: Int16
        /// Error codes placed in listed topics and partitions so far.
        var placed = 0

        mutating func mirror(_ schema: KafkaStructSchema, from source: Source?, depth: Int) -> KafkaStruct {
            var values = [KafkaValue](repeating: .absent, count: schema.fields.count)
            var errorIndex: Int?
            for (index, field) in schema.fields.enumerated() where field.isRegular(in: version) {
                if field.name.hasSuffix("ErrorCode"), case .int16 = field.type {
                    if depth > 0 || field.name != "ErrorCode" {
                        values[index] = .int(Int64(errorCode))
                        placed += 1
                    } else {
                        errorIndex = index
                    }
                    continue
                }
                if let copied = copy(field, from: source) {
                    values[index] = copied
                    continue
                }
                if case .array(.structure(let element)) = field.type {
                    let sources = elements(for: field, element: element, in: source)
                    values[index] = .array(sources.map { .structure(mirror(element, from: $0, depth: depth + 1)) })
                    continue
                }
                values[index] = KafkaCodec.defaultValue(field, version: version)
                if case .array = field.type { values[index] = .array([]) }
            }
            if let errorIndex {
                // The top-level error only where no listed topic or partition carries one.
                values[errorIndex] = .int(Int64(placed > 0 ? 0 : topLevelCode))
            }
            return KafkaStruct(values: values)
        }

        /// The value of a topic name, topic ID, partition index or same-named scalar field,
        /// taken from the request element.
        func copy(_ field: KafkaFieldSchema, from source: Source?) -> KafkaValue? {
            guard let source else { return nil }
            switch source {
            case .topicName(let name):
                if isTopicName(field) { return .string(name) }
                return nil
            case .partition(let index):
                return isPartitionField(field) ? .int(index) : nil
            case .structure(let value, let schema):
                switch field.type {
                case .string, .int8, .int16, .int32, .int64, .uuid, .bool, .uint16, .uint32:
                    break
                default:
                    return nil
                }
                for (index, candidate) in schema.fields.enumerated() where index < value.values.count {
                    guard value.values[index] != .absent else { continue }
                    let same = candidate.name == field.name
                        || (isTopicName(field) && candidate.entity == "topicName")
                        || (isPartitionField(field) && isPartitionField(candidate))
                    guard same else { continue }
                    switch (field.type, value.values[index]) {
                    case (.string, .string(let text)):
                        return .string(text ?? (field.nullable.contains(version) ? nil : ""))
                    case (.int8, .int), (.int16, .int), (.int32, .int), (.int64, .int), (.uint16, .int), (.uint32, .int),
                         (.uuid, .uuid), (.bool, .bool):
                        return value.values[index]
                    default:
                        continue
                    }
                }
                return nil
            }
        }

        /// The request elements a response array lists again: from the request element's own
        /// arrays, else (topics grouped otherwise in the request, such as AlterReplicaLogDirs'
        /// topics under their directories) from the arrays nested in them.
        func elements(for field: KafkaFieldSchema, element: KafkaStructSchema, in source: Source?) -> [Source] {
            let direct = directElements(for: field, element: element, in: source)
            guard direct.isEmpty, kind(of: element, version: version) == .topic,
                  case .structure(let value, let schema)? = source else { return direct }
            var nested: [Source] = []
            for (index, candidate) in schema.fields.enumerated() where index < value.values.count {
                guard case .array(.structure(let inner)) = candidate.type, case .array(let items?) = value.values[index] else { continue }
                for case .structure(let item?) in items {
                    nested += elements(for: field, element: element, in: .structure(item, inner))
                }
            }
            return nested
        }

        func directElements(for field: KafkaFieldSchema, element: KafkaStructSchema, in source: Source?) -> [Source] {
            guard case .structure(let value, let schema)? = source else { return [] }
            let wanted = kind(of: element, version: version)
            for (index, candidate) in schema.fields.enumerated() where index < value.values.count {
                guard case .array(let items?) = value.values[index] else { continue }
                switch (wanted, candidate.type) {
                case (.topic, .array(.structure(let inner))) where kind(of: inner, version: version) == .topic,
                     (.partition, .array(.structure(let inner))) where kind(of: inner, version: version) == .partition:
                    return items.compactMap { if case .structure(let item?) = $0 { return .structure(item, inner) }; return nil }
                case (.topic, .array(.string)) where candidate.entity == "topicName":
                    return items.compactMap { if case .string(let name?) = $0 { return .topicName(name) }; return nil }
                case (.partition, .array(.int32)) where candidate.name.contains("Partition"):
                    return items.compactMap { if case .int(let number) = $0 { return .partition(number) }; return nil }
                case (.other, .array(.structure(let inner))) where candidate.name == field.name:
                    return items.compactMap { if case .structure(let item?) = $0 { return .structure(item, inner) }; return nil }
                default:
                    continue
                }
            }
            return []
        }
    }
}
