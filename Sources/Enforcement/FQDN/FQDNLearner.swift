import Datapath
import Foundation
import PolicyEngine
import Proxy
import Synchronization

/// toFQDNs: turns the addresses of allowed DNS answers into datapath entries that let the
/// endpoint which asked reach them, before the answer is released (DNS sessions call
/// `learn` and wait for it).
///
/// What an address allows is the policy engine's answer for the names it was learned under
/// (`FQDNPolicy.grants`), so toFQDNs with `toPorts`, and with L7 rules (a redirect to the
/// proxy), mean what they mean elsewhere. An address stays for its TTL (raised to
/// `fqdn.minimumTTL`) plus `fqdn.grace`; connections opened meanwhile are tracked by the
/// datapath and outlive it. Records are capped per name, per endpoint and in all, oldest
/// evicted first and counted; they are saved to `fqdn.stateFile` and restored at start, so
/// a restart does not cut egress that was allowed.
public final class FQDNLearner: FQDNLearning, @unchecked Sendable {
    private struct GrantKey: Hashable {
        var identity: UInt32
        /// `FQDNPolicy.signature` of the names.
        var signature: [Bool]
    }

    final class PolicyHolder: Sendable {
        let policy: FQDNPolicy
        init(_ policy: FQDNPolicy) { self.policy = policy }
    }

    private struct State {
        var store: FQDNStore
        /// Held by reference: an answer reads it without copying the policy's parts.
        var policy: PolicyHolder?
        var writer: LearnedAddressWriter?
        var grants: [GrantKey: (grants: [LearnedGrant], rule: String?)] = [:]
        /// Answer-to-map-write latencies in microseconds, the last `latencySamples` of them.
        var latencies: [UInt32] = []
        var latencyCursor = 0
        var latencyCount: UInt64 = 0
        var writeFailures: UInt64 = 0
        var dirty = false
        /// Records whose lifetime an answer extended while the datapath's copy still had more
        /// than `extensionHorizon` to live: not written yet, with the expiry the datapath
        /// holds for them (`writeDueExtensions` writes each before that comes near).
        var deferred: [FQDNStore.Key: UInt64] = [:]
    }

    /// Grant lists remembered per (endpoint identity, names' signature); cleared on policy changes.
    static let grantCacheLimit = 4_096
    static let latencySamples = 65_536

    /// An answer that only extends an address's lifetime is written into the datapath at
    /// once when the datapath's copy would expire within this (nanoseconds); otherwise it
    /// waits for the maintenance tick (every 100 ms: `expire`), which writes it once the
    /// copy comes within this of expiring, with the latest lifetime. What the datapath
    /// enforces is the same either way (the address is allowed until its latest answer's
    /// TTL plus grace, the datapath copy never lapsing before that); a name answered many
    /// times a second costs a map write per lifetime instead of one per second.
    public static let extensionHorizon: UInt64 = 5_000_000_000
    /// Extensions waiting at most: past it an extension is written at once. A deferred
    /// record the store evicts is forgotten only when its write falls due, so without a cap a
    /// stream of names answered twice, then evicted, would grow the list for as long as
    /// their lifetimes run.
    public static let maximumDeferred = 65_536

    public let settings: FQDNSettings
    /// The state file, resolved; nil keeps records in memory only.
    public let stateFile: String?
    private let clock: @Sendable () -> UInt64
    private let wallClock: @Sendable () -> Double
    private let report: @Sendable (String) -> Void
    private let state: Mutex<State>

