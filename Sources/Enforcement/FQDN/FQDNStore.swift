import Datapath
import Proxy

/// The addresses endpoints learned from allowed DNS answers, with their lifetimes and caps:
/// pure bookkeeping, no I/O (`FQDNLearner` writes the datapath).
///
/// Every record is on three least-recently-learned orders: all records, its endpoint's, and
/// its endpoint's records for its name. A new record past a cap pushes out the oldest of
/// the order that is full, so memory stays bounded whatever names a client asks for, and
/// every eviction is counted.
struct FQDNStore {
    struct Key: Hashable {
        /// IPv4 addresses in host byte order.
        var endpoint: UInt32
        var address: UInt32
    }

    struct NameKey: Hashable {
        var endpoint: UInt32
        var name: String
    }

    struct Record: Equatable {
        var key: Key
        /// The endpoint's numeric identity in the datapath.
        var identity: UInt32
        /// Names the address was learned under, the first being the one it counts against.
        var names: [String]
        var ttl: UInt32
        /// CLOCK_MONOTONIC nanoseconds: TTL (at least the minimum) plus grace from the last answer.
        var expires: UInt64
        var grants: [LearnedGrant]
        /// The rule that allowed it, for `sluice fqdn list`.
        var rule: String

        var entry: LearnedEntry { LearnedEntry(endpoint: identity, address: key.address, grants: grants, expires: expires) }
        var nameKey: NameKey { NameKey(endpoint: key.endpoint, name: names[0]) }
    }

    struct Limits {
        var perName: Int
        var perEndpoint: Int
        var total: Int
    }

    struct Counters: Equatable {
        var learned: UInt64 = 0
        var refreshed: UInt64 = 0
        var expired: UInt64 = 0
        var evictedPerName: UInt64 = 0
        var evictedPerEndpoint: UInt64 = 0
        var evictedTotal: UInt64 = 0
    }

    /// Names remembered per address; more are not added (the first ones already allow it).
    static let maximumNamesPerRecord = 8

    let limits: Limits
    private(set) var records: [Key: Record] = [:]
    private(set) var counters = Counters()
    private var all = LinkedOrder<Key>()
    private var byEndpoint: [UInt32: LinkedOrder<Key>] = [:]
    private var byName: [NameKey: LinkedOrder<Key>] = [:]

    init(limits: Limits) {
        self.limits = limits
    }

    var count: Int { records.count }

    /// Adds `record`, or refreshes the one for the same endpoint and address (names merged,
    /// lifetime extended, grants replaced). Returns the previous version, if any, and the
    /// records evicted to make room.
    mutating func insert(_ record: Record) -> (previous: Record?, evicted: [Record]) {
        if var existing = records[record.key] {
            let previous = existing
            for name in record.names where !existing.names.contains(name) && existing.names.count < Self.maximumNamesPerRecord {
                existing.names.append(name)
            }
            existing.ttl = record.ttl
            existing.expires = max(existing.expires, record.expires)
            existing.grants = record.grants
            existing.identity = record.identity
            existing.rule = record.rule
            records[record.key] = existing
            touch(existing)
            counters.refreshed += 1
            return (previous, [])
        }
        var evicted: [Record] = []
        let nameKey = record.nameKey
        if let order = byName[nameKey], order.count >= limits.perName, let oldest = order.oldest {
            evicted.append(remove(oldest)!)
            counters.evictedPerName += 1
        }
        if let order = byEndpoint[record.key.endpoint], order.count >= limits.perEndpoint, let oldest = order.oldest {
            evicted.append(remove(oldest)!)
            counters.evictedPerEndpoint += 1
        }
        if all.count >= limits.total, let oldest = all.oldest {
            evicted.append(remove(oldest)!)
            counters.evictedTotal += 1
        }
        records[record.key] = record
        all.append(record.key)
        byEndpoint[record.key.endpoint, default: LinkedOrder()].append(record.key)
        byName[nameKey, default: LinkedOrder()].append(record.key)
        counters.learned += 1
        return (nil, evicted)
    }

    /// Removes and returns the records whose lifetime ended at or before `now`.
    mutating func removeExpired(now: UInt64) -> [Record] {
        let ended = records.values.filter { $0.expires <= now }.map(\.key)
        counters.expired += UInt64(ended.count)
        return ended.compactMap { remove($0) }
    }

    @discardableResult
    mutating func remove(_ key: Key) -> Record? {
        guard let record = records.removeValue(forKey: key) else { return nil }
        all.remove(key)
        let nameKey = record.nameKey
        byEndpoint[key.endpoint]?.remove(key)
        if byEndpoint[key.endpoint]?.count == 0 { byEndpoint[key.endpoint] = nil }
        byName[nameKey]?.remove(key)
        if byName[nameKey]?.count == 0 { byName[nameKey] = nil }
        return record
    }

    /// Replaces a record's grants and identity (after a policy change).
    mutating func update(_ key: Key, identity: UInt32, grants: [LearnedGrant], rule: String) {
        records[key]?.identity = identity
        records[key]?.grants = grants
        records[key]?.rule = rule
    }

    private mutating func touch(_ record: Record) {
        all.remove(record.key)
        all.append(record.key)
        byEndpoint[record.key.endpoint]?.remove(record.key)
        byEndpoint[record.key.endpoint]?.append(record.key)
        byName[record.nameKey]?.remove(record.key)
        byName[record.nameKey]?.append(record.key)
    }
}

/// Keys from oldest to newest with O(1) append, remove and oldest.
struct LinkedOrder<Key: Hashable> {
    private struct Link {
        var older: Key?
        var newer: Key?
    }

    private var links: [Key: Link] = [:]
    private(set) var oldest: Key?
    private var newest: Key?

    var count: Int { links.count }

    mutating func append(_ key: Key) {
        guard links[key] == nil else { return }
        links[key] = Link(older: newest, newer: nil)
        if let newest { links[newest]?.newer = key }
        newest = key
        if oldest == nil { oldest = key }
    }

    mutating func remove(_ key: Key) {
        guard let link = links.removeValue(forKey: key) else { return }
        if let older = link.older { links[older]?.newer = link.newer } else { oldest = link.newer }
        if let newer = link.newer { links[newer]?.older = link.older } else { newest = link.older }
    }

    /// Oldest first (for tests and listings).
    var keys: [Key] {
        var result: [Key] = []
        var cursor = oldest
        while let key = cursor {
            result.append(key)
            cursor = links[key]?.newer
        }
        return result
    }
}
