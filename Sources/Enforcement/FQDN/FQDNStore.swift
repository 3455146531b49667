import Datapath
import Proxy

/// The addresses endpoints learned from allowed DNS answers, with their lifetimes and caps:
/// pure bookkeeping, no I/O (`FQDNLearner` writes the datapath).
///
/// Every record is on three least-recently-learned orders: all records, its endpoint's, and
/// its endpoint's records for its name. A new record past a cap pushes out the oldest of
/// the order that is full, so memory stays bounded whatever names a client asks for, and
/// every eviction is counted. Records live in slots linked by index, so learning an address
/// again (the common case) moves it to the front of its orders without any hashing.
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

    /// The three orders a slot is on.
    private enum Order { case all, endpoint, name }

    private struct Links {
        var older = -1
        var newer = -1
    }

    private struct Ends {
        var oldest = -1
        var newest = -1
        var count = 0
    }

    private struct Slot {
        var record: Record?
        var all = Links()
        var endpoint = Links()
        var name = Links()

        subscript(order: Order) -> Links {
            get {
                switch order {
                case .all: return all
                case .endpoint: return endpoint
                case .name: return name
                }
            }
            set {
                switch order {
                case .all: all = newValue
                case .endpoint: endpoint = newValue
                case .name: name = newValue
                }
            }
        }
    }

    let limits: Limits
    private var index: [Key: Int] = [:]
    private var slots: [Slot] = []
    private var free: [Int] = []
    private var allEnds = Ends()
    private var endpointEnds: [UInt32: Ends] = [:]
    private var nameEnds: [NameKey: Ends] = [:]
    private(set) var counters = Counters()

    init(limits: Limits) {
        self.limits = limits
    }

    var count: Int { index.count }

    subscript(key: Key) -> Record? { index[key].flatMap { slots[$0].record } }

    /// Every record (no particular order).
    var records: [Record] { index.values.compactMap { slots[$0].record } }

    /// Records oldest first, on the order of all records.
    var oldestFirst: [Record] {
        var result: [Record] = []
        var cursor = allEnds.oldest
        while cursor >= 0 {
            result.append(slots[cursor].record!)
            cursor = slots[cursor].all.newer
        }
        return result
    }

    /// Adds `record`, or refreshes the one for the same endpoint and address (names merged,
    /// lifetime extended, grants replaced). Returns the previous version, if any, and the
    /// records evicted to make room.
    mutating func insert(_ record: Record) -> (previous: Record?, evicted: [Record]) {
        if let slot = index[record.key], var existing = slots[slot].record {
            let previous = existing
            for name in record.names where !existing.names.contains(name) && existing.names.count < Self.maximumNamesPerRecord {
                existing.names.append(name)
            }
            existing.ttl = record.ttl
            existing.expires = max(existing.expires, record.expires)
            existing.grants = record.grants
            existing.identity = record.identity
            existing.rule = record.rule
            slots[slot].record = existing
            touch(slot, nameKey: existing.nameKey)
            counters.refreshed += 1
            return (previous, [])
        }
        var evicted: [Record] = []
        let nameKey = record.nameKey
        if let ends = nameEnds[nameKey], ends.count >= limits.perName, let oldest = remove(slotAt: ends.oldest) {
            evicted.append(oldest)
            counters.evictedPerName += 1
        }
        if let ends = endpointEnds[record.key.endpoint], ends.count >= limits.perEndpoint,
           let oldest = remove(slotAt: ends.oldest) {
            evicted.append(oldest)
            counters.evictedPerEndpoint += 1
        }
        if allEnds.count >= limits.total, let oldest = remove(slotAt: allEnds.oldest) {
            evicted.append(oldest)
            counters.evictedTotal += 1
        }
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            slots[slot] = Slot(record: record)
        } else {
            slot = slots.count
            slots.append(Slot(record: record))
        }
        index[record.key] = slot
        Self.link(&slots, slot, .all, &allEnds)
        Self.link(&slots, slot, .endpoint, &endpointEnds[record.key.endpoint, default: Ends()])
        Self.link(&slots, slot, .name, &nameEnds[nameKey, default: Ends()])
        counters.learned += 1
        return (nil, evicted)
    }

    /// Extends a record's lifetime to at least `expires` (an answer that taught nothing new);
    /// returns the record before and after, or nil when there is none.
    mutating func refresh(_ key: Key, expires: UInt64) -> (before: Record, after: Record)? {
        guard let slot = index[key], var record = slots[slot].record else { return nil }
        let before = record
        record.expires = max(record.expires, expires)
        slots[slot].record = record
        touch(slot, nameKey: record.nameKey)
        counters.refreshed += 1
        return (before, record)
    }

    /// Removes and returns the records whose lifetime ended at or before `now`.
    mutating func removeExpired(now: UInt64) -> [Record] {
        let ended = index.values.filter { slots[$0].record.map { $0.expires <= now } ?? false }
        counters.expired += UInt64(ended.count)
        return ended.compactMap { remove(slotAt: $0) }
    }

    @discardableResult
    mutating func remove(_ key: Key) -> Record? {
        guard let slot = index[key] else { return nil }
        return remove(slotAt: slot)
    }

    /// Replaces a record's grants and identity (after a policy change).
    mutating func update(_ key: Key, identity: UInt32, grants: [LearnedGrant], rule: String) {
        guard let slot = index[key] else { return }
        slots[slot].record?.identity = identity
        slots[slot].record?.grants = grants
        slots[slot].record?.rule = rule
    }

    // MARK: Orders

    private mutating func remove(slotAt slot: Int) -> Record? {
        guard slot >= 0, let record = slots[slot].record else { return nil }
        index[record.key] = nil
        Self.unlink(&slots, slot, .all, &allEnds)
        let nameKey = record.nameKey
        Self.unlink(&slots, slot, .endpoint, &endpointEnds[record.key.endpoint, default: Ends()])
        if endpointEnds[record.key.endpoint]?.count == 0 { endpointEnds[record.key.endpoint] = nil }
        Self.unlink(&slots, slot, .name, &nameEnds[nameKey, default: Ends()])
        if nameEnds[nameKey]?.count == 0 { nameEnds[nameKey] = nil }
        slots[slot].record = nil
        free.append(slot)
        return record
    }

    /// Moves a slot to the newest end of its three orders.
    private mutating func touch(_ slot: Int, nameKey: NameKey) {
        if allEnds.newest != slot {
            Self.unlink(&slots, slot, .all, &allEnds)
            Self.link(&slots, slot, .all, &allEnds)
        }
        let endpoint = slots[slot].record!.key.endpoint
        if endpointEnds[endpoint]?.newest != slot {
            Self.unlink(&slots, slot, .endpoint, &endpointEnds[endpoint, default: Ends()])
            Self.link(&slots, slot, .endpoint, &endpointEnds[endpoint, default: Ends()])
        }
        if nameEnds[nameKey]?.newest != slot {
            Self.unlink(&slots, slot, .name, &nameEnds[nameKey, default: Ends()])
            Self.link(&slots, slot, .name, &nameEnds[nameKey, default: Ends()])
        }
    }

    private static func link(_ slots: inout [Slot], _ slot: Int, _ order: Order, _ ends: inout Ends) {
        slots[slot][order] = Links(older: ends.newest, newer: -1)
        if ends.newest >= 0 { slots[ends.newest][order].newer = slot }
        ends.newest = slot
        if ends.oldest < 0 { ends.oldest = slot }
        ends.count += 1
    }

    private static func unlink(_ slots: inout [Slot], _ slot: Int, _ order: Order, _ ends: inout Ends) {
        let links = slots[slot][order]
        if links.older >= 0 { slots[links.older][order].newer = links.newer } else { ends.oldest = links.newer }
        if links.newer >= 0 { slots[links.newer][order].older = links.older } else { ends.newest = links.older }
        slots[slot][order] = Links()
        ends.count -= 1
    }
}
