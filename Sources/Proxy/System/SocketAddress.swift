#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 socket address (address and port), held as the kernel's own
/// `sockaddr_in` / `sockaddr_in6` bytes so it can be passed to the kernel without
/// conversion. Stored in a `sockaddr_in6`-sized value (28 bytes), not `sockaddr_storage`
/// (128): every connection holds several of these.
public struct SocketAddress: Equatable, Hashable, CustomStringConvertible, Sendable {
    /// `sockaddr_in` (IPv4, in the first 16 bytes) or `sockaddr_in6`; the family field is
    /// at the same offset in both.
    private var storage: sockaddr_in6

    /// Takes an address the kernel wrote into `sockaddr_storage` (IPv4 or IPv6 only).
    public init(storage: sockaddr_storage) {
        var compact = sockaddr_in6()
        withUnsafeBytes(of: storage) { source in
            withUnsafeMutableBytes(of: &compact) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<$0.count])) }
        }
        self.storage = compact
    }

    public var family: Int32 { Int32(storage.sin6_family) }
    public var isIPv6: Bool { family == AF_INET6 }

    public var length: socklen_t {
        socklen_t(isIPv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
    }

    /// Parses `IPv4:PORT`, `[IPv6]:PORT`; returns nil when either part is not valid.
    public init?(_ text: String) {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                  text.index(after: close) < text.endIndex,
                  text[text.index(after: close)] == ":" else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            // An IPv6 host must be bracketed, or its last group would read as the port.
            guard !host.contains(":") else { return nil }
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText), !host.isEmpty else { return nil }
        self.init(host: String(host), port: port)
    }

    /// Builds an address from a numeric host (no name resolution) and a port.
    public init?(host: String, port: UInt16) {
        var storage = sockaddr_in6()
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            withUnsafeMutableBytes(of: &storage) { raw in
                let address = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
                address.pointee.sin_family = sa_family_t(AF_INET)
                address.pointee.sin_port = port.bigEndian
                address.pointee.sin_addr = v4
            }
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            withUnsafeMutableBytes(of: &storage) { raw in
                let address = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
                address.pointee.sin6_family = sa_family_t(AF_INET6)
                address.pointee.sin6_port = port.bigEndian
                address.pointee.sin6_addr = v6
            }
        } else {
            return nil
        }
        self.storage = storage
    }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            isIPv6 ? UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
                   : UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
        }
    }

    /// The same host with another port (`sin_port` and `sin6_port` share their offset).
    public func withPort(_ port: UInt16) -> SocketAddress {
        var copy = self
        withUnsafeMutableBytes(of: &copy.storage) { raw in
            raw.storeBytes(of: port.bigEndian, toByteOffset: 2, as: UInt16.self)
        }
        return copy
    }

    /// The numeric host, without the port.
    public var host: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        withUnsafeBytes(of: storage) { raw in
            if isIPv6 {
                var address = raw.load(as: sockaddr_in6.self).sin6_addr
                _ = inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            } else {
                var address = raw.load(as: sockaddr_in.self).sin_addr
                _ = inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
            }
        }
        return text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.family == rhs.family && lhs.port == rhs.port && lhs.hostKey == rhs.hostKey
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(family)
        hasher.combine(port)
        withUnsafeBytes(of: storage) { raw in
            if isIPv6 {
                withUnsafeBytes(of: raw.load(as: sockaddr_in6.self).sin6_addr) { hasher.combine(bytes: $0) }
            } else {
                hasher.combine(raw.load(as: sockaddr_in.self).sin_addr.s_addr)
            }
        }
    }

    /// The host part as plain integers, for use as a dictionary key without formatting text.
    public struct HostKey: Hashable, Sendable {
        let high: UInt64
        let low: UInt64
    }

    public var hostKey: HostKey {
        withUnsafeBytes(of: storage) { raw in
            if isIPv6 {
                let address = raw.load(as: sockaddr_in6.self).sin6_addr
                return withUnsafeBytes(of: address) { bytes in
                    HostKey(high: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
                            low: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                }
            }
            return HostKey(high: UInt64.max, low: UInt64(raw.load(as: sockaddr_in.self).sin_addr.s_addr))
        }
    }

    /// Calls `body` with the address as a `sockaddr` pointer and its length.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}
