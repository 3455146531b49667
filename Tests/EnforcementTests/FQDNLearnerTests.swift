import Datapath
import Foundation
import PolicyEngine
import Proxy
import Synchronization
import Testing
@testable import Enforcement

/// toFQDNs bookkeeping and judgement without a kernel: the datapath writer records what it
/// is asked (the BPF and nftables writers run for real in ProgramTests and test_fqdn.py).
@Suite struct FQDNLearnerTests {
    static let endpoints = """
    endpoints:
      - {ip: 10.1.0.2, namespace: shop, pod: frontend, labels: {app: frontend}}
      - {ip: 10.1.0.3, namespace: shop, pod: worker, labels: {app: worker}}
      - {ip: 10.1.0.9, namespace: shop, pod: backend, labels: {app: backend}}
      - {ip: "fd00:1::2", namespace: shop, pod: frontend, labels: {app: frontend}}
      - {ip: "fd00:1::9", namespace: shop, pod: backend, labels: {app: backend}}
    """

    static let policy = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: egress, namespace: shop}
    spec:
      endpointSelector: {matchLabels: {app: frontend}}
      egress:
        - toFQDNs: [{matchName: api.example.com}]
          toPorts: [{ports: [{port: "443", protocol: TCP}]}]
        - toFQDNs: [{matchPattern: "*.cdn.example.com"}]
        - toFQDNs: [{matchName: web.example.com}]
          toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules: {http: [{method: GET}]}
        - toEndpoints: [{matchLabels: {app: backend}}]
    ---
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: worker, namespace: shop}
    spec:
      endpointSelector: {matchLabels: {app: worker}}
      egress:
        - toEndpoints: [{matchLabels: {app: backend}}]
    """

    static func fqdnPolicy(_ policyText: String = policy) throws -> FQDNPolicy {
        let loaded = PolicyLoader.load(text: policyText, file: "policy.yaml")
        #expect(loaded.errors.isEmpty, "\(loaded.errors)")
        let snapshot = PolicySnapshot(policies: loaded.policies, endpoints: try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml"))
        let ports = PolicyTranslation.ProxyPorts(tcp: 15001, udp: 15053)
        let state = try PolicyTranslation(snapshot: snapshot, nodeAddresses: [], proxyPorts: ports).translate()
        return FQDNPolicy(snapshot: snapshot, state: state, proxyPorts: ports)
    }

    final class RecordingWriter: LearnedAddressWriter, @unchecked Sendable {
        let held = Mutex<[String: LearnedEntry]>([:])
        let failing = Atomic<Bool>(false)
        let writes = Atomic<Int>(0)

        static func key(_ entry: LearnedEntry) -> String { "\(entry.endpoint)/\(entry.address)" }

        func write(_ entries: [LearnedEntry], replacing: [LearnedEntry]) throws {
            if failing.load(ordering: .relaxed) { throw FQDNStateError(path: "map", problem: "full") }
            writes.add(1, ordering: .relaxed)
            held.withLock { held in for entry in entries { held[Self.key(entry)] = entry } }
        }

        func remove(_ entries: [LearnedEntry]) {
            held.withLock { held in for entry in entries { held[Self.key(entry)] = nil } }
        }

        var addresses: Set<String> {
            held.withLock { Set($0.values.map { $0.address.description }) }
        }
    }

    enum IPAddressText {
        static func ipv4(_ value: UInt32) -> String { [24, 16, 8, 0].map { String(value >> UInt32($0) & 0xff) }.joined(separator: ".") }
    }

    final class FakeClock: @unchecked Sendable {
        let value = Atomic<UInt64>(1_000_000_000_000)
        func advance(seconds: UInt64) { value.add(seconds * 1_000_000_000, ordering: .relaxed) }
        var now: UInt64 { value.load(ordering: .relaxed) }
    }

    static func learner(_ settings: FQDNSettings = FQDNSettings(), stateFile: String? = nil, clock: FakeClock = FakeClock(),
                        policy: FQDNPolicy? = nil) throws -> (FQDNLearner, RecordingWriter) {
        let wall = clock
        let learner = FQDNLearner(settings: settings, stateFile: stateFile, clock: { clock.now },
                                  wallClock: { Double(wall.now) / 1e9 }, report: { _ in })
        let writer = RecordingWriter()
        learner.attach(writer: writer)
        try learner.policyChanged(policy ?? fqdnPolicy()) { _ in }
        return (learner, writer)
    }

    /// Lifetimes of exactly the TTL (no minimum, no grace).
    static func lifetime(minimumTTL: UInt32 = 0, graceSeconds: UInt64 = 0) -> FQDNSettings {
        var settings = FQDNSettings()
        settings.minimumTTL = minimumTTL
        settings.grace = graceSeconds * 1_000_000_000
        return settings
    }

    static func answer(_ names: [String], _ addresses: [String], ttl: UInt32 = 30, from endpoint: String = "10.1.0.2") -> LearnedAnswer {
        LearnedAnswer(endpoint: IPAddress(endpoint)!, names: names, addresses: addresses.map { IPAddress($0)! }, ttl: ttl,
                      received: 0)
    }

    // MARK: What an address allows

    @Test func grantsFollowTheRuleThatNamesTheAddress() throws {
        let policy = try Self.fqdnPolicy()
        let frontend = try #require(policy.endpoint(at: IPAddress("10.1.0.2")!))
        let api = policy.grants(for: frontend.identity, names: ["api.example.com"])
        #expect(api.grants == [LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow))])
        #expect(api.rule?.contains("shop/egress") == true)
        let cdn = policy.grants(for: frontend.identity, names: ["img.cdn.example.com"]).grants
        #expect(cdn.contains(LearnedGrant(port: 0, ipProtocol: 6, entry: PolicyEntry(action: .allow))), "no toPorts: every port")
        #expect(cdn.contains(LearnedGrant(port: 0, ipProtocol: 17, entry: PolicyEntry(action: .allow))))
        let web = policy.grants(for: frontend.identity, names: ["web.example.com"]).grants
        #expect(web == [LearnedGrant(port: 80, ipProtocol: 6, entry: PolicyEntry(action: .redirect, proxyPort: 15001))],
                "HTTP rules on the port: through the proxy")
        #expect(policy.grants(for: frontend.identity, names: ["evil.example.com", "cdn.example.com"]).grants.isEmpty)
        let worker = try #require(policy.endpoint(at: IPAddress("10.1.0.3")!))
        #expect(policy.grants(for: worker.identity, names: ["api.example.com"]).grants.isEmpty, "not the worker's rule")
        #expect(policy.isWorld(IPAddress("192.0.2.1")!) && !policy.isWorld(IPAddress("10.1.0.9")!))
    }

    // MARK: Learning

    @Test func anAllowedAnswerIsWrittenBeforeLearnReturnsAndOnlyForWorldAddresses() throws {
        let (learner, writer) = try Self.learner()
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1", "192.0.2.2", "10.1.0.9"]))
        #expect(writer.addresses == ["192.0.2.1", "192.0.2.2"], "a cluster endpoint's address is not a toFQDNs destination")
        learner.learn(Self.answer(["evil.example.com"], ["192.0.2.66"]))
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.77"], from: "10.1.0.3"))
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.78"], from: "10.9.9.9"))
        #expect(writer.addresses == ["192.0.2.1", "192.0.2.2"], "names no rule allows, and endpoints without the rule, teach nothing")
        let listed = learner.list()
        #expect(listed.map(\.address) == ["192.0.2.1", "192.0.2.2"])
        #expect(listed.allSatisfy { $0.names == ["api.example.com"] && $0.endpoint == "10.1.0.2" && $0.rule.contains("shop/egress") })
        #expect(learner.statistics.answers == 1)
    }

    @Test func aaaaRecordsAreLearnedOverEitherFamilyForTheEndpointsOneIdentity() throws {
        let (learner, writer) = try Self.learner()
        // Asked over IPv6: AAAA and A records of the answer.
        learner.learn(Self.answer(["api.example.com"], ["2001:db8::1", "192.0.2.1", "fd00:1::9", "::ffff:192.0.2.5"],
                                  from: "fd00:1::2"))
        #expect(writer.addresses == ["2001:db8::1", "192.0.2.1"],
                "a cluster endpoint's IPv6 address and an IPv4-mapped one are no toFQDNs destination")
        // Asked over IPv4: an AAAA record is the frontend's too.
        learner.learn(Self.answer(["api.example.com"], ["2001:db8::2"]))
        #expect(writer.addresses == ["2001:db8::1", "192.0.2.1", "2001:db8::2"])
        let identities = Set(writer.held.withLock { $0.values.map(\.endpoint) })
        #expect(identities.count == 1, "one identity for the frontend's IPv4 and IPv6 addresses")
        #expect(learner.names(learnedBy: IPAddress("fd00:1::2")!, for: IPAddress("2001:db8::1")!) == ["api.example.com"])
        let listed = learner.list()
        #expect(listed.contains { $0.endpoint == "fd00:1::2" && $0.address == "2001:db8::1" })
    }

    @Test func cnameNamesCountAndTheMinimumTTLAndGraceSetTheLifetime() throws {
        let clock = FakeClock()
        let (learner, writer) = try Self.learner(Self.lifetime(minimumTTL: 10, graceSeconds: 5), clock: clock)
        // The question's name is not allowed, the CNAME target is.
        learner.learn(Self.answer(["alias.example.net", "img.cdn.example.com"], ["192.0.2.5"], ttl: 2))
        let entry = try #require(writer.held.withLock { $0.values.first })
        #expect(entry.expires == clock.now + 15_000_000_000, "TTL 2 raised to 10, plus 5 of grace")
        clock.advance(seconds: 14)
        #expect(learner.expire() == 0)
        clock.advance(seconds: 1)
        #expect(learner.expire() == 1)
        #expect(writer.addresses.isEmpty)
        #expect(learner.statistics.expired == 1)
    }

    @Test func aZeroTTLStillLeavesTheClientTimeToConnect() throws {
        let clock = FakeClock()
        let (learner, writer) = try Self.learner(Self.lifetime(), clock: clock)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 0))
        let entry = try #require(writer.held.withLock { $0.values.first })
        #expect(entry.expires >= clock.now + FQDNLearner.minimumLifetime, "TTL 0, no minimum, no grace: still a second")
    }

    @Test func aHostileAnswerWithThousandsOfAddressesIsCappedPerName() throws {
        let (learner, writer) = try Self.learner()
        let flood = (0..<2_000).map { "198.18.\($0 / 250).\($0 % 250 + 1)" }
        learner.learn(Self.answer(["x.cdn.example.com"], flood))
        #expect(writer.held.withLock { $0.count } == FQDNSettings().maximumAddressesPerName)
        #expect(learner.list().count == 50)
    }

    @Test func aRestartUnderANarrowerPolicyRestoresOnlyWhatItStillAllows() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let clock = FakeClock()
        let file = directory.file("fqdn.json")
        let (learner, _) = try Self.learner(stateFile: file, clock: clock)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"]))
        learner.learn(Self.answer(["img.cdn.example.com"], ["192.0.2.2"]))
        try learner.saveIfChanged()
        let narrower = Self.policy.replacingOccurrences(of: "    - toFQDNs: [{matchPattern: \"*.cdn.example.com\"}]\n", with: "")
        let (restarted, writer) = try Self.learner(stateFile: file, clock: clock, policy: try Self.fqdnPolicy(narrower))
        #expect(restarted.restore() == 1)
        #expect(writer.addresses == ["192.0.2.1"], "the CDN address is no longer allowed: not restored")
    }

    @Test func aRefreshExtendsTheLifetimeAndMergesNames() throws {
        let clock = FakeClock()
        let (learner, _) = try Self.learner(Self.lifetime(), clock: clock)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 10))
        clock.advance(seconds: 8)
        learner.learn(Self.answer(["a.cdn.example.com"], ["192.0.2.1"], ttl: 10))
        clock.advance(seconds: 8)
        #expect(learner.expire() == 0, "refreshed at 8 s for another 10")
        #expect(learner.list().first?.names == ["api.example.com", "a.cdn.example.com"])
        #expect(learner.statistics.refreshed == 1)
    }

    @Test func anExtensionIsWrittenBeforeTheDatapathCopyLapsesNotOnEveryAnswer() throws {
        let clock = FakeClock()
        let (learner, writer) = try Self.learner(Self.lifetime(), clock: clock)
        let start = clock.now
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 60))
        #expect(writer.writes.load(ordering: .relaxed) == 1)
        let written = { try #require(writer.held.withLock { $0.values.first }).expires }
        #expect(try written() == start + 60_000_000_000)
        // Answered again and again: the store follows each answer, the datapath's copy (good
        // for most of a minute yet) is not rewritten.
        for _ in 0..<10 {
            clock.advance(seconds: 2)
            learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 60))
        }
        #expect(writer.writes.load(ordering: .relaxed) == 1)
        #expect(learner.expire() == 0)
        #expect(writer.writes.load(ordering: .relaxed) == 1, "not due: the copy has 40 s left")
        let lastAnswer = clock.now
        // Within the horizon of the copy's expiry, the tick writes the latest lifetime.
        clock.advance(seconds: 60 - 20 - FQDNLearner.extensionHorizon / 1_000_000_000 + 1)
        #expect(learner.expire() == 0)
        #expect(writer.writes.load(ordering: .relaxed) == 2)
        #expect(try written() == lastAnswer + 60_000_000_000, "the last answer's TTL, as if written at once")
        #expect(learner.expire() == 0)
        #expect(writer.writes.load(ordering: .relaxed) == 2, "written once")
        // Near the expiry an answer is written at once.
        clock.advance(seconds: 20)  // the copy expires in 4 s
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 60))
        #expect(writer.writes.load(ordering: .relaxed) == 3)
        #expect(try written() == clock.now + 60_000_000_000)
        // Before sluice stops, whatever waits is written.
        clock.advance(seconds: 2)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 60))
        #expect(writer.writes.load(ordering: .relaxed) == 3)
        learner.writeDeferredExtensions()
        #expect(writer.writes.load(ordering: .relaxed) == 4)
        #expect(try written() == clock.now + 60_000_000_000)
    }

    @Test func freshNamesNeverGrowPastTheCapsAndEvictionsAreCounted() throws {
        var settings = FQDNSettings()
        settings.maximumAddressesPerName = 3
        settings.maximumAddressesPerEndpoint = 500
        settings.maximumAddresses = 800
        let (learner, writer) = try Self.learner(settings)
        // One name handing out ever new addresses: only the newest 3 stay.
        for index in 0..<10 { learner.learn(Self.answer(["api.example.com"], ["198.51.100.\(index)"])) }
        #expect(writer.addresses == ["198.51.100.7", "198.51.100.8", "198.51.100.9"])
        #expect(learner.statistics.evictedPerName == 7)
        // 100,000 fresh names (the reference's users saw memory grow without bound).
        for index in 0..<100_000 {
            let address = "100.\(64 + index / 65_536).\(index / 256 % 256).\(index % 256)"
            learner.learn(Self.answer(["n\(index).cdn.example.com"], [address]))
        }
        let statistics = learner.statistics
        #expect(statistics.records == 500, "the endpoint's cap")
        #expect(writer.held.withLock { $0.count } == 500, "the datapath holds exactly what is kept")
        #expect(statistics.evictedPerEndpoint == 100_003 - 500)
        #expect(learner.list().last?.names == ["n99999.cdn.example.com"], "the newest stay")
        // A second endpoint's addresses meet the total cap.
        let second = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: worker-fqdn, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: worker}}
          egress: [{toFQDNs: [{matchPattern: "*.cdn.example.com"}]}]
        """
        try learner.policyChanged(Self.fqdnPolicy(Self.policy + "\n---\n" + second)) { _ in }
        for index in 0..<600 { learner.learn(Self.answer(["w\(index).cdn.example.com"], ["203.0.\(index / 256).\(index % 256)"], from: "10.1.0.3")) }
        // Past 800 in all, the oldest of any endpoint (the frontend's) went: 200 of them, until
        // the worker met its own cap of 500.
        #expect(learner.statistics.records == 800)
        #expect(learner.statistics.evictedTotal == 200)
        #expect(learner.list().filter { $0.endpoint == "10.1.0.2" }.count == 300)
    }

    @Test func aFailedWriteKeepsNothingAndIsCounted() throws {
        let (learner, writer) = try Self.learner()
        writer.failing.store(true, ordering: .relaxed)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"]))
        #expect(learner.list().isEmpty)
        #expect(learner.statistics.writeFailures == 1)
        writer.failing.store(false, ordering: .relaxed)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"]))
        #expect(learner.list().count == 1, "the next answer tries again")
    }

    @Test func aPolicyChangeRejudgesWhatWasLearned() throws {
        let (learner, _) = try Self.learner()
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"]))
        learner.learn(Self.answer(["x.cdn.example.com"], ["192.0.2.2"]))
        let narrower = Self.policy.replacingOccurrences(of: "    - toFQDNs: [{matchPattern: \"*.cdn.example.com\"}]\n", with: "")
        var applied: [LearnedEntry] = []
        try learner.policyChanged(Self.fqdnPolicy(narrower)) { applied = $0 }
        #expect(applied.count == 1 && learner.list().map(\.address) == ["192.0.2.1"])
        // A change the datapath refuses changes nothing.
        #expect(throws: FQDNStateError.self) {
            try learner.policyChanged(Self.fqdnPolicy(Self.policy.replacingOccurrences(of: "api.example.com", with: "other.example.com"))) { _ in
                throw FQDNStateError(path: "datapath", problem: "refused")
            }
        }
        #expect(learner.list().map(\.address) == ["192.0.2.1"])
    }

    // MARK: Persistence

    @Test func savedAddressesComeBackWithWhatIsLeftOfTheirLifetime() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let settings = Self.lifetime()
        let clock = FakeClock()
        let file = directory.file("state/fqdn.json")
        let (learner, _) = try Self.learner(settings, stateFile: file, clock: clock)
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"], ttl: 100))
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.2"], ttl: 5))
        try learner.saveIfChanged()
        #expect(try FQDNLearner.read(from: file).count == 2)
        clock.advance(seconds: 10)
        let (restarted, writer) = try Self.learner(settings, stateFile: file, clock: clock)
        #expect(restarted.restore() == 1, "the 5 s one expired while sluice was down")
        #expect(writer.addresses == ["192.0.2.1"])
        let entry = try #require(writer.held.withLock { $0.values.first })
        #expect(entry.expires == clock.now + 90_000_000_000)
    }

    @Test func aStateFileThatCannotBeWrittenFailsTheSaveNotTheLearning() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let blocker = directory.write("not-a-directory", "x")
        let (learner, writer) = try Self.learner(stateFile: blocker + "/fqdn.json")
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.1"]))
        #expect(throws: (any Error).self) { try learner.saveIfChanged() }
        learner.learn(Self.answer(["api.example.com"], ["192.0.2.2"]))
        #expect(writer.addresses == ["192.0.2.1", "192.0.2.2"], "still learning, still in the datapath")
    }

    @Test func aCorruptStateFileIsReportedAndIgnored() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.write("fqdn.json", "{not json")
        let (learner, _) = try Self.learner(stateFile: file)
        #expect(learner.restore() == 0)
        #expect(throws: FQDNStateError.self) { try FQDNLearner.read(from: file) }
        #expect(throws: FQDNStateError.self) { try FQDNLearner.read(from: directory.file("missing.json")) }
    }

    // MARK: Store

    @Test func theStoreKeepsRecordsOldestFirstAndReusesFreedSlots() {
        var store = FQDNStore(limits: .init(perName: 10, perEndpoint: 10, total: 3))
        func ip(_ value: UInt32) -> IPAddress { IPAddress(ipv4: value) }
        func key(_ address: UInt32) -> FQDNStore.Key { .init(endpoint: ip(1), address: ip(address)) }
        func record(_ address: UInt32, _ name: String = "a.example.com") -> FQDNStore.Record {
            FQDNStore.Record(key: key(address), identity: 256, names: [name], ttl: 1, expires: UInt64(address),
                             grants: [], rule: "")
        }
        for address: UInt32 in 1...3 { _ = store.insert(record(address)) }
        #expect(store.refresh(key(1), names: ["other.example.com"], expires: 10) == .unknown)
        #expect(store.refresh(key(1), names: ["a.example.com"], expires: 1) == .unchanged)
        guard case .extended(let before, let after) = store.refresh(key(1), names: ["a.example.com"], expires: 10) else {
            Issue.record("a longer lifetime extends the record")
            return
        }
        #expect(before.expires == 1 && after.expires == 10)
        #expect(store.oldestFirst.map(\.key.address) == [2, 3, 1].map(ip), "learned again: newest")
        let (_, evicted) = store.insert(record(4))
        #expect(evicted.map(\.key.address) == [2].map(ip), "the total cap pushes out the oldest")
        #expect(store.removeExpired(now: 3).map(\.key.address) == [3].map(ip))
        _ = store.insert(record(5, "b.example.com"))
        #expect(store.oldestFirst.map(\.key.address) == [1, 4, 5].map(ip))
        #expect(store.remove(key(4))?.key.address == ip(4))
        #expect(store.oldestFirst.map(\.key.address) == [1, 5].map(ip) && store.count == 2)
        #expect(store.counters.learned == 5 && store.counters.evictedTotal == 1 && store.counters.expired == 1)
        // A sweep may look at a few slots at a time; it resumes where it stopped.
        var swept: [IPAddress] = []
        for _ in 0..<6 { swept += store.removeExpired(now: 100, slotsToScan: 1).map(\.key.address) }
        #expect(Set(swept) == [ip(1), ip(5)] && store.count == 0)
    }
}
