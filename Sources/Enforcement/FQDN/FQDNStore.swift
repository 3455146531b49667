import Datapath
import PolicyEngine
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
        /// The endpoint that asked (either family) and the address it learned (either family).
        var endpoint: IPAddress
        var address: IPAddress
    }

    struct NameKey: Hashable {
        var endpoint: IPAddress
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

    /// A slot's places on the orders (plain integers: moving a slot on its orders copies
    /// no record). Its record is `slotRecords[slot]`.
    private struct Slot {
        /// Where its endpoint's and its name's orders end (`groups` indices).
        var endpointGroup = -1
        var nameGroup = -1
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
    /// Per slot: its record (nil: a free slot), and its record's expiry (`UInt64.max` when
    /// free), which the sweep reads without touching the record.
    private var slotRecords: [Record?] = []
    private var expiries: [UInt64] = []
    private var free: [Int] = []
    /// Where the next `removeExpired` looks first.
    private var sweepCursor = 0
    private var allEnds = Ends()
    /// The ends of every endpoint's and every name's order, found by key once per new record
    /// and by index (in the slot) after that.
    private var groups: [Ends] = []
    private var freeGroups: [Int] = []
    private var endpointGroups: [IPAddress: Int] = [:]
    private var nameGroups: [NameKey: Int] = [:]
    private(set) var counters = Counters()

    init(limits: Limits) {
        self.limits = limits
    }

    var count: Int { index.count }

    subscript(key: Key) -> Record? { index[key].flatMap { slotRecords[$0] } }

    /// Every record (no particular order).
    var records: [Record] { index.values.compactMap { slotRecords[$0] } }

    /// Records oldest first, on the order of all records.
    var oldestFirst: [Record] {
        var result: [Record] = []
        var cursor = allEnds.oldest
        while cursor >= 0 {
            result.append(slotRecords[cursor]!)
            cursor = slots[cursor].all.newer
        }
        return result
    }

    /// Adds `record`, or refreshes the one for the same endpoint and address (names merged,
    /// lifetime extended, grants replaced). Returns the previous version, if any, and the
    /// records evicted to make room.
    mutating func insert(_ record: Record) -> (previous: Record?, evicted: [Record]) {
        if let slot = index[record.key], var existing = slotRecords[slot] {
            let previous = existing
            for name in record.names where !existing.names.contains(name) && existing.names.count < Self.maximumNamesPerRecord {
                existing.names.append(name)
            }
            existing.ttl = record.ttl
            existing.expires = max(existing.expires, record.expires)
            existing.grants = record.grants
            existing.identity = record.identity
            existing.rule = record.rule
            slotRecords[slot] = existing
            expiries[slot] = existing.expires
            touch(slot)
            counters.refreshed += 1
            return (previous, [])
        }
        var evicted: [Record] = []
        let nameKey = record.nameKey
        if let group = nameGroups[nameKey], groups[group].count >= limits.perName, let oldest = remove(slotAt: groups[group].oldest) {
            evicted.append(oldest)
            counters.evictedPerName += 1
        }
        if let group = endpointGroups[record.key.endpoint], groups[group].count >= limits.perEndpoint,
           let oldest = remove(slotAt: groups[group].oldest) {
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
            slots[slot] = Slot()
            slotRecords[slot] = record
            expiries[slot] = record.expires
        } else {
            slot = slots.count
            slots.append(Slot())
            slotRecords.append(record)
            expiries.append(record.expires)
        }
        index[record.key] = slot
        let endpointGroup = endpointGroups[record.key.endpoint] ?? newGroup()
        endpointGroups[record.key.endpoint] = endpointGroup
        let nameGroup = nameGroups[nameKey] ?? newGroup()
        nameGroups[nameKey] = nameGroup
        slots[slot].endpointGroup = endpointGroup
        slots[slot].nameGroup = nameGroup
        Self.link(&slots, slot, .all, &allEnds)
        Self.link(&slots, slot, .endpoint, &groups[endpointGroup])
        Self.link(&slots, slot, .name, &groups[nameGroup])
        counters.learned += 1
        return (nil, evicted)
    }

    /// What `refresh` did.
    enum Refresh: Equatable {
        /// No record for the key, or the names are not all known: learn it in full.
        case unknown
        /// Its lifetime already reached that far.
        case unchanged
        /// Its lifetime moved: the datapath entry before and after.
        case extended(before: LearnedEntry, after: LearnedEntry)
    }

    /// Extends the lifetime of the record for `key` to at least `expires`, when it was
    /// learned under every one of `names` already (an answer that teaches nothing new).
    mutating func refresh(_ key: Key, names: [String], expires: UInt64) -> Refresh {
        guard let slot = index[key] else { return .unknown }
        let known = slotRecords.withUnsafeBufferPointer { records in
            names.allSatisfy { records[slot]?.names.contains($0) ?? false }
        }
        guard known else { return .unknown }
        counters.refreshed += 1
        touch(slot)
        guard expires > expiries[slot] else { return .unchanged }
        let before = slotRecords[slot]!.entry
        slotRecords[slot]!.expires = expires
        expiries[slot] = expires
        return .extended(before: before, after: slotRecords[slot]!.entry)
    }

    /// Removes and returns the records whose lifetime ended at or before `now`, looking at
    /// no more than `slotsToScan` slots from where the last call stopped (so a sweep holds the
    /// learner's lock briefly however many records there are; the datapath ignores expired
    /// entries by itself meanwhile).
    mutating func removeExpired(now: UInt64, slotsToScan: Int = .max) -> [Record] {
        var ended: [Record] = []
        var scanned = 0
        while scanned < min(slotsToScan, slots.count) {
            if sweepCursor >= slots.count { sweepCursor = 0 }
            if expiries[sweepCursor] <= now, let record = remove(slotAt: sweepCursor) {
                ended.append(record)
            }
            sweepCursor += 1
            scanned += 1
        }
        counters.expired += UInt64(ended.count)
        return ended
    }

    @discardableResult
    mutating func remove(_ key: Key) -> Record? {
        guard let slot = index[key] else { return nil }
        return remove(slotAt: slot)
    }

    /// Replaces a record's grants and identity (after a policy change).
    mutating func update(_ key: Key, identity: UInt32, grants: [LearnedGrant], rule: String) {
        guard let slot = index[key] else { return }
        slotRecords[slot]?.identity = identity
        slotRecords[slot]?.grants = grants
        slotRecords[slot]?.rule = rule
    }

    // MARK: Orders

    private mutating func remove(slotAt slot: Int) -> Record? {
        guard slot >= 0, let record = slotRecords[slot] else { return nil }
        index[record.key] = nil
        Self.unlink(&slots, slot, .all, &allEnds)
        let endpointGroup = slots[slot].endpointGroup, nameGroup = slots[slot].nameGroup
        Self.unlink(&slots, slot, .endpoint, &groups[endpointGroup])
        if groups[endpointGroup].count == 0 {
            endpointGroups[record.key.endpoint] = nil
            freeGroups.append(endpointGroup)
        }
        Self.unlink(&slots, slot, .name, &groups[nameGroup])
        if groups[nameGroup].count == 0 {
            nameGroups[record.nameKey] = nil
            freeGroups.append(nameGroup)
        }
        slotRecords[slot] = nil
        expiries[slot] = .max
        free.append(slot)
        return record
    }

    /// Moves a slot to the newest end of its three orders.
    private mutating func touch(_ slot: Int) {
        if allEnds.newest != slot {
            Self.unlink(&slots, slot, .all, &allEnds)
            Self.link(&slots, slot, .all, &allEnds)
        }
        let endpointGroup = slots[slot].endpointGroup, nameGroup = slots[slot].nameGroup
        if groups[endpointGroup].newest != slot {
            Self.unlink(&slots, slot, .endpoint, &groups[endpointGroup])
            Self.link(&slots, slot, .endpoint, &groups[endpointGroup])
        }
        if groups[nameGroup].newest != slot {
            Self.unlink(&slots, slot, .name, &groups[nameGroup])
            Self.link(&slots, slot, .name, &groups[nameGroup])
        }
    }

    private mutating func newGroup() -> Int {
        if let reused = freeGroups.popLast() {
            groups[reused] = Ends()
            return reused
        }
        groups.append(Ends())
        return groups.count - 1
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
