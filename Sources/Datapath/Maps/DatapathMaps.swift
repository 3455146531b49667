import CBPF
import CSluiceDatapath
import PolicyEngine
#if canImport(Glibc)
import Glibc
#endif

/// The datapath's pinned maps under one pin root, with typed access and synchronisation.
public final class DatapathMaps {
    public static let names = ["sluice_ipcache", "sluice_ipcache6", "sluice_enforce", "sluice_policy", "sluice_ct",
                               "sluice_ct6", "sluice_counters", "sluice_events", "sluice_listeners", "sluice_fqdn", "sluice_fqdn6"]

    public let pinRoot: String
    let addresses: BPFMap<sluice_ipcache_key, sluice_ipcache_value>
    let addresses6: BPFMap<sluice_ipcache6_key, sluice_ipcache_value>
    let enforcement: BPFMap<UInt32, sluice_enforcement>
    let policy: BPFMap<sluice_policy_key, sluice_policy_value>
    let connections: BPFMap<sluice_ct_key, sluice_ct_value>
    let connections6: BPFMap<sluice_ct6_key, sluice_ct_value>
    let learned: BPFMap<sluice_fqdn_key, sluice_fqdn_value>
    let learned6: BPFMap<sluice_fqdn6_key, sluice_fqdn_value>
    public let counters: CounterMap

    public init(pinRoot: String) throws {
        self.pinRoot = pinRoot
        addresses = try BPFMap(pinnedAt: "\(pinRoot)/sluice_ipcache")
        addresses6 = try BPFMap(pinnedAt: "\(pinRoot)/sluice_ipcache6")
        enforcement = try BPFMap(pinnedAt: "\(pinRoot)/sluice_enforce")
        policy = try BPFMap(pinnedAt: "\(pinRoot)/sluice_policy")
        connections = try BPFMap(pinnedAt: "\(pinRoot)/sluice_ct")
        connections6 = try BPFMap(pinnedAt: "\(pinRoot)/sluice_ct6")
        learned = try BPFMap(pinnedAt: "\(pinRoot)/sluice_fqdn")
        learned6 = try BPFMap(pinnedAt: "\(pinRoot)/sluice_fqdn6")
        counters = try CounterMap(pinnedAt: "\(pinRoot)/sluice_counters")
    }

    public var eventsPath: String { "\(pinRoot)/sluice_events" }

    /// Registers the proxy's transparent TCP listener on `port` (of 127.0.0.1, or of [::1]
    /// when `ipv6`) for the sk_lookup program (which hands it new SYNs that met a TIME_WAIT socket).
    public func registerListener(port: UInt16, descriptor: Int32, ipv6: Bool? = nil) throws {
        let ipv6 = ipv6 ?? Self.isIPv6Socket(descriptor)
        let map = bpf_obj_get("\(pinRoot)/sluice_listeners")
        guard map >= 0 else { throw DatapathError("open pinned map \(pinRoot)/sluice_listeners", code: errno) }
        defer { close(map) }
        var key = UInt32(port) | (ipv6 ? UInt32(SLUICE_LISTENER_IPV6) : 0)
        var value = UInt64(descriptor)
        let result = bpf_map_update_elem(map, &key, &value, UInt64(BPF_ANY))
        guard result == 0 else { throw DatapathError.libbpf("register listener :\(port) in sluice_listeners", result) }
    }

