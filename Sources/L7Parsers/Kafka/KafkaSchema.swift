/// The Kafka protocol's message schemas as Swift values: what `scripts/kafka-codegen` emits
/// from Apache Kafka's JSON schemas (one type under `KafkaMessages` per request, response
/// and header) and what the generic codec (`KafkaCodec`) reads and writes by.

/// The generated message types (`KafkaMessages.ProduceRequest`, ...) and their index by API
/// key (`KafkaMessages.apis`).
public enum KafkaMessages {}

/// A generated message type: its schema.
public protocol KafkaMessage {
    static var schema: KafkaMessageSchema { get }
}

/// An inclusive range of versions; `KafkaVersions(3, Int16.max)` is the schemas' "3+".
public struct KafkaVersions: Sendable, Hashable {
    public let lowest: Int16
    public let highest: Int16

    public init(_ lowest: Int16, _ highest: Int16) {
        self.lowest = lowest
        self.highest = highest
    }

    @inline(__always)
    public func contains(_ version: Int16) -> Bool { version >= lowest && version <= highest }
}

extension Optional where Wrapped == KafkaVersions {
    /// The schemas' "none" is nil: no version is in it.
    @inline(__always)
    public func contains(_ version: Int16) -> Bool { self?.contains(version) ?? false }
}

/// The type of one field, as the schemas spell it (`int32`, `[]string`, `[]TopicData`, ...).
public indirect enum KafkaFieldType: Sendable {
    case bool, int8, int16, uint16, int32, uint32, int64, float64
    case string, bytes, records, uuid
    case array(KafkaFieldType)
    case structure(KafkaStructSchema)
}

/// A structure: the message's top level, an array's element or a nested struct.
public struct KafkaStructSchema: Sendable {
    public let name: String
    public let fields: [KafkaFieldSchema]

    public init(_ name: String, _ fields: [KafkaFieldSchema]) {
        self.name = name
        self.fields = fields
    }

    /// The position of the field called `name`, if any.
    public func index(of name: String) -> Int? { fields.firstIndex { $0.name == name } }
}

/// One field of a structure, in every version.
public struct KafkaFieldSchema: Sendable {
    public let name: String
    public let type: KafkaFieldType
    /// Versions in which the field exists (as a regular or a tagged field).
    public let versions: KafkaVersions?
    /// Versions in which it may be null (strings, bytes, records, arrays, structs).
    public let nullable: KafkaVersions?
    /// Its tag, when it is a tagged field in `taggedVersions` (KIP-482).
    public let tag: UInt32?
    public let taggedVersions: KafkaVersions?
    /// Versions in which it uses the compact encodings, when it differs from its message's
    /// (the request header's ClientId: never compact).
    public let flexible: KafkaFieldEncoding
    /// The schemas' `entityType`: "topicName", "groupId", "transactionalId", ...
    public let entity: String?
    /// The schemas' `default`, as written ("-1", "null", "false", ...).
    public let defaultValue: String?

    public init(_ name: String, _ type: KafkaFieldType, versions: KafkaVersions?, nullable: KafkaVersions? = nil,
                tag: UInt32? = nil, taggedVersions: KafkaVersions? = nil, flexible: KafkaFieldEncoding = .asMessage,
                entity: String? = nil, defaultValue: String? = nil) {
        self.name = name
        self.type = type
        self.versions = versions
        self.nullable = nullable
        self.tag = tag
        self.taggedVersions = taggedVersions
        self.flexible = flexible
        self.entity = entity
        self.defaultValue = defaultValue
    }

    /// True when the field is a tagged field in `version`.
    @inline(__always)
    func isTagged(in version: Int16) -> Bool { tag != nil && taggedVersions.contains(version) }

    /// True when the field is a regular (untagged) field in `version`.
    @inline(__always)
    func isRegular(in version: Int16) -> Bool { versions.contains(version) && !isTagged(in: version) }

    /// Whether the field uses the compact encodings in `version` of a message that is
    /// flexible there or not.
    @inline(__always)
    func isCompact(in version: Int16, messageFlexible: Bool) -> Bool {
        switch flexible {
        case .asMessage: return messageFlexible
        case .never: return false
        case .compact(let versions): return versions.contains(version)
        }
    }
}

/// A field's own `flexibleVersions`, when it has one.
public enum KafkaFieldEncoding: Sendable {
    /// Compact where its message is flexible.
    case asMessage
    /// Never compact ("none").
    case never
    /// Compact in these versions.
    case compact(KafkaVersions)
}

/// Whether a message is a request, a response or a header.
public enum KafkaMessageKind: Sendable {
    case request, response, header
}

/// A whole message schema: its API key (-1 for headers), versions and top-level fields.
public struct KafkaMessageSchema: Sendable {
    public let name: String
    public let apiKey: Int16
    public let kind: KafkaMessageKind
    /// Every version Sluice reads: from 0 (Kafka's clients still send versions Kafka 4.0
    /// removed from `validVersions`) to the newest the schema defines.
    public let versions: KafkaVersions
    /// Versions with compact strings and arrays, unsigned varints and tagged fields.
    public let flexible: KafkaVersions?
    public let root: KafkaStructSchema

    public init(name: String, apiKey: Int16, kind: KafkaMessageKind, versions: KafkaVersions, flexible: KafkaVersions?,
                fields: [KafkaFieldSchema]) {
        self.name = name
        self.apiKey = apiKey
        self.kind = kind
        self.versions = versions
        self.flexible = flexible
        root = KafkaStructSchema(name, fields)
    }

    /// Whether `version` uses the flexible encodings.
    @inline(__always)
    public func isFlexible(_ version: Int16) -> Bool { flexible.contains(version) }
}

/// One API: its request and response schemas.
public struct KafkaAPI: Sendable {
    public let request: KafkaMessageSchema
    public let response: KafkaMessageSchema
    /// Whether its requests name topics (by name or by topic ID) in some version.
    public let namesTopics: Bool

    public init(request: KafkaMessageSchema, response: KafkaMessageSchema, namesTopics: Bool) {
        self.request = request
        self.response = response
        self.namesTopics = namesTopics
    }

    /// The request header version of a request of `version` (RequestHeader.json: v2 for
    /// flexible versions, v1 otherwise; v0 only for ControlledShutdown v0, which current
    /// Kafka no longer has).
    public func requestHeaderVersion(_ version: Int16) -> Int16 { request.isFlexible(version) ? 2 : 1 }

    /// The response header version (ResponseHeader.json: v1 for flexible versions, v0
    /// otherwise; ApiVersions responses always v0, so that a client that asked with a version
    /// the broker does not know can still read the answer).
    public func responseHeaderVersion(_ version: Int16) -> Int16 {
        request.apiKey == 18 ? 0 : (response.isFlexible(version) ? 1 : 0)
    }
}
