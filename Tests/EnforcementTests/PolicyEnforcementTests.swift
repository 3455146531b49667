import CSluiceDatapath
import Foundation
import PolicyEngine
import Proxy
import Synchronization
import Testing
@testable import Datapath
@testable import Enforcement

/// `PolicyEnforcement` with real policy files and a stand-in datapath: reload order, what
/// a failed reload leaves in force, the watcher driving reloads, events as flow records.
@Suite struct PolicyEnforcementTests {
    static let policy = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: backend, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
            - fromEndpoints: [{matchLabels: {app: frontend}}]
              toPorts:
                - ports: [{port: "8080", protocol: TCP}]
        """
    /// The same policy on another port.
    static let changedPolicy = policy.replacingOccurrences(of: "8080", with: "9090")
    static let endpoints = """
        endpoints:
          - {ip: 10.0.0.1, namespace: shop, pod: frontend, labels: {app: frontend}}
          - {ip: 10.0.0.2, namespace: shop, pod: backend, labels: {app: backend}}
        """

    /// Stands in for the BPF maps or nftables: records each state it is given, and what the
    /// proxy's snapshot version was at that moment; refuses when told to.
    final class RecordingDatapath: DatapathEnforcer, @unchecked Sendable {
        let journal: Journal
        /// The proxy's snapshot holder, set once the enforcement that owns it exists.
        var holder: PolicySnapshotHolder?
        let refusing = Atomic<Bool>(false)
        let applied = Mutex<[DatapathState]>([])
        init(journal: Journal) { self.journal = journal }

        func apply(_ state: DatapathState, learned: [LearnedEntry]) throws -> String {
            journal.add("datapath (proxy at version \(holder?.version ?? 0))")
            if refusing.load(ordering: .relaxed) { throw PolicyFiles.InputError(description: "map full") }
            applied.withLock { $0.append(state) }
            return "stand-in written"
        }
    }

    struct Fixture {
        let directory = TemporaryDirectory()
        let journal = Journal()
        let enforcement: PolicyEnforcement
        let datapath: RecordingDatapath
        var holder: PolicySnapshotHolder { enforcement.policy! }

        /// Policy and endpoints files in a fresh directory, a file flow log, the stand-in
        /// datapath (whose view is translated as for `bpf`; none with `mode` `.none`), the
        /// reports and policy-change calls journaled.
        init(watchInterval: UInt64? = nil, mode: DatapathConfiguration.Mode = .bpf) throws {
            directory.write("policy.yaml", PolicyEnforcementTests.policy)
            directory.write("endpoints.yaml", PolicyEnforcementTests.endpoints)
            let configuration = ProxyConfiguration(
                workers: 1, listeners: [], flowLog: .init(sink: .file(path: directory.file("flows.jsonl"))),
                datapath: .init(mode: mode),
                policy: .init(paths: ["policy.yaml"], endpoints: "endpoints.yaml", watchInterval: watchInterval))
            let journal = journal
            datapath = RecordingDatapath(journal: journal)
            enforcement = PolicyEnforcement(configuration: configuration, configFile: directory.file("sluice.yaml"),
                                            flowLog: try FlowLog.open(configuration.flowLog),
                                            report: { journal.add("report: \($0)") }, enforcer: mode == .none ? nil : datapath)
            let holder = enforcement.policy!
            datapath.holder = holder
            enforcement.onPolicyChange = { journal.add("policy change (proxy at version \(holder.version))") }
            try enforcement.prepare()
        }

        /// The port the proxy's snapshot allows frontend to reach backend on, of 8080 and 9090.
        var allowedPort: UInt16? {
            let snapshot = holder.snapshot
            let frontend = ConnectionIdentitiesProbe.identity("10.0.0.1", snapshot)
            let backend = ConnectionIdentitiesProbe.identity("10.0.0.2", snapshot)
            return [8080, 9090].first { snapshot.trace(from: frontend, to: backend, port: $0, transport: .tcp, request: .none).isAllowed }
        }
    }

    @Test func aReloadWritesTheDatapathThenPublishesThenCallsBackThenReports() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        #expect(fixture.holder.version == 1 && fixture.allowedPort == 8080, "prepare published the files' policy")
        fixture.directory.replace("policy.yaml", with: Self.changedPolicy)
        fixture.enforcement.reload(because: "SIGHUP")
        #expect(fixture.journal.all == [
            "datapath (proxy at version 1)",
            "policy change (proxy at version 2)",
            "report: SIGHUP: reloaded; stand-in written",
        ])
        #expect(fixture.allowedPort == 9090)
        let written = try #require(fixture.datapath.applied.withLock { $0.last })
        #expect(written.policy.keys.contains { $0.port == 9090 } && !written.policy.keys.contains { $0.port == 8080 },
                "the datapath got the new policy's L3/L4 view")
    }

    @Test func aPolicyThatDoesNotLoadLeavesThePreviousOneInForceAndIsReported() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        fixture.directory.replace("policy.yaml", with: Self.policy + "\n    - {bad: [\n")
        fixture.enforcement.reload(because: "policy changed")
        let lines = fixture.journal.all
        try #require(lines.count == 1, "no datapath write, no policy change: \(lines)")
        #expect(lines[0].hasPrefix("report: policy changed but was not applied (the previous policy stays in force): invalid policy input:"))
        #expect(lines[0].contains("policy.yaml"), "the error names the file")
        #expect(fixture.holder.version == 1 && fixture.allowedPort == 8080)
    }

    /// Issue 15 item 3: an endpoints file that places pods on nodes needs `policy.node`, or
    /// this sluice would take every node's pods for its own.
    @Test func endpointsOnNodesNeedPolicyNode() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        fixture.directory.replace("endpoints.yaml", with: Self.endpoints.replacingOccurrences(of: "{app: backend}}", with: "{app: backend}, node: n2}"))
        fixture.enforcement.reload(because: "policy changed")
        let lines = fixture.journal.all
        try #require(lines.count == 1, "\(lines)")
        #expect(lines[0].contains("endpoints.yaml: endpoints are placed on nodes (n2) but the configuration does not say which node this sluice runs on: add policy.node"), "\(lines[0])")
        #expect(fixture.holder.version == 1, "the previous policy stays in force")
    }

    @Test func aPolicyTheDatapathRefusesIsNotPublished() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        fixture.datapath.refusing.store(true, ordering: .relaxed)
        fixture.directory.replace("policy.yaml", with: Self.changedPolicy)
        fixture.enforcement.reload(because: "SIGHUP")
        #expect(fixture.journal.all == [
            "datapath (proxy at version 1)",
            "report: SIGHUP but was not applied (the previous policy stays in force): map full",
        ])
        #expect(fixture.holder.version == 1 && fixture.allowedPort == 8080)
    }

    @Test func withoutADatapathAReloadOnlyPublishes() throws {
        let fixture = try Fixture(mode: .none)
        defer { fixture.directory.remove() }
        fixture.directory.write("policy.yaml", Self.changedPolicy)
        fixture.enforcement.reload(because: "SIGHUP")
        #expect(fixture.journal.all == ["policy change (proxy at version 2)", "report: SIGHUP: reloaded"])
        #expect(fixture.allowedPort == 9090)
    }

    @Test func theWatcherReloadsOncePerReplacedFile() throws {
        let fixture = try Fixture(watchInterval: 5_000_000)
        defer { fixture.directory.remove() }
        fixture.enforcement.startBackgroundWork()
        defer { fixture.enforcement.stop() }
        fixture.directory.replace("policy.yaml", with: Self.changedPolicy)
        #expect(eventually { fixture.journal.all.contains("report: policy changed: reloaded; stand-in written") })
        usleep(100_000)  // twenty more checks of the files
        #expect(fixture.journal.all.filter { $0.hasPrefix("report:") } == ["report: policy changed: reloaded; stand-in written"])
        #expect(fixture.allowedPort == 9090)
    }

    @Test func datapathEventsBecomeFlowRecordsNamedFromTheStateInForce() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        fixture.enforcement.reload(because: "SIGHUP")
        let state = try #require(fixture.datapath.applied.withLock { $0.last })
        let backend = try #require(state.identityNames.first { $0.value.contains("backend") })
        var raw = sluice_event()
        raw.kind = UInt8(SLUICE_EVENT_DROP)
        raw.reason = 2
        raw.direction = PolicyDirection.ingress.rawValue
        raw.saddr_be.0 = UInt32(0x0a00_0063).bigEndian
        raw.daddr_be.0 = UInt32(0x0a00_0002).bigEndian
        raw.sport_be = UInt16(40000).bigEndian
        raw.dport_be = UInt16(8080).bigEndian
        raw.protocol = 6
        raw.source_identity = 2
        raw.destination_identity = backend.key
        fixture.enforcement.forward([DatapathEvent(raw)])
        let lines = fixture.directory.contents("flows.jsonl").split(separator: "\n")
        try #require(lines.count == 1)
        #expect(lines[0].contains(#""verdict":"DROPPED","IP":{"source":"10.0.0.99","destination":"10.0.0.2","ipVersion":"IPv4"}"#))
        #expect(lines[0].contains(#""destination":{"identity":\#(backend.key),"name":\#(JSONObject.quoted(backend.value))}"#))
        #expect(lines[0].contains(#""traffic_direction":"INGRESS","drop_reason_desc":"POLICY_DENIED""#))
        #expect(lines[0].hasSuffix(#""Summary":"TCP 10.0.0.99:40000 -> 10.0.0.2:8080 dropped (POLICY_DENIED)"}"#))
    }

    @Test func eventRecordsSpellProtocolsAndActions() throws {
        var raw = sluice_event()
        raw.kind = UInt8(SLUICE_EVENT_REDIRECT)
        raw.protocol = 17
        raw.proxy_port = 15053
        raw.saddr_be.0 = UInt32(0x0a00_0001).bigEndian
        raw.daddr_be.0 = UInt32(0x0a00_0009).bigEndian
        raw.direction = PolicyDirection.egress.rawValue
        let redirect = FlowRecords.datapathEvent(DatapathEvent(raw)).serialized()
        #expect(redirect.contains(#""l4":{"UDP":{"source_port":0,"destination_port":0}}"#))
        #expect(redirect.contains(#""source":{"identity":0},"destination":{"identity":0}"#), "no names known")
        #expect(redirect.contains(#""traffic_direction":"EGRESS","proxy_port":15053"#))
        raw.kind = 200
        raw.protocol = 47
        let unknown = FlowRecords.datapathEvent(DatapathEvent(raw)).serialized()
        #expect(unknown.contains(#""verdict":"REDIRECTED""#) && unknown.contains(#""l4":{"47":{"#))
    }

    @Test func ipv6EventsCarryBothAddressesWhole() throws {
        var raw = sluice_event()
        raw.kind = UInt8(SLUICE_EVENT_DROP)
        raw.reason = UInt8(SLUICE_DROP_EXTENSION_HEADER)
        raw.protocol = 6
        raw.family = 6
        // fd00:200:1::2 -> fd00:200:2::2
        raw.saddr_be = (UInt32(0xfd00_0200).bigEndian, UInt32(0x0001_0000).bigEndian, 0, UInt32(2).bigEndian)
        raw.daddr_be = (UInt32(0xfd00_0200).bigEndian, UInt32(0x0002_0000).bigEndian, 0, UInt32(2).bigEndian)
        raw.sport_be = UInt16(40000).bigEndian
        raw.dport_be = UInt16(8080).bigEndian
        let record = FlowRecords.datapathEvent(DatapathEvent(raw)).serialized()
        #expect(record.contains(#""IP":{"source":"fd00:200:1::2","destination":"fd00:200:2::2","ipVersion":"IPv6"}"#), "\(record)")
        #expect(record.contains(#""drop_reason_desc":"IPV6_EXTENSION_HEADER""#))
    }
}

/// Identities of addresses as the proxy derives them.
enum ConnectionIdentitiesProbe {
    static func identity(_ address: String, _ snapshot: PolicySnapshot) -> Identity {
        ConnectionIdentities.identity(of: SocketAddress("\(address):1")!, in: snapshot)
    }
}
