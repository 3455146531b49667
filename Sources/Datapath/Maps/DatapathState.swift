import CSluiceDatapath
import PolicyEngine

/// An IPv4 prefix as the identity map keys it.
public struct IPv4Prefix: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The address in host byte order.
    public var address: UInt32
    public var length: UInt8

    public init(address: UInt32, length: UInt8) {
        self.length = length
        self.address = length == 0 ? 0 : address & (UInt32.max << (32 - UInt32(length)))
    }

    /// Parses `a.b.c.d` or `a.b.c.d/n`.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first else { return nil }
        let octets = first.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var address: UInt32 = 0
        for octet in octets {
            guard let value = UInt8(octet) else { return nil }
            address = address << 8 | UInt32(value)
        }
        var length: UInt8 = 32
        if parts.count == 2 {
            guard let value = UInt8(parts[1]), value <= 32 else { return nil }
            length = value
        }
        self.init(address: address, length: length)
    }

    public var description: String {
        let octets = [24, 16, 8, 0].map { String((address >> UInt32($0)) & 0xff) }
        return octets.joined(separator: ".") + "/\(length)"
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.address, lhs.length) < (rhs.address, rhs.length)
    }
}

/// An IPv6 prefix as the IPv6 identity map (`sluice_ipcache6`) keys it.
public struct IPv6Prefix: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The address's first and last 64 bits, in host byte order (network-order bytes read big-endian).
    public var high: UInt64
    public var low: UInt64
    public var length: UInt8

    public init(high: UInt64, low: UInt64, length: UInt8) {
        let length = min(length, 128)
        self.length = length
        let highMask: UInt64 = length >= 64 ? .max : (length == 0 ? 0 : .max << UInt64(64 - length))
        let lowMask: UInt64 = length <= 64 ? 0 : (length == 128 ? .max : .max << UInt64(128 - length))
        self.high = high & highMask
        self.low = low & lowMask
    }

    /// The IPv6 prefix of `cidr`, or nil when it is IPv4.
    public init?(_ cidr: CIDR) {
        guard cidr.network.family == .ipv6 else { return nil }
        self.init(high: cidr.network.high, low: cidr.network.low, length: UInt8(cidr.prefixLength))
    }

    /// Parses `2001:db8::1` or `2001:db8::/32`.
    public init?(_ text: String) {
        guard let cidr = CIDR(text, allowBareAddress: true) else { return nil }
        self.init(cidr)
    }

    /// The 16 address bytes in network order.
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * $0)) }
    }

    public var address: IPAddress { IPAddress(networkBytes: bytes)! }

    /// True when `other` lies inside this prefix.
    public func contains(_ other: IPv6Prefix) -> Bool {
        other.length >= length && IPv6Prefix(high: other.high, low: other.low, length: length) == self
    }

    public var description: String { "\(address)/\(length)" }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.high, lhs.low, lhs.length) < (rhs.high, rhs.low, rhs.length)
    }
}

public enum PolicyAction: UInt8, Sendable {
    case allow = 1
    case deny = 2
    case redirect = 3
}

public enum PolicyDirection: UInt8, Sendable {
    case ingress = 0
    case egress = 1
}

/// One policy-map key: the local endpoint's identity, the direction, the peer
/// (`Identity.any` = every peer), the port (0 = every port) and the IP protocol number.
public struct PolicyKey: Hashable, Sendable, Comparable {
    public var endpoint: UInt32
    public var direction: PolicyDirection
    public var peer: UInt32
    public var port: UInt16
    public var ipProtocol: UInt8

    public init(endpoint: UInt32, direction: PolicyDirection, peer: UInt32, port: UInt16, ipProtocol: UInt8) {
        self.endpoint = endpoint
        self.direction = direction
        self.peer = peer
        self.port = port
        self.ipProtocol = ipProtocol
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.endpoint, lhs.direction.rawValue, lhs.peer, lhs.port, lhs.ipProtocol)
            < (rhs.endpoint, rhs.direction.rawValue, rhs.peer, rhs.port, rhs.ipProtocol)
    }
}

public struct PolicyEntry: Hashable, Sendable {
    public var action: PolicyAction
    /// Listener port on 127.0.0.1, for `.redirect`.
    public var proxyPort: UInt16
    /// Userspace's reference to the deciding rule, echoed in events.
    public var rule: UInt32

    public init(action: PolicyAction, proxyPort: UInt16 = 0, rule: UInt32 = 0) {
        self.action = action
        self.proxyPort = proxyPort
        self.rule = rule
    }
}

public struct AddressEntry: Hashable, Sendable {
    public var identity: UInt32
    public var isLocalEndpoint: Bool

    public init(identity: UInt32, isLocalEndpoint: Bool) {
        self.identity = identity
        self.isLocalEndpoint = isLocalEndpoint
    }
}

public struct Enforcement: Hashable, Sendable {
    public var ingress: Bool
    public var egress: Bool

    public init(ingress: Bool, egress: Bool) {
        self.ingress = ingress
        self.egress = egress
    }
}

/// Reserved numeric identities, shared with the programs.
public enum NumericIdentity {
    public static let any = UInt32(SLUICE_IDENTITY_ANY)
    public static let host = UInt32(SLUICE_IDENTITY_HOST)
    /// IPv4 addresses nobody claims (reserved:world, world-ipv4).
    public static let world = UInt32(SLUICE_IDENTITY_WORLD)
    /// IPv6 addresses nobody claims (reserved:world, world-ipv6).
    public static let worldIPv6 = UInt32(SLUICE_IDENTITY_WORLD_IPV6)
    /// Other nodes' own addresses (reserved:remote-node).
    public static let remoteNode = UInt32(SLUICE_IDENTITY_REMOTE_NODE)
    public static let firstAllocated = UInt32(SLUICE_IDENTITY_FIRST_USER)
}

/// Everything the maps should hold: written in full at start, then by difference.
public struct DatapathState: Equatable, Sendable {
    public var addresses: [IPv4Prefix: AddressEntry] = [:]
    /// The IPv6 identity map (identities and policy keys are shared with IPv4).
    public var addresses6: [IPv6Prefix: AddressEntry] = [:]
    public var enforcement: [UInt32: Enforcement] = [:]
    public var policy: [PolicyKey: PolicyEntry] = [:]
    /// Names of numeric identities, for status and events.
    public var identityNames: [UInt32: String] = [:]
    /// Names of rule references, for events.
    public var ruleNames: [UInt32: String] = [:]

    public init() {}
}
