import CBPF
import CSluiceDatapath
import PolicyEngine
#if canImport(Glibc)
import Glibc
#endif

/// Drop reasons and counters, named once for status output and flow records.
public enum DatapathCounter: UInt32, CaseIterable, Sendable {
    case dropPolicyDeny = 1
    case dropPolicyDefault = 2
    case dropProxyUnavailable = 3
    case dropFragment = 4
    case dropUnsupportedL3 = 5
    case dropMalformed = 6
    case dropExtensionHeader = 7
    case dropMappedAddress = 8
    case dropSpoofedHost = 9
    case dropUpstreamGone = 10
    case allowed = 16
    case redirected = 17
    case established = 18
    case proxyPass = 19
    case notIP = 20
    case fqdnAllowed = 21
    case fqdnExpired = 22
    case neighbour = 23
    case upstreamReply = 24

    public var name: String {
        switch self {
        case .dropPolicyDeny: return "drop: policy deny"
        case .dropPolicyDefault: return "drop: default deny"
        case .dropProxyUnavailable: return "drop: proxy unavailable"
        case .dropFragment: return "drop: fragment"
        case .dropUnsupportedL3: return "drop: unsupported L3"
        case .dropMalformed: return "drop: malformed"
        case .dropExtensionHeader: return "drop: IPv6 extension header"
        case .dropMappedAddress: return "drop: IPv4-mapped address"
        case .dropSpoofedHost: return "drop: node address spoofed"
        case .dropUpstreamGone: return "drop: reply without its proxy socket"
        case .allowed: return "allowed (new flows)"
        case .redirected: return "redirected to proxy (packets)"
        case .established: return "established (packets)"
        case .proxyPass: return "proxy's own (packets)"
        case .notIP: return "not IP (packets)"
        case .fqdnAllowed: return "toFQDNs allowed (new flows)"
        case .fqdnExpired: return "toFQDNs expired (new flows)"
        case .neighbour: return "ICMPv6 ND/MLD passed (packets)"
        case .upstreamReply: return "replies to the proxy's upstream (packets)"
        }
    }

    /// The counter's slot for IPv6 packets (IPv4's is `rawValue`).
    public var ipv6Slot: UInt32 { rawValue + UInt32(SLUICE_COUNTER_IPV6) }

    /// The reason text of a drop, in the words of the reference's drop reasons.
    public static func dropReason(_ code: UInt8) -> String {
        switch code {
        case 1: return "POLICY_DENY"
        case 2: return "POLICY_DENIED"
        case 3: return "PROXY_UNAVAILABLE"
        case 4: return "FRAGMENT"
        case 5: return "UNSUPPORTED_L3_PROTOCOL"
        case 6: return "INVALID_PACKET"
        case 7: return "IPV6_EXTENSION_HEADER"
        case 8: return "INVALID_SOURCE_IP"
        case 9: return "IP_SPOOFING"
        case 10: return "PROXY_LOOKUP_FAILED"
        default: return "UNKNOWN_\(code)"
        }
    }
}

/// One drop or redirect reported by the programs.
public struct DatapathEvent: Sendable {
    public enum Kind: Sendable { case drop, redirect, unknown }
    public var kind: Kind
    public var reasonCode: UInt8
    public var direction: PolicyDirection
    public var source: (address: IPAddress, port: UInt16)
    public var destination: (address: IPAddress, port: UInt16)
    public var isIPv6: Bool
    public var ipProtocol: UInt8
    public var sourceIdentity: UInt32
    public var destinationIdentity: UInt32
    public var proxyPort: UInt16
    public var rule: UInt32
    public var interfaceIndex: UInt32

    init(_ raw: sluice_event) {
        switch Int32(raw.kind) {
        case SLUICE_EVENT_DROP: kind = .drop
        case SLUICE_EVENT_REDIRECT: kind = .redirect
        default: kind = .unknown
        }
        reasonCode = raw.reason
        direction = PolicyDirection(rawValue: raw.direction) ?? .ingress
        isIPv6 = raw.family == 6
        source = (Self.address(raw.saddr_be, ipv6: isIPv6), UInt16(bigEndian: raw.sport_be))
        destination = (Self.address(raw.daddr_be, ipv6: isIPv6), UInt16(bigEndian: raw.dport_be))
        ipProtocol = raw.protocol
        sourceIdentity = raw.source_identity
        destinationIdentity = raw.destination_identity
        proxyPort = raw.proxy_port
        rule = raw.rule
        interfaceIndex = raw.ifindex
    }

    static func address(_ words: (UInt32, UInt32, UInt32, UInt32), ipv6: Bool) -> IPAddress {
        let bytes = withUnsafeBytes(of: words) { Array($0) }
        return IPAddress(networkBytes: ipv6 ? bytes : Array(bytes.prefix(4)))!
    }

    public static func dottedQuad(_ address: UInt32) -> String {
        [24, 16, 8, 0].map { String((address >> UInt32($0)) & 0xff) }.joined(separator: ".")
    }
}

/// Reads events from the pinned ring buffer.
public final class DatapathEventReader {
    private var ring: OpaquePointer?
    private let descriptor: Int32
    private var pending: [DatapathEvent] = []

    public init(pinnedAt path: String) throws {
        descriptor = bpf_obj_get(path)
        guard descriptor >= 0 else { throw DatapathError("open pinned ring buffer \(path)", code: errno) }
        let context = Unmanaged.passUnretained(self).toOpaque()
        ring = ring_buffer__new(descriptor, { context, data, size in
            guard let context, let data, size >= MemoryLayout<sluice_event>.size else { return 0 }
            let reader = Unmanaged<DatapathEventReader>.fromOpaque(context).takeUnretainedValue()
            reader.pending.append(DatapathEvent(data.loadUnaligned(as: sluice_event.self)))
            return 0
        }, context, nil)
        guard ring != nil else {
            close(descriptor)
            throw DatapathError("ring_buffer__new(\(path))", code: errno)
        }
    }

    deinit {
        ring_buffer__free(ring)
        close(descriptor)
    }

    /// Waits up to `timeoutMilliseconds` for events and returns those that arrived.
    public func poll(timeoutMilliseconds: Int32) -> [DatapathEvent] {
        _ = ring_buffer__poll(ring, timeoutMilliseconds)
        defer { pending.removeAll(keepingCapacity: true) }
        return pending
    }
}
