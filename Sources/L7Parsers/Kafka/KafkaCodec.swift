/// The generic Kafka codec: reads and writes any message the generated schemas describe
/// (`KafkaMessages`), in any version, into and from a tree of `KafkaValue`s.
///
/// Flexible versions (KIP-482): compact strings, bytes and arrays (unsigned varint length
/// plus one, zero for null), and a tagged-field section after every structure. Tagged fields
/// the schema knows are decoded; others are kept as bytes and written back as they came.
/// Every length is checked against the bytes that remain before anything is taken: a
/// hostile length is `malformed`, never a large allocation.

/// A message that cannot be read as its schema says.
public struct KafkaCodecError: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// A Kafka UUID (topic IDs): 16 bytes, big-endian halves.
public struct KafkaUUID: Sendable, Hashable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The zero UUID ("AAAAAAAAAAAAAAAAAAAAAA"): Kafka's "no topic ID".
    public var isZero: Bool { high == 0 && low == 0 }

    /// As Kafka prints topic IDs: URL-safe base64 without padding.
    public var description: String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var bytes: [UInt8] = []
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
        var text: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value = 0
            for byte in chunk { value = value << 8 | Int(byte) }
            value <<= (3 - chunk.count) * 8
            for position in 0..<(chunk.count + 1) { text.append(alphabet[(value >> (18 - 6 * position)) & 63]) }
            index += 3
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// The canonical hexadecimal form (8-4-4-4-12), as Python's `uuid.UUID` prints it.
    public var hexadecimal: String {
        let digits = String(high, radix: 16).leftPadded(16) + String(low, radix: 16).leftPadded(16)
        let characters = Array(digits)
        return [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { String(characters[$0]) }.joined(separator: "-")
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// One field's value in a decoded message.
public indirect enum KafkaValue: Sendable, Equatable {
    /// Not in this version, or a tagged field that was not sent.
    case absent
    case bool(Bool)
    /// Every integer type (int8 to int64, uint16, uint32).
    case int(Int64)
    case float(Double)
    /// nil: null.
    case string(String?)
    /// `bytes` and `records`; nil: null.
    case bytes([UInt8]?)
    case uuid(KafkaUUID)
    /// nil: null.
    case array([KafkaValue]?)
    /// nil: a null struct (nullable struct fields only).
    case structure(KafkaStruct?)
}

/// A tagged field the schema does not know: kept as it came.
public struct KafkaUnknownTag: Sendable, Equatable {
    public let tag: UInt32
    public let data: [UInt8]
}

/// A decoded structure: one value per schema field (in schema order) and the unknown
/// tagged fields it carried.
public struct KafkaStruct: Sendable, Equatable {
    public var values: [KafkaValue]
    public var unknownTags: [KafkaUnknownTag]

    public init(values: [KafkaValue], unknownTags: [KafkaUnknownTag] = []) {
        self.values = values
        self.unknownTags = unknownTags
    }
}

/// Reads Kafka's primitive encodings from a buffer; every read is bounds-checked.
public struct KafkaReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int
    public let end: Int

    public init(_ bytes: UnsafeRawBufferPointer, from offset: Int = 0, to end: Int? = nil) {
        self.bytes = bytes
        self.offset = offset
        self.end = end ?? bytes.count
    }

    public var remaining: Int { end - offset }

    @inline(__always)
    mutating func need(_ count: Int) throws(KafkaCodecError) {
        guard count >= 0, count <= end - offset else { throw KafkaCodecError("truncated: \(count) bytes needed, \(end - offset) left") }
    }

    @inline(__always)
    public mutating func uint8() throws(KafkaCodecError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    @inline(__always)
    public mutating func bigEndian(_ width: Int) throws(KafkaCodecError) -> UInt64 {
        try need(width)
        var value: UInt64 = 0
        for index in offset..<(offset + width) { value = value << 8 | UInt64(bytes[index]) }
        offset += width
        return value
    }

    public mutating func int16() throws(KafkaCodecError) -> Int16 { Int16(truncatingIfNeeded: try bigEndian(2)) }
    public mutating func int32() throws(KafkaCodecError) -> Int32 { Int32(truncatingIfNeeded: try bigEndian(4)) }
    public mutating func int64() throws(KafkaCodecError) -> Int64 { Int64(bitPattern: try bigEndian(8)) }

    /// An unsigned varint of at most 32 bits (KIP-482 lengths, counts and tags).
    public mutating func unsignedVarint() throws(KafkaCodecError) -> UInt32 {
        // Most varints (lengths, counts, empty tag sections) are one byte.
        if offset < end, bytes[offset] < 0x80 {
            defer { offset += 1 }
            return UInt32(bytes[offset])
        }
        var value: UInt32 = 0
        for shift in stride(from: 0, through: 28, by: 7) {
            let byte = try uint8()
            if shift == 28 && byte > 0x0f { throw KafkaCodecError("unsigned varint longer than 32 bits") }
            value |= UInt32(byte & 0x7f) << UInt32(shift)
            if byte & 0x80 == 0 { return value }
        }
        throw KafkaCodecError("unsigned varint longer than 32 bits")
    }

    /// Takes `count` bytes.
    public mutating func take(_ count: Int) throws(KafkaCodecError) -> UnsafeRawBufferPointer {
        try need(count)
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    /// A length: compact (unsigned varint, value plus one, 0 = null: returns -1) or classic
    /// (int16 for strings, int32 for bytes and arrays, -1 = null). Other negatives are malformed.
    public mutating func length(compact: Bool, wide: Bool) throws(KafkaCodecError) -> Int {
        let length: Int
        if compact {
            length = Int(try unsignedVarint()) - 1
        } else {
            length = wide ? Int(try int32()) : Int(try int16())
        }
        if length < -1 { throw KafkaCodecError("negative length \(length)") }
        return length
    }
}

/// Appends Kafka's primitive encodings to a byte array.
public struct KafkaWriter {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func bigEndian(_ value: UInt64, width: Int) {
        for shift in stride(from: (width - 1) * 8, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    public mutating func int16(_ value: Int16) { bigEndian(UInt64(UInt16(bitPattern: value)), width: 2) }
    public mutating func int32(_ value: Int32) { bigEndian(UInt64(UInt32(bitPattern: value)), width: 4) }

    public mutating func unsignedVarint(_ value: UInt32) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7f) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    /// A length as `KafkaReader.length` reads it (-1 = null).
    public mutating func length(_ length: Int, compact: Bool, wide: Bool) {
        if compact {
            unsignedVarint(UInt32(length + 1))
        } else if wide {
            int32(Int32(length))
        } else {
            int16(Int16(length))
        }
    }
}

/// Decoding and encoding by schema.
public enum KafkaCodec {
    /// Decodes a message body of `version` that fills `bytes[from..<to]` exactly.
    public static func decode(_ schema: KafkaMessageSchema, version: Int16, _ bytes: UnsafeRawBufferPointer,
                              from start: Int = 0, to end: Int? = nil) throws(KafkaCodecError) -> KafkaStruct {
        guard schema.versions.contains(version) else { throw KafkaCodecError("\(schema.name) has no version \(version)") }
        var reader = KafkaReader(bytes, from: start, to: end)
        let value = try decodeStruct(schema.root, version: version, flexible: schema.isFlexible(version), &reader)
        guard reader.remaining == 0 else { throw KafkaCodecError("\(reader.remaining) bytes after \(schema.name) v\(version)") }
        return value
    }

    /// Decodes a message body at the reader's offset, leaving the reader after it.
    public static func decode(_ schema: KafkaMessageSchema, version: Int16,
                              _ reader: inout KafkaReader) throws(KafkaCodecError) -> KafkaStruct {
        try decodeStruct(schema.root, version: version, flexible: schema.isFlexible(version), &reader)
    }

    /// Encodes `value` as a message body of `version`.
    public static func encode(_ value: KafkaStruct, _ schema: KafkaMessageSchema, version: Int16, into writer: inout KafkaWriter) {
        encodeStruct(value, schema.root, version: version, flexible: schema.isFlexible(version), &writer)
    }

    static func decodeStruct(_ schema: KafkaStructSchema, version: Int16, flexible: Bool,
                             _ reader: inout KafkaReader) throws(KafkaCodecError) -> KafkaStruct {
        var values = [KafkaValue](repeating: .absent, count: schema.fields.count)
        for (index, field) in schema.fields.enumerated() where field.isRegular(in: version) {
            values[index] = try decodeValue(field.type, field, version: version, flexible: flexible, &reader)
        }
        var unknown: [KafkaUnknownTag] = []
        if flexible {
            let count = try reader.unsignedVarint()
            guard Int(count) <= reader.remaining else { throw KafkaCodecError("\(count) tagged fields in \(reader.remaining) bytes") }
            var previous: UInt32?
            for _ in 0..<count {
                let tag = try reader.unsignedVarint()
                if let previous, tag <= previous { throw KafkaCodecError("tagged field \(tag) out of order") }
                previous = tag
                let size = Int(try reader.unsignedVarint())
                let data = try reader.take(size)
                if let index = schema.fields.firstIndex(where: { $0.tag == tag && $0.isTagged(in: version) }) {
                    var inner = KafkaReader(data)
                    values[index] = try decodeValue(schema.fields[index].type, schema.fields[index], version: version,
                                                    flexible: flexible, &inner)
                    guard inner.remaining == 0 else { throw KafkaCodecError("tagged field \(tag) longer than its value") }
                } else {
                    unknown.append(KafkaUnknownTag(tag: tag, data: Array(data)))
                }
            }
        }
        return KafkaStruct(values: values, unknownTags: unknown)
    }

    static func decodeValue(_ type: KafkaFieldType, _ field: KafkaFieldSchema, version: Int16, flexible: Bool,
                            _ reader: inout KafkaReader) throws(KafkaCodecError) -> KafkaValue {
        let compact = field.isCompact(in: version, messageFlexible: flexible)
        switch type {
        case .bool: return .bool(try reader.uint8() != 0)
        case .int8: return .int(Int64(Int8(bitPattern: try reader.uint8())))
        case .int16: return .int(Int64(try reader.int16()))
        case .uint16: return .int(Int64(try reader.bigEndian(2)))
        case .int32: return .int(Int64(try reader.int32()))
        case .uint32: return .int(Int64(try reader.bigEndian(4)))
        case .int64: return .int(try reader.int64())
        case .float64: return .float(Double(bitPattern: try reader.bigEndian(8)))
        case .uuid: return .uuid(KafkaUUID(high: try reader.bigEndian(8), low: try reader.bigEndian(8)))
        case .string:
            let length = try reader.length(compact: compact, wide: false)
            if length < 0 {
                guard field.nullable.contains(version) else { throw KafkaCodecError("null \(field.name)") }
                return .string(nil)
            }
            let data = try reader.take(length)
            guard let text = String(validating: data, as: UTF8.self) else { throw KafkaCodecError("\(field.name) is not UTF-8") }
            return .string(text)
        case .bytes, .records:
            let length = try reader.length(compact: compact, wide: true)
            if length < 0 {
                guard field.nullable.contains(version) else { throw KafkaCodecError("null \(field.name)") }
                return .bytes(nil)
            }
            return .bytes(Array(try reader.take(length)))
        case .array(let element):
            let count = try reader.length(compact: compact, wide: true)
            if count < 0 {
                guard field.nullable.contains(version) else { throw KafkaCodecError("null \(field.name)") }
                return .array(nil)
            }
            guard count <= reader.remaining else { throw KafkaCodecError("\(count) elements of \(field.name) in \(reader.remaining) bytes") }
            var elements: [KafkaValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count {
                if case .structure(let schema) = element {
                    elements.append(.structure(try decodeStruct(schema, version: version, flexible: flexible, &reader)))
                } else {
                    elements.append(try decodeValue(element, field, version: version, flexible: flexible, &reader))
                }
            }
            return .array(elements)
        case .structure(let schema):
            if field.nullable.contains(version) {
                // A nullable struct: an int8 marker, -1 for null (Kafka's generated code).
                let marker = Int8(bitPattern: try reader.uint8())
                if marker < 0 { return .structure(nil) }
            }
            return .structure(try decodeStruct(schema, version: version, flexible: flexible, &reader))
        }
    }

    static func encodeStruct(_ value: KafkaStruct, _ schema: KafkaStructSchema, version: Int16, flexible: Bool,
                             _ writer: inout KafkaWriter) {
        for (index, field) in schema.fields.enumerated() where field.isRegular(in: version) {
            let item = index < value.values.count ? value.values[index] : .absent
            encodeValue(item == .absent ? defaultValue(field, version: version) : item, field.type, field,
                        version: version, flexible: flexible, &writer)
        }
        guard flexible else { return }
        var tagged: [(tag: UInt32, data: [UInt8])] = value.unknownTags.map { ($0.tag, $0.data) }
        for (index, field) in schema.fields.enumerated() where field.isTagged(in: version) {
            guard index < value.values.count, value.values[index] != .absent, let tag = field.tag else { continue }
            var inner = KafkaWriter()
            encodeValue(value.values[index], field.type, field, version: version, flexible: flexible, &inner)
            tagged.append((tag, inner.bytes))
        }
        tagged.sort { $0.tag < $1.tag }
        writer.unsignedVarint(UInt32(tagged.count))
        for item in tagged {
            writer.unsignedVarint(item.tag)
            writer.unsignedVarint(UInt32(item.data.count))
            writer.bytes += item.data
        }
    }

    static func encodeValue(_ value: KafkaValue, _ type: KafkaFieldType, _ field: KafkaFieldSchema, version: Int16,
                            flexible: Bool, _ writer: inout KafkaWriter) {
        let compact = field.isCompact(in: version, messageFlexible: flexible)
        switch (type, value) {
        case (.bool, .bool(let flag)): writer.bytes.append(flag ? 1 : 0)
        case (.int8, .int(let number)): writer.bytes.append(UInt8(truncatingIfNeeded: number))
        case (.int16, .int(let number)), (.uint16, .int(let number)): writer.bigEndian(UInt64(truncatingIfNeeded: number), width: 2)
        case (.int32, .int(let number)), (.uint32, .int(let number)): writer.bigEndian(UInt64(truncatingIfNeeded: number), width: 4)
        case (.int64, .int(let number)): writer.bigEndian(UInt64(bitPattern: number), width: 8)
        case (.float64, .float(let number)): writer.bigEndian(number.bitPattern, width: 8)
        case (.uuid, .uuid(let uuid)):
            writer.bigEndian(uuid.high, width: 8)
            writer.bigEndian(uuid.low, width: 8)
        case (.string, .string(let text)):
            if let text {
                writer.length(text.utf8.count, compact: compact, wide: false)
                writer.bytes += text.utf8
            } else {
                writer.length(-1, compact: compact, wide: false)
            }
        case (.bytes, .bytes(let data)), (.records, .bytes(let data)):
            if let data {
                writer.length(data.count, compact: compact, wide: true)
                writer.bytes += data
            } else {
                writer.length(-1, compact: compact, wide: true)
            }
        case (.array(let element), .array(let elements)):
            guard let elements else {
                writer.length(-1, compact: compact, wide: true)
                return
            }
            writer.length(elements.count, compact: compact, wide: true)
            for item in elements {
                if case .structure(let schema) = element, case .structure(let inner?) = item {
                    encodeStruct(inner, schema, version: version, flexible: flexible, &writer)
                } else if case .structure(let schema) = element {
                    encodeStruct(KafkaStruct(values: []), schema, version: version, flexible: flexible, &writer)
                } else {
                    encodeValue(item, element, field, version: version, flexible: flexible, &writer)
                }
            }
        case (.structure(let schema), .structure(let inner)):
            if field.nullable.contains(version) {
                guard let inner else {
                    writer.bytes.append(0xff)
                    return
                }
                writer.bytes.append(1)
                encodeStruct(inner, schema, version: version, flexible: flexible, &writer)
            } else {
                encodeStruct(inner ?? KafkaStruct(values: []), schema, version: version, flexible: flexible, &writer)
            }
        default:
            // A value of another type than the schema's: its default instead.
            encodeValue(defaultValue(field, version: version, type: type), type, field, version: version,
                        flexible: flexible, &writer)
        }
    }

    /// The value a field takes when nothing was given: its schema default, else zero, empty
    /// or (where the field may be null and its default says so) null.
    public static func defaultValue(_ field: KafkaFieldSchema, version: Int16, type: KafkaFieldType? = nil) -> KafkaValue {
        let text = field.defaultValue
        let isNull = text == "null" && field.nullable.contains(version)
        switch type ?? field.type {
        case .bool: return .bool(text == "true")
        case .int8, .int16, .uint16, .int32, .uint32, .int64:
            if let text, text.hasPrefix("0x"), let number = Int64(text.dropFirst(2), radix: 16) { return .int(number) }
            return .int(text.flatMap { Int64($0) } ?? 0)
        case .float64: return .float(text.flatMap { Double($0) } ?? 0)
        case .string: return .string(isNull ? nil : (text ?? ""))
        case .bytes, .records: return .bytes(isNull ? nil : [])
        case .uuid: return .uuid(KafkaUUID(high: 0, low: 0))
        case .array: return .array(isNull ? nil : [])
        case .structure: return .structure(isNull ? nil : KafkaStruct(values: []))
        }
    }
}
