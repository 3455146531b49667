/// Kafka's framing and headers (the protocol guide's "Common Request and Response
/// Structure"): every message is `Size: int32` followed by that many bytes, a header, then
/// the body. Request headers (RequestHeader.json) are v1 (key, version, correlation ID,
/// nullable client ID with a two-byte length) or v2 (the same plus tagged fields, the client
/// ID still not compact); response headers (ResponseHeader.json) are the correlation ID, plus
/// tagged fields in v1.

/// What the front of a byte stream holds.
public enum KafkaFrameStart: Equatable, Sendable {
    /// Fewer than four bytes: the size is not known yet.
    case needMore(minimumBytes: Int)
    /// A frame of `length` bytes after its four-byte size.
    case frame(length: Int)
    /// A size no frame may have (negative, too short for a header, or over `limit`).
    case invalid(String)
}

/// A request header, read without copying anything but the client ID.
public struct KafkaRequestHeader: Sendable, Equatable {
    public var apiKey: Int16
    public var apiVersion: Int16
    public var correlationID: Int32
    /// The client ID bytes' range in the buffer the header was read from (nil: null).
    public var clientID: Range<Int>?
    /// Where the body starts, counted from the start of the buffer (size prefix included).
    public var bodyOffset: Int

    public init(apiKey: Int16, apiVersion: Int16, correlationID: Int32, clientID: Range<Int>?, bodyOffset: Int) {
        self.apiKey = apiKey
        self.apiVersion = apiVersion
        self.correlationID = correlationID
        self.clientID = clientID
        self.bodyOffset = bodyOffset
    }
}

public enum KafkaFraming {
    /// The smallest request: the size, then key, version and correlation ID and a client ID
    /// length.
    public static let minimumRequestLength = 10

    /// Reads the size at the front of `bytes`; frames over `limit` bytes are invalid.
    public static func frameStart(_ bytes: UnsafeRawBufferPointer, limit: Int, minimum: Int = 4) -> KafkaFrameStart {
        guard bytes.count >= 4 else { return .needMore(minimumBytes: 4 - bytes.count) }
        let length = Int(Int32(bitPattern: UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])))
        if length < minimum { return .invalid("a frame of \(length) bytes") }
        if length > limit { return .invalid("a frame of \(length) bytes, over the limit of \(limit)") }
        return .frame(length: length)
    }

    /// Reads the request header of the frame at the front of `bytes` (size prefix included),
    /// given its API's header version (`KafkaAPI.requestHeaderVersion`; 1 for an API the
    /// schemas do not define). Throws when the header is not whole within `frameEnd` or
    /// cannot be read.
    public static func requestHeader(_ bytes: UnsafeRawBufferPointer, frameEnd: Int,
                                     headerVersion: (Int16, Int16) -> Int16) throws(KafkaCodecError) -> KafkaRequestHeader {
        var reader = KafkaReader(bytes, from: 4, to: min(frameEnd, bytes.count))
        let apiKey = try reader.int16()
        let apiVersion = try reader.int16()
        let correlationID = try reader.int32()
        let length = try reader.length(compact: false, wide: false)
        var clientID: Range<Int>?
        if length >= 0 {
            let start = reader.offset
            _ = try reader.take(length)
            clientID = start..<(start + length)
        }
        if headerVersion(apiKey, apiVersion) >= 2 { try skipTaggedFields(&reader) }
        return KafkaRequestHeader(apiKey: apiKey, apiVersion: apiVersion, correlationID: correlationID, clientID: clientID,
                                  bodyOffset: reader.offset)
    }

    /// Skips a tagged-field section. Its tags must be in strictly increasing order (KIP-482),
    /// as the codec (`KafkaCodec.decode`) requires: what the streaming readers let through
    /// is what the codec reads.
    public static func skipTaggedFields(_ reader: inout KafkaReader) throws(KafkaCodecError) {
        let count = try reader.unsignedVarint()
        guard Int(count) <= reader.remaining else { throw KafkaCodecError("\(count) tagged fields in \(reader.remaining) bytes") }
        var previous: UInt32?
        for _ in 0..<count {
            let tag = try reader.unsignedVarint()
            if let previous, tag <= previous { throw KafkaCodecError("tagged field \(tag) out of order") }
            previous = tag
            let size = Int(try reader.unsignedVarint())
            _ = try reader.take(size)
        }
    }

    /// The correlation ID at the front of a response frame (after its size).
    public static func responseCorrelationID(_ bytes: UnsafeRawBufferPointer) -> Int32? {
        guard bytes.count >= 8 else { return nil }
        return Int32(bitPattern: UInt32(bytes[4]) << 24 | UInt32(bytes[5]) << 16 | UInt32(bytes[6]) << 8 | UInt32(bytes[7]))
    }

    /// Where the body of a response frame starts (size prefix included), given its header
    /// version.
    public static func responseBodyOffset(_ bytes: UnsafeRawBufferPointer, frameEnd: Int,
                                          headerVersion: Int16) throws(KafkaCodecError) -> Int {
        var reader = KafkaReader(bytes, from: 4, to: min(frameEnd, bytes.count))
        _ = try reader.int32()
        if headerVersion >= 1 { try skipTaggedFields(&reader) }
        return reader.offset
    }

    /// A whole response frame: size, header of `headerVersion` for `correlationID`, `body`.
    public static func responseFrame(correlationID: Int32, headerVersion: Int16, body: [UInt8]) -> [UInt8] {
        var writer = KafkaWriter(capacity: body.count + 9)
        let headerLength = headerVersion >= 1 ? 5 : 4
        writer.int32(Int32(headerLength + body.count))
        writer.int32(correlationID)
        if headerVersion >= 1 { writer.bytes.append(0) }
        writer.bytes += body
        return writer.bytes
    }

    /// A whole request frame (tests, benchmarks): size, header, `body`.
    public static func requestFrame(apiKey: Int16, apiVersion: Int16, correlationID: Int32, clientID: String?,
                                    headerVersion: Int16, body: [UInt8]) -> [UInt8] {
        var writer = KafkaWriter(capacity: body.count + 32)
        writer.int32(0)
        writer.int16(apiKey)
        writer.int16(apiVersion)
        writer.int32(correlationID)
        if let clientID {
            writer.int16(Int16(clientID.utf8.count))
            writer.bytes += clientID.utf8
        } else {
            writer.int16(-1)
        }
        if headerVersion >= 2 { writer.bytes.append(0) }
        writer.bytes += body
        let length = UInt32(writer.bytes.count - 4)
        writer.bytes[0] = UInt8(length >> 24)
        writer.bytes[1] = UInt8(truncatingIfNeeded: length >> 16)
        writer.bytes[2] = UInt8(truncatingIfNeeded: length >> 8)
        writer.bytes[3] = UInt8(truncatingIfNeeded: length)
        return writer.bytes
    }
}
