#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as 16 bytes (IPv4 kept in its own family, not mapped).
public struct IPAddress: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// Address family.
    public enum Family: Sendable, Hashable { case ipv4, ipv6 }

    public let family: Family
    /// Network-order bytes: 4 significant for IPv4, 16 for IPv6.
    public let high: UInt64
    public let low: UInt64

    /// Parses dotted-quad IPv4 or RFC 4291 text IPv6 (`inet_pton` rules). Returns nil otherwise.
    public init?(_ text: String) {
        // inet_pton reads a C string: text with a NUL in it would be judged by its prefix.
        guard !text.utf8.contains(0) else { return nil }
        if text.contains(":") {
            var storage = in6_addr()
            guard inet_pton(AF_INET6, text, &storage) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &storage) { Array($0) }
            self.family = .ipv6
            self.high = bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
            self.low = bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
        } else {
            var storage = in_addr()
            guard inet_pton(AF_INET, text, &storage) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &storage) { Array($0) }
            self.family = .ipv4
            self.high = 0
            self.low = bytes.reduce(0) { $0 << 8 | UInt64($1) }
        }
    }

    /// An IPv4 address from its 4 network-order bytes, or IPv6 from 16; nil for other lengths.
    public init?<Bytes: Collection>(networkBytes bytes: Bytes) where Bytes.Element == UInt8 {
        switch bytes.count {
        case 4:
            self.init(family: .ipv4, high: 0, low: bytes.reduce(0) { $0 << 8 | UInt64($1) })
        case 16:
            self.init(family: .ipv6, high: bytes.prefix(8).reduce(0) { $0 << 8 | UInt64($1) },
                      low: bytes.dropFirst(8).reduce(0) { $0 << 8 | UInt64($1) })
        default:
            return nil
        }
    }

    /// `init?(networkBytes:)` for bytes in memory (a DNS record's data), without the
    /// generic path.
    public init?(networkBytes bytes: UnsafeRawBufferPointer) {
        switch bytes.count {
        case 4:
            self.init(family: .ipv4, high: 0, low: UInt64(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self))))
        case 16:
            self.init(family: .ipv6, high: UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self)),
                      low: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        default:
            return nil
        }
    }

    init(family: Family, high: UInt64, low: UInt64) {
        self.family = family
        self.high = high
        self.low = low
    }

    /// Number of address bits: 32 or 128.
    public var bitWidth: Int { family == .ipv4 ? 32 : 128 }

    /// The address with every bit after the first `prefixLength` bits cleared.
    func masked(to prefixLength: Int) -> IPAddress {
        if family == .ipv4 {
            let mask: UInt64 = prefixLength == 0 ? 0 : (0xFFFF_FFFF << UInt64(32 - prefixLength)) & 0xFFFF_FFFF
            return IPAddress(family: .ipv4, high: 0, low: low & mask)
        }
        let highMask: UInt64 = prefixLength >= 64 ? .max : (prefixLength == 0 ? 0 : .max << UInt64(64 - prefixLength))
        let lowBits = prefixLength - 64
        let lowMask: UInt64 = lowBits <= 0 ? 0 : (lowBits >= 64 ? .max : .max << UInt64(64 - lowBits))
        return IPAddress(family: .ipv6, high: high & highMask, low: low & lowMask)
    }

    public var description: String {
        if family == .ipv4 {
            return "\(low >> 24 & 0xFF).\(low >> 16 & 0xFF).\(low >> 8 & 0xFF).\(low & 0xFF)"
        }
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<8 {
            bytes[index] = UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * index))
            bytes[8 + index] = UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * index))
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = bytes.withUnsafeBytes { raw in inet_ntop(AF_INET6, raw.baseAddress, &text, socklen_t(text.count)) }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        if lhs.family != rhs.family { return lhs.family == .ipv4 }
        return (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let network: IPAddress
    public let prefixLength: Int

    /// Parses `ADDRESS/LENGTH`; a bare address is accepted when `allowBareAddress` is
    /// true (Cilium's `fromCIDR` accepts one, `fromCIDRSet.cidr` does not).
    public init?(_ text: String, allowBareAddress: Bool = false) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        if parts.count == 1 {
            guard allowBareAddress, let address = IPAddress(text) else { return nil }
            self.network = address
            self.prefixLength = address.bitWidth
            return
        }
        guard parts.count == 2, let address = IPAddress(String(parts[0])),
              let length = Int(parts[1]), length >= 0, length <= address.bitWidth,
              parts[1].allSatisfy(\.isNumber) else { return nil }
        self.network = address.masked(to: length)
        self.prefixLength = length
    }

    public init(network: IPAddress, prefixLength: Int) {
        self.network = network.masked(to: prefixLength)
        self.prefixLength = prefixLength
    }

    /// True when `address` lies inside this prefix (same family only).
    public func contains(_ address: IPAddress) -> Bool {
        address.family == network.family && address.masked(to: prefixLength) == network
    }

    /// True when `other` is entirely inside this prefix.
    public func contains(_ other: CIDR) -> Bool {
        other.prefixLength >= prefixLength && contains(other.network)
    }

    public var description: String { "\(network)/\(prefixLength)" }
}
