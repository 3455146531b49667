/// An IPv4 or IPv6 address, as read from a captured packet.
///
/// A small value of its own so `Replay` does not depend on `PolicyEngine`; the consumer
/// converts it at its edge. IPv4 addresses are held as IPv4-mapped IPv6 (`::ffff:a.b.c.d`)
/// with `isIPv4` set, so one comparison serves both families.
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The first 8 bytes of the 16-byte form, in network order read as big-endian.
    public let high: UInt64
    /// The last 8 bytes of the 16-byte form.
    public let low: UInt64
    public let isIPv4: Bool

    /// An IPv4 address from its 32-bit value (network order read as big-endian).
    public init(ipv4 value: UInt32) {
        high = 0
        low = 0x0000_ffff_0000_0000 | UInt64(value)
        isIPv4 = true
    }

    /// An IPv6 address from its two 64-bit halves.
    public init(ipv6High high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
        isIPv4 = false
    }

    /// Parses dotted IPv4 (`10.0.0.1`) or full/compressed IPv6 (`fd00::1`); nil otherwise.
    public init?(_ text: String) {
        if text.contains(":") {
            var groups: [UInt16] = []
            let halves = text.split(separator: "::", maxSplits: 1, omittingEmptySubsequences: false)
            guard halves.count <= 2 else { return nil }
            func parse(_ part: Substring) -> [UInt16]? {
                if part.isEmpty { return [] }
                var out: [UInt16] = []
                for group in part.split(separator: ":", omittingEmptySubsequences: false) {
                    guard let value = UInt16(group, radix: 16) else { return nil }
                    out.append(value)
                }
                return out
            }
            guard let head = parse(halves[0]) else { return nil }
            if halves.count == 2 {
                guard let tail = parse(halves[1]), head.count + tail.count < 8 else { return nil }
                groups = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
            } else {
                groups = head
            }
            guard groups.count == 8 else { return nil }
            var high: UInt64 = 0, low: UInt64 = 0
            for index in 0..<4 { high = high << 16 | UInt64(groups[index]) }
            for index in 4..<8 { low = low << 16 | UInt64(groups[index]) }
            self.init(ipv6High: high, low: low)
        } else {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4 else { return nil }
            var value: UInt32 = 0
            for part in parts {
                guard let octet = UInt8(part) else { return nil }
                value = value << 8 | UInt32(octet)
            }
            self.init(ipv4: value)
        }
    }

    /// The 32-bit IPv4 value, or nil for an IPv6 address.
    public var ipv4Value: UInt32? { isIPv4 ? UInt32(truncatingIfNeeded: low) : nil }

    public static func < (left: IPAddress, right: IPAddress) -> Bool {
        (left.high, left.low) < (right.high, right.low)
    }

    public var description: String {
        if let value = ipv4Value {
            return "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
        }
        let groups = (0..<8).map { index -> UInt16 in
            let half = index < 4 ? high : low
            return UInt16(truncatingIfNeeded: half >> (UInt64(3 - index % 4) * 16))
        }
        // RFC 5952 §4.2: the longest run (of two or more) of zero groups becomes "::".
        var bestStart = -1, bestLength = 0, index = 0
        while index < 8 {
            if groups[index] == 0 {
                var end = index
                while end < 8 && groups[end] == 0 { end += 1 }
                if end - index > bestLength && end - index >= 2 { bestStart = index; bestLength = end - index }
                index = end
            } else {
                index += 1
            }
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }
}

/// An address and a port: one end of a TCP connection or a UDP flow.
public struct TransportEndpoint: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let address: IPAddress
    public let port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public static func < (left: TransportEndpoint, right: TransportEndpoint) -> Bool {
        (left.address, left.port) < (right.address, right.port)
    }

    public var description: String {
        address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)"
    }
}

/// The TCP header's control bits (RFC 9293 §3.1).
public struct TCPFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
    public static let urg = TCPFlags(rawValue: 0x20)
}

/// One decoded TCP segment.
///
/// `payload` points into the packet the decoder was given, or into the decoder's
/// reassembly buffer for a reassembled IP datagram: it is valid only until the next call
/// to the decoder or the reader, and must be copied to be kept.
public struct TCPSegment: @unchecked Sendable {
    public var source: TransportEndpoint
    public var destination: TransportEndpoint
    public var sequenceNumber: UInt32
    public var acknowledgementNumber: UInt32
    public var flags: TCPFlags
    /// The payload bytes that were captured.
    public var payload: UnsafeRawBufferPointer
    /// Payload bytes the packet carried on the wire but the capture cut off (snaplen):
    /// the segment covers `payload.count + missingPayloadBytes` sequence numbers.
    public var missingPayloadBytes: Int
    /// Capture time, nanoseconds since the Unix epoch.
    public var timestamp: UInt64

    /// Whether the capture cut this segment's payload short.
    public var isTruncated: Bool { missingPayloadBytes > 0 }

    public init(source: TransportEndpoint, destination: TransportEndpoint, sequenceNumber: UInt32,
                acknowledgementNumber: UInt32, flags: TCPFlags, payload: UnsafeRawBufferPointer,
                missingPayloadBytes: Int = 0, timestamp: UInt64) {
        self.source = source
        self.destination = destination
        self.sequenceNumber = sequenceNumber
        self.acknowledgementNumber = acknowledgementNumber
        self.flags = flags
        self.payload = payload
        self.missingPayloadBytes = missingPayloadBytes
        self.timestamp = timestamp
    }
}

/// One decoded UDP datagram; `payload` has the same lifetime as `TCPSegment.payload`.
public struct UDPDatagram: @unchecked Sendable {
    public var source: TransportEndpoint
    public var destination: TransportEndpoint
    public var payload: UnsafeRawBufferPointer
    /// Payload bytes cut off by the capture's snaplen.
    public var missingPayloadBytes: Int
    /// Capture time, nanoseconds since the Unix epoch.
    public var timestamp: UInt64

    public var isTruncated: Bool { missingPayloadBytes > 0 }
}