    public init(settings: FQDNSettings, stateFile: String?,
                clock: @escaping @Sendable () -> UInt64 = { MonotonicClock.now() },
                wallClock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 },
                report: @escaping @Sendable (String) -> Void = { StandardError.line($0) }) {
        self.settings = settings
        self.stateFile = stateFile
        self.clock = clock
        self.wallClock = wallClock
        self.report = report
        state = Mutex(State(store: FQDNStore(limits: .init(perName: settings.maximumAddressesPerName,
                                                           perEndpoint: settings.maximumAddressesPerEndpoint,
                                                           total: settings.maximumAddresses))))
    }

    // MARK: Learning

    /// The shortest lifetime an address gets, whatever the TTL (0 included) and the settings
    /// say: the client that asked must still have time to connect.
    public static let minimumLifetime: UInt64 = 1_000_000_000

    public func learn(_ answer: LearnedAnswer) {
        let lifetime = max(Self.minimumLifetime, UInt64(max(answer.ttl, settings.minimumTTL)) * 1_000_000_000 + settings.grace)
        keep(endpoint: answer.endpoint, addresses: answer.addresses, names: answer.names, ttl: answer.ttl,
             until: clock() + lifetime, lifetime: lifetime, received: answer.received)
    }

    /// Records the addresses and writes what changed into the datapath, under the lock. Used
    /// by answers and by restarts (with what was left of the lifetime); `received` (answers
    /// only) times the answer-to-map latency.
    private func keep(endpoint address: IPAddress, addresses: [IPAddress], names answerNames: [String], ttl: UInt32,
                      until deadline: UInt64, lifetime: UInt64, received: UInt64?) {
        let now = clock()
        state.withLock { state in
            guard let holder = state.policy, let writer = state.writer else { return }
            let endpointAddress = address
            // The asking endpoint, looked up for the first address not learned yet: an answer
            // from an address that is no endpoint of the policy teaches nothing, and a record
            // exists only for an endpoint of the current policy (`policyChanged` drops the
            // others), so a refresh needs no lookup.
            var endpointEntry: (number: UInt32, identity: Identity)?
            // Rounded up as the datapath wants (BPF: to the second): answers that refresh an
            // address before that change nothing, and cost no datapath write.
            let expires = writer.roundedExpiry(deadline, lifetime: lifetime)
            var written: [LearnedEntry] = []
            var replaced: [LearnedEntry] = []
            var evicted: [LearnedEntry] = []
            var added: [FQDNStore.Key] = []
            // Distinct addresses so far: a few (the common answer) are checked against the
            // ones before them, many (a flood) through a set.
            let few = addresses.count <= 16
            var seen = Set<IPAddress>()
            var distinct = 0
            var kept = false
            // A records and AAAA records alike (IPv4-mapped AAAA records name no address an
            // IPv6 packet may carry: the datapath drops those).
            for (position, address) in addresses.enumerated() where holder.policy.isWorld(address) && !address.isIPv4Mapped {
                let isNew = few ? !addresses[..<position].contains(address) : seen.insert(address).inserted
                guard isNew else { continue }
                distinct += 1
                guard distinct <= settings.maximumAddressesPerName else { continue }
                let key = FQDNStore.Key(endpoint: endpointAddress, address: address)
                // Learned again under names it already has (the common case): the grants
                // stand, only the lifetime moves.
                switch state.store.refresh(key, names: answerNames, expires: expires) {
                case .unchanged:
                    kept = true
                    continue
                case .extended(let before, let after):
                    kept = true
                    let held = state.deferred[key] ?? before.expires
                    if held >= now &+ Self.extensionHorizon && state.deferred.count < Self.maximumDeferred {
                        // The datapath's copy stands for a while yet: written later (see `extensionHorizon`).
                        if state.deferred[key] == nil { state.deferred[key] = held }
                        state.dirty = true
                        continue
                    }
                    state.deferred[key] = nil
                    replaced.append(before)
                    written.append(after)
                    continue
                case .unknown:
                    state.deferred[key] = nil
                }
                if endpointEntry == nil {
                    guard let found = holder.policy.endpoint(at: endpointAddress) else { return }
                    endpointEntry = found
                }
                let endpoint = endpointEntry!
                var names = state.store[key]?.names ?? []
                for name in answerNames where !names.contains(name) && names.count < FQDNStore.maximumNamesPerRecord {
                    names.append(name)
                }
                let (grants, rule) = Self.grants(&state, policy: holder.policy, identity: endpoint, names: names)
                guard !grants.isEmpty else { continue }
                let record = FQDNStore.Record(key: key, identity: endpoint.number, names: names, ttl: ttl,
                                              expires: expires, grants: grants, rule: rule ?? "")
                let (previous, pushedOut) = state.store.insert(record)
                evicted += pushedOut.map(\.entry)
                guard let current = state.store[key] else { continue }
                kept = true
                if let previous {
                    if previous.entry == current.entry {
                        if previous.names != current.names { state.dirty = true }
                        continue
                    }
                    replaced.append(previous.entry)
                } else {
                    added.append(key)
                }
                written.append(current.entry)
            }
            writer.remove(evicted)
            guard !written.isEmpty else {
                // Refreshed within the second it was already written for.
                if kept, let received { Self.recordLatency(&state, microseconds: (clock() &- received) / 1_000) }
                return
            }
            do {
                try writer.write(written, replacing: replaced)
            } catch {
                // Not in the datapath, so not kept: the next answer tries again.
                for key in added { state.store.remove(key) }
                state.writeFailures += 1
                if state.writeFailures == 1 || state.writeFailures % 1_000 == 0 {
                    report("fqdn: cannot write learned addresses (\(state.writeFailures) time(s)): \(error)")
                }
                return
            }
            state.dirty = true
            if let received { Self.recordLatency(&state, microseconds: (clock() &- received) / 1_000) }
        }
    }

    public func names(learnedBy endpoint: IPAddress, for address: IPAddress) -> [String] {
        let key = FQDNStore.Key(endpoint: endpoint, address: address)
        let now = clock()
        return state.withLock { state in
            guard let record = state.store[key], record.expires > now else { return [] }
            return record.names
        }
    }

    private static func grants(_ state: inout State, policy: FQDNPolicy, identity: (number: UInt32, identity: Identity),
                               names: [String]) -> (grants: [LearnedGrant], rule: String?) {
        let signature = policy.signature(of: names)
        guard signature.contains(true) else { return ([], nil) }
        let key = GrantKey(identity: identity.number, signature: signature)
        if let known = state.grants[key] { return known }
        let computed = policy.grants(for: identity.identity, names: names)
        if state.grants.count >= grantCacheLimit { state.grants.removeAll(keepingCapacity: true) }
        state.grants[key] = computed
        return computed
    }

    private static func recordLatency(_ state: inout State, microseconds: UInt64) {
        let sample = UInt32(clamping: microseconds)
        if state.latencies.count < latencySamples {
            state.latencies.append(sample)
        } else {
            state.latencies[state.latencyCursor] = sample
            state.latencyCursor = (state.latencyCursor + 1) % latencySamples
        }
        state.latencyCount += 1
    }

    // MARK: Policy and datapath

    /// Starts writing learned addresses through `writer` (once the datapath is up).
    public func attach(writer: LearnedAddressWriter) {
        state.withLock { $0.writer = writer }
    }

    /// Re-judges every record under `policy` (records whose endpoint is gone, or whose names
    /// no rule allows any more, are dropped) and calls `apply` with the resulting entries,
    /// under the learner's lock: `apply` writes the policy and these entries into the
    /// datapath. Nothing changes if `apply` throws.
    public func policyChanged(_ policy: FQDNPolicy, apply: ([LearnedEntry]) throws -> Void) throws {
        try state.withLock { state in
            var next = state
            next.policy = PolicyHolder(policy)
            next.grants.removeAll()
            // `apply` writes every record as it stands now, extensions included.
            next.deferred.removeAll()
            for record in state.store.records {
                guard let endpoint = policy.endpoint(at: record.key.endpoint) else {
                    next.store.remove(record.key)
                    continue
                }
                let (grants, rule) = Self.grants(&next, policy: policy, identity: endpoint, names: record.names)
                if grants.isEmpty {
                    next.store.remove(record.key)
                } else {
                    next.store.update(record.key, identity: endpoint.number, grants: grants, rule: rule ?? "")
                }
            }
            try apply(next.store.records.map(\.entry))
            next.dirty = next.dirty || next.store.count != state.store.count
            state = next
        }
    }

    /// Slots one `expire` call looks at.
    public static let sweepSlots = 4_096

    /// Removes records past their lifetime (the datapath already ignores them), looking at
    /// `slots` records at most. Returns how many went.
    @discardableResult
    public func expire(slots: Int = .max) -> Int {
        let now = clock()
        return state.withLock { state in
            Self.writeDeferred(&state, dueBefore: now &+ Self.extensionHorizon, report: report)
            let ended = state.store.removeExpired(now: now, slotsToScan: slots)
            guard !ended.isEmpty else { return 0 }
            state.writer?.remove(ended.map(\.entry))
            state.dirty = true
            return ended.count
        }
    }

    /// Writes every extension not written yet (`extensionHorizon`): before sluice stops, so
    /// that the datapath, which outlives it, holds each address's latest lifetime.
    public func writeDeferredExtensions() {
        state.withLock { Self.writeDeferred(&$0, dueBefore: .max, report: report) }
    }

    /// Writes the deferred extensions whose datapath copy expires before `deadline`; one
    /// that cannot be written stays deferred (tried again next tick).
    private static func writeDeferred(_ state: inout State, dueBefore deadline: UInt64,
                                      report: @Sendable (String) -> Void) {
        guard !state.deferred.isEmpty, let writer = state.writer else { return }
        var due: [LearnedEntry] = []
        var dueKeys: [FQDNStore.Key] = []
        var gone: [FQDNStore.Key] = []
        for (key, held) in state.deferred where held < deadline {
            guard let record = state.store[key] else {
                gone.append(key)
                continue
            }
            due.append(record.entry)
            dueKeys.append(key)
        }
        for key in gone { state.deferred[key] = nil }
        guard !due.isEmpty else { return }
        do {
            try writer.write(due, replacing: [])
        } catch {
            state.writeFailures += 1
            if state.writeFailures == 1 || state.writeFailures % 1_000 == 0 {
                report("fqdn: cannot write learned addresses (\(state.writeFailures) time(s)): \(error)")
            }
            return
        }
        for key in dueKeys { state.deferred[key] = nil }
    }

    /// How many addresses are learned now (the FQDN cache's size).
    public var count: Int { state.withLock { $0.store.count } }

    /// What is learned now, as the datapath holds it.
    public var entries: [LearnedEntry] {
        state.withLock { $0.store.records.map(\.entry) }
    }

    // MARK: Listing and counters

    public struct Listed: Codable, Equatable, Sendable {
        public var endpoint: String
        public var address: String
        public var names: [String]
        public var ttl: UInt32
        /// Unix time (seconds) past which new connections are no longer allowed.
        public var expiresAt: Double
        public var rule: String
    }

    /// Every record, by endpoint and address. Only the copy is made under the lock (the
    /// sort and the text outside it: answers are not held up by a listing or a save).
    public func list() -> [Listed] {
        let now = clock()
        let wall = wallClock()
        let records = state.withLock { $0.store.records }
        return records.sorted { ($0.key.endpoint, $0.key.address) < ($1.key.endpoint, $1.key.address) }.map { record in
            Listed(endpoint: record.key.endpoint.description, address: record.key.address.description,
                   names: record.names, ttl: record.ttl,
                   expiresAt: wall + (Double(record.expires) - Double(now)) / 1e9, rule: record.rule)
        }
    }

    public struct Statistics: Sendable, Equatable {
        public var records: Int
        public var learned: UInt64
        public var refreshed: UInt64
        public var expired: UInt64
        public var evictedPerName: UInt64
        public var evictedPerEndpoint: UInt64
        public var evictedTotal: UInt64
        public var writeFailures: UInt64
        /// Answer-to-map-write latencies over the recent answers, microseconds.
        public var answers: UInt64
        public var p50: UInt32
        public var p99: UInt32
        public var maximum: UInt32
    }

    public var statistics: Statistics {
        state.withLock { state in
            let sorted = state.latencies.sorted()
            func percentile(_ p: Double) -> UInt32 {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p + 0.5))]
            }
            let counters = state.store.counters
            return Statistics(records: state.store.count, learned: counters.learned, refreshed: counters.refreshed,
                              expired: counters.expired, evictedPerName: counters.evictedPerName,
                              evictedPerEndpoint: counters.evictedPerEndpoint, evictedTotal: counters.evictedTotal,
                              writeFailures: state.writeFailures, answers: state.latencyCount,
                              p50: percentile(0.5), p99: percentile(0.99), maximum: sorted.last ?? 0)
        }
    }

    /// The line `sluice run` prints when it stops (bench/run reads it).
    public var summary: String {
        let s = statistics
        return "fqdn answer-to-map: count=\(s.answers) p50=\(s.p50)us p99=\(s.p99)us max=\(s.maximum)us; "
            + "\(s.records) address(es) held, \(s.learned) learned, \(s.refreshed) refreshed, \(s.expired) expired, "
            + "evicted \(s.evictedPerName) per name, \(s.evictedPerEndpoint) per endpoint, \(s.evictedTotal) over the total cap"
            + (s.writeFailures > 0 ? ", \(s.writeFailures) write failure(s)" : "")
    }

    // MARK: Persistence

    private struct SavedFile: Codable {
        var version: Int
        var records: [Listed]
    }

    /// Writes the records to the state file if they changed since the last save (atomically:
    /// a temporary file renamed over it).
    public func saveIfChanged() throws {
        guard let stateFile else { return }
        let changed = state.withLock { state -> Bool in
            defer { state.dirty = false }
            return state.dirty
        }
        guard changed else { return }
        try Self.write(list(), to: stateFile)
    }

    static func write(_ records: [Listed], to path: String) throws {
        let data = try JSONEncoder().encode(SavedFile(version: 1, records: records))
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw FQDNStateError(path: temporary, problem: "cannot be written")
        }
        guard rename(temporary, path) == 0 else { throw FQDNStateError(path: path, problem: String(cString: strerror(errno))) }
    }

    /// The records saved in a state file (for `sluice fqdn list` and restarts).
    public static func read(from path: String) throws -> [Listed] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FQDNStateError(path: path, problem: "cannot be read (does it exist? sluice writes it once it learned an address)")
        }
        do {
            let file = try JSONDecoder().decode(SavedFile.self, from: data)
            guard file.version == 1 else { throw FQDNStateError(path: path, problem: "version \(file.version), expected 1") }
            return file.records
        } catch let error as FQDNStateError {
            throw error
        } catch {
            throw FQDNStateError(path: path, problem: "not a sluice fqdn state file: \(error)")
        }
    }

    /// Learns again what the state file holds and has not expired; returns how many
    /// addresses. Call after the policy is in place (`policyChanged`) and before the proxy
    /// serves. A missing file is an empty one; an unreadable one is reported and ignored.
    @discardableResult
    public func restore() -> Int {
        guard let stateFile, FileManager.default.fileExists(atPath: stateFile) else { return 0 }
        let saved: [Listed]
        do {
            saved = try Self.read(from: stateFile)
        } catch {
            report("fqdn: \(error); starting with no learned addresses")
            return 0
        }
        return restore(saved)
    }

    /// Every record in the state file's format (what a hand-over gives the successor).
    public func encodedRecords() -> [UInt8] {
        Array((try? JSONEncoder().encode(SavedFile(version: 1, records: list()))) ?? Data())
    }

    /// Learns again the records `encodedRecords` gave (another sluice's) that have not
    /// expired, beside what is learned already; returns how many addresses were added.
    /// Throws `FQDNStateError` naming `source` for bytes that are not such records.
    @discardableResult
    public func restore(encoded bytes: [UInt8], source: String) throws -> Int {
        let file: SavedFile
        do {
            file = try JSONDecoder().decode(SavedFile.self, from: Data(bytes))
        } catch {
            throw FQDNStateError(path: source, problem: "not sluice fqdn records: \(error)")
        }
        guard file.version == 1 else { throw FQDNStateError(path: source, problem: "version \(file.version), expected 1") }
        return restore(file.records)
    }

    private func restore(_ saved: [Listed]) -> Int {
        let wall = wallClock()
        let now = clock()
        var restored = 0
        for record in saved where record.expiresAt > wall {
            guard let endpoint = IPAddress(record.endpoint), let address = IPAddress(record.address) else { continue }
            let remaining = UInt64((record.expiresAt - wall) * 1e9)
            let before = state.withLock { $0.store.count }
            // Kept with the lifetime it had left: the minimum TTL and grace are in it already.
            keep(endpoint: endpoint, addresses: [address], names: Array(record.names.prefix(FQDNStore.maximumNamesPerRecord)),
                 ttl: record.ttl, until: now + remaining, lifetime: remaining, received: nil)
            if state.withLock({ $0.store.count }) > before { restored += 1 }
        }
        return restored
    }
}

public struct FQDNStateError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "\(path): \(problem)" }
}

extension IPAddress {
    /// An IPv4 address from its value in host byte order.
    init(ipv4 value: UInt32) {
        self.init(networkBytes: [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)])!
    }

    /// `::ffff:a.b.c.d` (RFC 4291 2.5.5.2).
    var isIPv4Mapped: Bool { family == .ipv6 && high == 0 && low >> 32 == 0xffff }
}
