import CSluiceDatapath

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
    public static let world = UInt32(SLUICE_IDENTITY_WORLD)
    public static let firstAllocated = UInt32(SLUICE_IDENTITY_FIRST_USER)
}

/// Everything the maps should hold: written in full at start, then by difference.
public struct DatapathState: Equatable, Sendable {
    public var addresses: [IPv4Prefix: AddressEntry] = [:]
    public var enforcement: [UInt32: Enforcement] = [:]
    public var policy: [PolicyKey: PolicyEntry] = [:]
    /// Names of numeric identities, for status and events.
    public var identityNames: [UInt32: String] = [:]
    /// Names of rule references, for events.
    public var ruleNames: [UInt32: String] = [:]

    public init() {}
}
