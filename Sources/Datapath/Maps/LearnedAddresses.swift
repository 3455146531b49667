import PolicyEngine

/// One endpoint's learned address as the datapath holds it: what it allows and until when.
public struct LearnedEntry: Hashable, Sendable {
    /// The endpoint's numeric identity.
    public var endpoint: UInt32
    /// The learned address, IPv4 or IPv6.
    public var address: IPAddress
    public var grants: [LearnedGrant]
    /// CLOCK_MONOTONIC nanoseconds past which new flows are not allowed.
    public var expires: UInt64

    public init(endpoint: UInt32, address: IPAddress, grants: [LearnedGrant], expires: UInt64) {
        self.endpoint = endpoint
        self.address = address
        self.grants = grants
        self.expires = expires
    }
}

/// Where learned addresses are written: the BPF map or the nftables sets. `write` returns
/// once the datapath enforces them. Called under the learner's lock, from any thread.
public protocol LearnedAddressWriter: AnyObject, Sendable {
    /// Writes `entries`; `replacing` are the earlier versions of some of them (a refreshed
    /// lifetime, changed grants), which must not outlive the write.
    func write(_ entries: [LearnedEntry], replacing: [LearnedEntry]) throws
    func remove(_ entries: [LearnedEntry])
    /// `expires` (of a lifetime of `lifetime` ns) rounded up as this datapath wants it:
    /// answers refreshing an address before the rounded time change nothing and cost no write.
    func roundedExpiry(_ expires: UInt64, lifetime: UInt64) -> UInt64
}

extension LearnedAddressWriter {
    /// To the next whole second.
    public func roundedExpiry(_ expires: UInt64, lifetime: UInt64) -> UInt64 {
        LearnedEntry.roundUp(expires, to: 1_000_000_000)
    }
}

extension LearnedEntry {
    static func roundUp(_ value: UInt64, to step: UInt64) -> UInt64 {
        (value + step - 1) / step * step
    }
}

/// The BPF datapath's `sluice_fqdn` map.
public final class BPFLearnedAddresses: LearnedAddressWriter, @unchecked Sendable {
    private let maps: DatapathMaps

    public init(pinRoot: String) throws {
        maps = try DatapathMaps(pinRoot: pinRoot)
    }

    public func write(_ entries: [LearnedEntry], replacing: [LearnedEntry]) throws {
        for entry in entries {
            try maps.writeLearned(endpoint: entry.endpoint, address: entry.address, grants: entry.grants, expires: entry.expires)
        }
        // An update overwrites in place; only grants the new versions dropped need deleting.
        for old in replacing {
            let kept = entries.first { $0.endpoint == old.endpoint && $0.address == old.address }?.grants ?? []
            let gone = old.grants.filter { grant in !kept.contains { $0.port == grant.port && $0.ipProtocol == grant.ipProtocol } }
            if !gone.isEmpty { maps.deleteLearned(endpoint: old.endpoint, address: old.address, grants: gone) }
        }
    }

    public func remove(_ entries: [LearnedEntry]) {
        for entry in entries { maps.deleteLearned(endpoint: entry.endpoint, address: entry.address, grants: entry.grants) }
    }

    /// Entries the maps hold that `keep` does not: left by an earlier run or a lost update.
    public func removeAll(except keep: [LearnedEntry]) {
        struct Held: Hashable { var endpoint: UInt32; var address: IPAddress; var port: UInt16; var ipProtocol: UInt8 }
        var wanted = Set<Held>()
        for entry in keep {
            for grant in entry.grants {
                wanted.insert(Held(endpoint: entry.endpoint, address: entry.address, port: grant.port, ipProtocol: grant.ipProtocol))
            }
        }
        for held in maps.learnedEntries()
        where !wanted.contains(Held(endpoint: held.endpoint, address: held.address, port: held.port, ipProtocol: held.ipProtocol)) {
            maps.deleteLearned(endpoint: held.endpoint, address: held.address,
                               grants: [LearnedGrant(port: held.port, ipProtocol: held.ipProtocol, entry: PolicyEntry(action: .allow))])
        }
    }
}
