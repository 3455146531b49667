import CBPF
import CSluiceDatapath
#if canImport(Glibc)
import Glibc
#endif

/// The datapath's pinned maps under one pin root, with typed access and synchronisation.
public final class DatapathMaps {
    public static let names = ["sluice_ipcache", "sluice_enforce", "sluice_policy", "sluice_ct",
                               "sluice_counters", "sluice_events", "sluice_listeners", "sluice_fqdn"]

    public let pinRoot: String
    let addresses: BPFMap<sluice_ipcache_key, sluice_ipcache_value>
    let enforcement: BPFMap<UInt32, sluice_enforcement>
    let policy: BPFMap<sluice_policy_key, sluice_policy_value>
    let connections: BPFMap<sluice_ct_key, sluice_ct_value>
    let learned: BPFMap<sluice_fqdn_key, sluice_fqdn_value>
    public let counters: CounterMap

    public init(pinRoot: String) throws {
        self.pinRoot = pinRoot
        addresses = try BPFMap(pinnedAt: "\(pinRoot)/sluice_ipcache")
        enforcement = try BPFMap(pinnedAt: "\(pinRoot)/sluice_enforce")
        policy = try BPFMap(pinnedAt: "\(pinRoot)/sluice_policy")
        connections = try BPFMap(pinnedAt: "\(pinRoot)/sluice_ct")
        learned = try BPFMap(pinnedAt: "\(pinRoot)/sluice_fqdn")
        counters = try CounterMap(pinnedAt: "\(pinRoot)/sluice_counters")
    }

    public var eventsPath: String { "\(pinRoot)/sluice_events" }

    /// Registers the proxy's transparent TCP listener on `port` for the sk_lookup program
    /// (which hands it new SYNs that met a TIME_WAIT socket).
    public func registerListener(port: UInt16, descriptor: Int32) throws {
        let map = bpf_obj_get("\(pinRoot)/sluice_listeners")
        guard map >= 0 else { throw DatapathError("open pinned map \(pinRoot)/sluice_listeners", code: errno) }
        defer { close(map) }
        var key = UInt32(port)
        var value = UInt64(descriptor)
        let result = bpf_map_update_elem(map, &key, &value, UInt64(BPF_ANY))
        guard result == 0 else { throw DatapathError.libbpf("register listener :\(port) in sluice_listeners", result) }
    }

    /// Entry counts per map, for status.
    public func entryCounts() -> [(String, Int)] {
        [("sluice_ipcache", addresses.count), ("sluice_enforce", enforcement.count),
         ("sluice_policy", policy.count), ("sluice_ct", connections.count), ("sluice_fqdn", learned.count)]
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
        return report
    }

    // MARK: Learned addresses (toFQDNs)

    /// Lets `endpoint` (a numeric identity) reach `address` (IPv4, host order) as `grants`
    /// say, until `expires` (`bpf_ktime_get_ns`, i.e. CLOCK_MONOTONIC; 0 = never).
    public func writeLearned(endpoint: UInt32, address: UInt32, grants: [LearnedGrant], expires: UInt64) throws {
        for grant in grants {
            try learned.update(Self.key(endpoint: endpoint, address: address, grant: grant),
                               sluice_fqdn_value(expires_ns: expires, action: grant.entry.action.rawValue, pad: 0,
                                                 proxy_port: grant.entry.proxyPort, rule: grant.entry.rule))
        }
    }

    /// Removes what `writeLearned` wrote for these grants.
    public func deleteLearned(endpoint: UInt32, address: UInt32, grants: [LearnedGrant]) {
        for grant in grants { learned.delete(Self.key(endpoint: endpoint, address: address, grant: grant)) }
    }

    /// Every learned entry, as (endpoint, address in host order, port, protocol).
    public func learnedEntries() -> [(endpoint: UInt32, address: UInt32, port: UInt16, ipProtocol: UInt8, expires: UInt64)] {
        learned.keys().compactMap { key in
            guard let value = learned.lookup(key) else { return nil }
            return (key.endpoint_identity, UInt32(bigEndian: key.addr_be), key.port, key.protocol, value.expires_ns)
        }
    }

    /// Forgets every learned address.
    public func clearLearned() {
        for key in learned.keys() { learned.delete(key) }
    }

    static func key(endpoint: UInt32, address: UInt32, grant: LearnedGrant) -> sluice_fqdn_key {
        sluice_fqdn_key(endpoint_identity: endpoint, addr_be: address.bigEndian, port: grant.port,
                        protocol: grant.ipProtocol, pad: 0)
    }

    /// Forgets every tracked connection (tests, and `--fresh`).
    public func clearConnections() {
        for key in connections.keys() { connections.delete(key) }
    }

    static func key(_ prefix: IPv4Prefix) -> sluice_ipcache_key {
        sluice_ipcache_key(prefixlen: UInt32(prefix.length), addr_be: prefix.address.bigEndian)
    }

    static func key(_ key: PolicyKey) -> sluice_policy_key {
        sluice_policy_key(endpoint_identity: key.endpoint, peer_identity: key.peer, port: key.port,
                          protocol: key.ipProtocol, direction: key.direction.rawValue)
    }

    static func value(_ entry: Enforcement) -> sluice_enforcement {
        sluice_enforcement(ingress: entry.ingress ? 1 : 0, egress: entry.egress ? 1 : 0, pad: (0, 0))
    }
}