    /// True when `descriptor` is an AF_INET6 socket.
    static func isIPv6Socket(_ descriptor: Int32) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return result == 0 && Int32(storage.ss_family) == AF_INET6
    }

    /// Entry counts per map, for status.
    public func entryCounts() -> [(String, Int)] {
        [("sluice_ipcache", addresses.count), ("sluice_ipcache6", addresses6.count), ("sluice_enforce", enforcement.count),
         ("sluice_policy", policy.count), ("sluice_ct", connections.count), ("sluice_ct6", connections6.count),
         ("sluice_fqdn", learned.count), ("sluice_fqdn6", learned6.count)]
    }

    /// Entries and capacity per map, for metrics (`sluice_datapath_map_entries`).
    public func fill() -> [(name: String, entries: Int, capacity: Int)] {
        [("sluice_ipcache", addresses.count, addresses.capacity), ("sluice_enforce", enforcement.count, enforcement.capacity),
         ("sluice_policy", policy.count, policy.capacity), ("sluice_ct", connections.count, connections.capacity),
         ("sluice_fqdn", learned.count, learned.capacity)]
    }

    /// What the maps hold now (connection tracking excluded).
    public func read() -> DatapathState {
        var state = DatapathState()
        for key in addresses.keys() {
            guard let value = addresses.lookup(key) else { continue }
            state.addresses[IPv4Prefix(address: UInt32(bigEndian: key.addr_be), length: UInt8(key.prefixlen))] =
                AddressEntry(identity: value.identity, isLocalEndpoint: value.flags & UInt32(SLUICE_ADDRESS_LOCAL_ENDPOINT) != 0)
        }
        for key in addresses6.keys() {
            guard let value = addresses6.lookup(key) else { continue }
            state.addresses6[Self.prefix(key)] =
                AddressEntry(identity: value.identity, isLocalEndpoint: value.flags & UInt32(SLUICE_ADDRESS_LOCAL_ENDPOINT) != 0)
        }
        for key in enforcement.keys() {
            guard let value = enforcement.lookup(key) else { continue }
            state.enforcement[key] = Enforcement(ingress: value.ingress != 0, egress: value.egress != 0)
        }
        for key in policy.keys() {
            guard let value = policy.lookup(key), let action = PolicyAction(rawValue: value.action),
                  let direction = PolicyDirection(rawValue: key.direction) else { continue }
            state.policy[PolicyKey(endpoint: key.endpoint_identity, direction: direction, peer: key.peer_identity,
                                   port: key.port, ipProtocol: key.protocol)] =
                PolicyEntry(action: action, proxyPort: value.proxy_port, rule: value.rule)
        }
        return state
    }

    /// What a synchronisation changed.
    public struct SyncReport: Sendable, CustomStringConvertible {
        public var written = 0
        public var deleted = 0
        public var unchanged = 0
        public var description: String { "\(written) written, \(deleted) deleted, \(unchanged) unchanged" }
    }

    /// Makes the maps hold exactly `desired`, touching only entries that differ.
    ///
    /// Order matters for traffic in flight: new allows and addresses are written before
    /// stale entries are deleted, and connection tracking is left alone, so an established
    /// allowed flow is not disturbed by changes that do not concern it. Enforcement is
    /// switched on last for new endpoints (after their allows exist) and off first.
    @discardableResult
    public func synchronize(to desired: DatapathState) throws -> SyncReport {
        let current = read()
        var report = SyncReport()

        for (prefix, entry) in desired.addresses.sorted(by: { $0.key < $1.key }) {
            if current.addresses[prefix] == entry { report.unchanged += 1; continue }
            try addresses.update(Self.key(prefix), sluice_ipcache_value(
                identity: entry.identity, flags: entry.isLocalEndpoint ? UInt32(SLUICE_ADDRESS_LOCAL_ENDPOINT) : 0))
            report.written += 1
        }
        for (prefix, entry) in desired.addresses6.sorted(by: { $0.key < $1.key }) {
            if current.addresses6[prefix] == entry { report.unchanged += 1; continue }
            try addresses6.update(Self.key(prefix), Self.value(entry))
            report.written += 1
        }
        for (key, entry) in desired.policy.sorted(by: { $0.key < $1.key }) {
            if current.policy[key] == entry { report.unchanged += 1; continue }
            try policy.update(Self.key(key), sluice_policy_value(action: entry.action.rawValue, pad: 0,
                                                                 proxy_port: entry.proxyPort, rule: entry.rule))
            report.written += 1
        }
        for (identity, entry) in current.enforcement where desired.enforcement[identity] != entry {
            if let wanted = desired.enforcement[identity] {
                try enforcement.update(identity, Self.value(wanted))
            } else {
                enforcement.delete(identity)
            }
            report.written += 1
        }
        for (identity, entry) in desired.enforcement where current.enforcement[identity] == nil {
            try enforcement.update(identity, Self.value(entry))
            report.written += 1
        }
        report.unchanged += desired.enforcement.filter { current.enforcement[$0.key] == $0.value }.count
        for key in current.policy.keys where desired.policy[key] == nil {
            policy.delete(Self.key(key))
            report.deleted += 1
        }
        for prefix in current.addresses.keys where desired.addresses[prefix] == nil {
            addresses.delete(Self.key(prefix))
            report.deleted += 1
        }
        for prefix in current.addresses6.keys where desired.addresses6[prefix] == nil {
            addresses6.delete(Self.key(prefix))
            report.deleted += 1
        }
        return report
    }

    // MARK: Learned addresses (toFQDNs)

    /// Lets `endpoint` (a numeric identity) reach `address` (IPv4: `sluice_fqdn`, IPv6:
    /// `sluice_fqdn6`) as `grants` say, until `expires` (`bpf_ktime_get_ns`, i.e.
    /// CLOCK_MONOTONIC; 0 = never).
    public func writeLearned(endpoint: UInt32, address: IPAddress, grants: [LearnedGrant], expires: UInt64) throws {
        for grant in grants {
            let value = sluice_fqdn_value(expires_ns: expires, action: grant.entry.action.rawValue, pad: 0,
                                          proxy_port: grant.entry.proxyPort, rule: grant.entry.rule)
            if address.family == .ipv6 {
                try learned6.update(Self.key6(endpoint: endpoint, address: address, port: grant.port, ipProtocol: grant.ipProtocol), value)
            } else {
                try learned.update(Self.key(endpoint: endpoint, address: address, grant: grant), value)
            }
        }
    }

    /// Removes what `writeLearned` wrote for these grants.
    public func deleteLearned(endpoint: UInt32, address: IPAddress, grants: [LearnedGrant]) {
        for grant in grants {
            if address.family == .ipv6 {
                learned6.delete(Self.key6(endpoint: endpoint, address: address, port: grant.port, ipProtocol: grant.ipProtocol))
            } else {
                learned.delete(Self.key(endpoint: endpoint, address: address, grant: grant))
            }
        }
    }

    /// Every learned entry of both families, as (endpoint, address, port, protocol, expiry).
    public func learnedEntries() -> [(endpoint: UInt32, address: IPAddress, port: UInt16, ipProtocol: UInt8, expires: UInt64)] {
        let ipv4: [(endpoint: UInt32, address: IPAddress, port: UInt16, ipProtocol: UInt8, expires: UInt64)] = learned.keys().compactMap { key in
            guard let value = learned.lookup(key) else { return nil }
            let bytes = withUnsafeBytes(of: key.addr_be) { Array($0) }
            return (key.endpoint_identity, IPAddress(networkBytes: bytes)!, key.port, key.protocol, value.expires_ns)
        }
        let ipv6: [(endpoint: UInt32, address: IPAddress, port: UInt16, ipProtocol: UInt8, expires: UInt64)] = learned6.keys().compactMap { key in
            guard let value = learned6.lookup(key) else { return nil }
            let bytes = withUnsafeBytes(of: key.addr_be) { Array($0) }
            return (key.endpoint_identity, IPAddress(networkBytes: bytes)!, key.port, key.protocol, value.expires_ns)
        }
        return ipv4 + ipv6
    }

    /// Forgets every learned address.
    public func clearLearned() {
        for key in learned.keys() { learned.delete(key) }
        for key in learned6.keys() { learned6.delete(key) }
    }

    static func key(endpoint: UInt32, address: IPAddress, grant: LearnedGrant) -> sluice_fqdn_key {
        sluice_fqdn_key(endpoint_identity: endpoint, addr_be: UInt32(truncatingIfNeeded: address.low).bigEndian, port: grant.port,
                        protocol: grant.ipProtocol, pad: 0)
    }

    static func key6(endpoint: UInt32, address: IPAddress, port: UInt16, ipProtocol: UInt8) -> sluice_fqdn6_key {
        var key = sluice_fqdn6_key()
        key.endpoint_identity = endpoint
        key.port = port
        key.protocol = ipProtocol
        let bytes = IPv6Prefix(high: address.high, low: address.low, length: 128).bytes
        withUnsafeMutableBytes(of: &key.addr_be) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        return key
    }

    /// Forgets every tracked connection (tests, and `--fresh`).
    public func clearConnections() {
        for key in connections.keys() { connections.delete(key) }
        for key in connections6.keys() { connections6.delete(key) }
    }

    static func key(_ prefix: IPv4Prefix) -> sluice_ipcache_key {
        sluice_ipcache_key(prefixlen: UInt32(prefix.length), addr_be: prefix.address.bigEndian)
    }

    static func key(_ prefix: IPv6Prefix) -> sluice_ipcache6_key {
        var key = sluice_ipcache6_key()
        key.prefixlen = UInt32(prefix.length)
        withUnsafeMutableBytes(of: &key.addr_be) { raw in
            for (index, byte) in prefix.bytes.enumerated() { raw[index] = byte }
        }
        return key
    }

    static func prefix(_ key: sluice_ipcache6_key) -> IPv6Prefix {
        let bytes = withUnsafeBytes(of: key.addr_be) { Array($0) }
        let address = IPAddress(networkBytes: bytes)!
        return IPv6Prefix(high: address.high, low: address.low, length: UInt8(min(key.prefixlen, 128)))
    }

    static func value(_ entry: AddressEntry) -> sluice_ipcache_value {
        sluice_ipcache_value(identity: entry.identity, flags: entry.isLocalEndpoint ? UInt32(SLUICE_ADDRESS_LOCAL_ENDPOINT) : 0)
    }

    static func key(_ key: PolicyKey) -> sluice_policy_key {
        sluice_policy_key(endpoint_identity: key.endpoint, peer_identity: key.peer, port: key.port,
                          protocol: key.ipProtocol, direction: key.direction.rawValue)
    }

    static func value(_ entry: Enforcement) -> sluice_enforcement {
        sluice_enforcement(ingress: entry.ingress ? 1 : 0, egress: entry.egress ? 1 : 0, pad: (0, 0))
    }
}
