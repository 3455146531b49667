import Testing
import CSluiceDatapath
import PolicyEngine
import Synchronization
@testable import Datapath
#if canImport(Glibc)
import Glibc
#endif

/// The tc programs run in the kernel on crafted packets (BPF_PROG_TEST_RUN), with map
/// contents written through the same Swift code `sluice run` uses. Root only.
@Suite(.serialized, .enabled(if: DatapathTestSupport.kernelTestsEnabled, "needs root (BPF)"))
final class ProgramTests {
    let pinRoot = "/sys/fs/bpf/sluice-unit-\(getpid())"
    let object: BPFObject
    let maps: DatapathMaps
    static let ok: UInt32 = 0
    static let shot: UInt32 = 2

    static let client = "10.9.1.2"   // identity 300, local endpoint
    static let server = "10.9.2.2"   // identity 301, local endpoint
    static let outside = "192.0.2.9" // world

    init() throws {
        let setup = DatapathSetup(namespace: nil, interfaces: [], pinRoot: pinRoot, objectPath: try DatapathTestSupport.requireObject())
        setup.removePins()
        object = try BPFObject(path: setup.objectPath, pinRoot: pinRoot)
        maps = try DatapathMaps(pinRoot: pinRoot)
        var state = DatapathState()
        state.addresses[IPv4Prefix(Self.client)!] = AddressEntry(identity: 300, isLocalEndpoint: true)
        state.addresses[IPv4Prefix(Self.server)!] = AddressEntry(identity: 301, isLocalEndpoint: true)
        try maps.synchronize(to: state)
    }

    deinit {
        DatapathSetup(namespace: nil, interfaces: [], pinRoot: pinRoot, objectPath: "").removePins()
    }

    func run(_ packet: [UInt8], mark: UInt32 = 0, program: String = "sluice_from_wire") throws -> ProgramTestRun.Outcome {
        try ProgramTestRun.run(object, program: program, packet: packet, mark: mark)
    }

    func counter(_ counter: DatapathCounter) -> UInt64 { maps.counters.total(counter.rawValue) }

    func apply(_ change: (inout DatapathState) -> Void) throws {
        var state = maps.read()
        change(&state)
        try maps.synchronize(to: state)
    }

    @Test func nonIPFramesPass() throws {
        let before = counter(.notIP)
        #expect(try run(PacketBuilder.arp).returnCode == Self.ok)
        #expect(counter(.notIP) == before + 1)
    }

    @Test func truncatedHeadersAreDropped() throws {
        // A whole IPv4 header (the kernel insists on one) but only half a TCP header.
        let frame = Array(PacketBuilder.frame(source: Self.client, destination: Self.server).prefix(44))
        #expect(try run(frame).returnCode == Self.shot)
        #expect(counter(.dropMalformed) == 1)
    }

    @Test func unselectedEndpointsAreUnrestrictedAndTheFlowIsRemembered() throws {
        let syn = PacketBuilder.frame(source: Self.client, destination: Self.server)
        let outcome = try run(syn)
        #expect(outcome.returnCode == Self.ok)
        #expect(outcome.mark & UInt32(SLUICE_MARK_MASK) == UInt32(SLUICE_MARK_ALLOWED))
        #expect(counter(.allowed) == 1)
        // The reply is recognised as part of the flow.
        let reply = PacketBuilder.frame(source: Self.server, destination: Self.client, sourcePort: 80, destinationPort: 40000, syn: true, ack: true)
        #expect(try run(reply).returnCode == Self.ok)
        #expect(counter(.established) == 1)
    }

    /// Issue 15 item 2: the proxy's upstream leg leaves from the client's own address; the
    /// server's reply is for the proxy's socket, never for the client. With no such socket
    /// (none exists in the test's namespace) it is dropped, not routed on to the client.
    @Test func repliesToTheProxysUpstreamGoToItsSocketOrAreDropped() throws {
        let upstream = PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 42000)
        #expect(try run(upstream, mark: UInt32(SLUICE_MARK_FROM_PROXY), program: "sluice_to_wire").returnCode == Self.ok)
        #expect(counter(.proxyPass) == 1)
        let reply = PacketBuilder.frame(source: Self.server, destination: Self.client, sourcePort: 80, destinationPort: 42000,
                                        syn: true, ack: true)
        #expect(try run(reply).returnCode == Self.shot)
        #expect(counter(.dropUpstreamGone) == 1)
        #expect(counter(.upstreamReply) == 0)
        // The reply of a flow the datapath merely allowed still passes (routed to the client).
        let plain = PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 42001)
        #expect(try run(plain).returnCode == Self.ok)
        let plainReply = PacketBuilder.frame(source: Self.server, destination: Self.client, sourcePort: 80, destinationPort: 42001,
                                             syn: true, ack: true)
        #expect(try run(plainReply).returnCode == Self.ok)
        #expect(counter(.dropUpstreamGone) == 1)
    }

    /// Found by the hand-over test (issue 16 item 4): the proxy answering a diverted UDP
    /// client sends from the original destination, in the reply direction of the diverted
    /// flow. Taken for an upstream flow of the proxy, it made the server's next answer in
    /// the same tuple (a client reusing its port: dig does) pass the proxy by, unjudged.
    @Test func theProxysAnswerToADivertedClientIsNoUpstreamFlowOfItsOwn() throws {
        func key(_ source: String, _ sourcePort: UInt16, _ destination: String, _ destinationPort: UInt16) -> sluice_ct_key {
            var key = sluice_ct_key()
            key.saddr_be = PacketBuilder.ipv4(source).withUnsafeBytes { $0.load(as: UInt32.self) }
            key.daddr_be = PacketBuilder.ipv4(destination).withUnsafeBytes { $0.load(as: UInt32.self) }
            key.sport_be = sourcePort.bigEndian
            key.dport_be = destinationPort.bigEndian
            key.protocol = 17
            return key
        }
        // The client's query was diverted to the proxy's UDP listener (as `redirect` records it).
        var diverted = sluice_ct_value()
        diverted.proxy_port = 15053
        try maps.connections.update(key(Self.client, 40000, Self.outside, 53), diverted)
        // The proxy's answer to the client leaves from the resolver's address, marked.
        let answer = PacketBuilder.frame(source: Self.outside, destination: Self.client, protocol: 17, sourcePort: 53,
                                         destinationPort: 40000)
        #expect(try run(answer, mark: UInt32(SLUICE_MARK_FROM_PROXY), program: "sluice_to_wire").returnCode == Self.ok)
        #expect(maps.connections.lookup(key(Self.outside, 53, Self.client, 40000)) == nil)
        // The resolver's next answer in the same tuple is for the proxy's socket (none here:
        // dropped), never routed on to the client.
        #expect(try run(answer).returnCode == Self.shot)
        #expect(counter(.dropUpstreamGone) == 1)
        // An entry left by an older program is not taken for a wire peer's flow either.
        var upstream = sluice_ct_value()
        upstream.flags = UInt8(SLUICE_CT_PROXY_UPSTREAM)
        try maps.connections.update(key(Self.outside, 53, Self.client, 40000), upstream)
        #expect(try run(answer).returnCode == Self.shot)
        #expect(counter(.dropUpstreamGone) == 2)
    }

    @Test func defaultDenyDropsWhatIsNotAllowedAndAllowsWhatIs() throws {
        try apply { state in
            state.enforcement[301] = Enforcement(ingress: true, egress: false)
            state.policy[PolicyKey(endpoint: 301, direction: .ingress, peer: 300, port: 80, ipProtocol: 6)] = PolicyEntry(action: .allow, rule: 7)
        }
        #expect(try run(PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 41000, destinationPort: 81)).returnCode == Self.shot)
        #expect(counter(.dropPolicyDefault) == 1)
        #expect(try run(PacketBuilder.frame(source: Self.outside, destination: Self.server, sourcePort: 41001, destinationPort: 80)).returnCode == Self.shot,
                "the allow names the client's identity, not the world")
        #expect(try run(PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 41002, destinationPort: 80)).returnCode == Self.ok)
        #expect(counter(.allowed) == 1)
    }

    // MARK: Learned addresses (toFQDNs)

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    static let outsideValue = IPAddress("192.0.2.9")!

    @Test func aLearnedAddressAllowsOnlyItsEndpointItsPortAndUntilItExpires() throws {
        try apply { state in state.enforcement[300] = Enforcement(ingress: false, egress: true) }
        let syn = { (port: UInt16, sourcePort: UInt16) in
            PacketBuilder.frame(source: Self.client, destination: Self.outside, sourcePort: sourcePort, destinationPort: port)
        }
        #expect(try run(syn(443, 46000)).returnCode == Self.shot, "nothing learned: default deny")
        try maps.writeLearned(endpoint: 300, address: Self.outsideValue,
                              grants: [LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow))],
                              expires: Self.now() + 60_000_000_000)
        #expect(try run(syn(443, 46001)).returnCode == Self.ok)
        #expect(counter(.fqdnAllowed) == 1)
        #expect(try run(syn(80, 46002)).returnCode == Self.shot, "another port is not granted")
        // Another endpoint did not learn it.
        try apply { state in
            state.addresses[IPv4Prefix("10.9.3.2")!] = AddressEntry(identity: 302, isLocalEndpoint: true)
            state.enforcement[302] = Enforcement(ingress: false, egress: true)
        }
        #expect(try run(PacketBuilder.frame(source: "10.9.3.2", destination: Self.outside, sourcePort: 46003, destinationPort: 443)).returnCode == Self.shot)
        // Expired: new flows are dropped, counted as such.
        try maps.writeLearned(endpoint: 300, address: Self.outsideValue,
                              grants: [LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow))],
                              expires: Self.now() - 1)
        #expect(try run(syn(443, 46004)).returnCode == Self.shot)
        #expect(counter(.fqdnExpired) == 1)
        // The flow opened while it was valid goes on.
        #expect(try run(syn(443, 46001)).returnCode == Self.ok)
    }

    @Test func anEveryPortGrantYieldsToAnExactDenyAndToExplicitDenyRules() throws {
        try apply { state in
            state.enforcement[300] = Enforcement(ingress: false, egress: true)
            state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: NumericIdentity.any, port: 25, ipProtocol: 6)] = PolicyEntry(action: .deny, rule: 3)
        }
        try maps.writeLearned(endpoint: 300, address: Self.outsideValue,
                              grants: [LearnedGrant(port: 0, ipProtocol: 6, entry: PolicyEntry(action: .allow)),
                                       LearnedGrant(port: 22, ipProtocol: 6, entry: PolicyEntry(action: .deny))],
                              expires: 0)
        let syn = { (port: UInt16, sourcePort: UInt16) in
            PacketBuilder.frame(source: Self.client, destination: Self.outside, sourcePort: sourcePort, destinationPort: port)
        }
        #expect(try run(syn(8443, 47000)).returnCode == Self.ok)
        #expect(try run(syn(22, 47001)).returnCode == Self.shot, "the exact entry says no")
        #expect(try run(syn(25, 47002)).returnCode == Self.shot, "an explicit deny rule wins over what DNS taught")
        #expect(counter(.dropPolicyDeny) == 1)
        maps.deleteLearned(endpoint: 300, address: Self.outsideValue,
                           grants: [LearnedGrant(port: 0, ipProtocol: 6, entry: PolicyEntry(action: .allow))])
        #expect(try run(syn(8443, 47003)).returnCode == Self.shot, "removed: default deny again")
    }

    @Test func aLearnedAddressWithL7RulesIsRedirected() throws {
        try apply { state in state.enforcement[300] = Enforcement(ingress: false, egress: true) }
        try maps.writeLearned(endpoint: 300, address: Self.outsideValue,
                              grants: [LearnedGrant(port: 80, ipProtocol: 6, entry: PolicyEntry(action: .redirect, proxyPort: 1))],
                              expires: 0)
        // Nothing listens on 127.0.0.1:1: the redirect is taken, and fails closed.
        #expect(try run(PacketBuilder.frame(source: Self.client, destination: Self.outside, sourcePort: 48000, destinationPort: 80)).returnCode == Self.shot)
        #expect(counter(.dropProxyUnavailable) == 1)
    }

    @Test func denyWinsOverAMoreSpecificAllow() throws {
        try apply { state in
            state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: 301, port: 80, ipProtocol: 6)] = PolicyEntry(action: .allow)
            state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: NumericIdentity.any, port: 0, ipProtocol: 6)] = PolicyEntry(action: .deny, rule: 9)
        }
        #expect(try run(PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 42000)).returnCode == Self.shot)
        #expect(counter(.dropPolicyDeny) == 1)
    }

    @Test func theProxysOwnPacketsAreNeverStopped() throws {
        try apply { state in
            state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: NumericIdentity.any, port: 0, ipProtocol: 6)] = PolicyEntry(action: .deny)
        }
        let frame = PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 43000)
        #expect(try run(frame).returnCode == Self.shot)
        #expect(try run(frame, mark: UInt32(SLUICE_MARK_FROM_PROXY)).returnCode == Self.ok)
        #expect(counter(.proxyPass) == 1)
    }

    @Test func aRedirectWithNoListenerFailsClosed() throws {
        try apply { state in
            state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: 301, port: 8080, ipProtocol: 6)] = PolicyEntry(action: .redirect, proxyPort: 1)
        }
        // Nothing listens on 127.0.0.1:1 in this namespace.
        #expect(try run(PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 44000, destinationPort: 8080)).returnCode == Self.shot)
        #expect(counter(.dropProxyUnavailable) == 1)
    }

    @Test func laterFragmentsOfPolicedFlowsAreDropped() throws {
        var frame = PacketBuilder.frame(source: Self.client, destination: Self.server, sourcePort: 45000)
        frame[20] = 0x00
        frame[21] = 0x10 // fragment offset 16 (x8 bytes): no TCP header here
        #expect(try run(frame).returnCode == Self.shot)
        #expect(counter(.dropFragment) == 1)
    }

    @Test func theNodesOwnTrafficMeetsTheDestinationsIngressPolicy() throws {
        try apply { state in
            state.enforcement[301] = Enforcement(ingress: true, egress: false)
        }
        let fromNode = PacketBuilder.frame(source: "10.9.2.1", destination: Self.server, sourcePort: 46000)
        #expect(try run(fromNode, program: "sluice_to_wire").returnCode == Self.shot)
        #expect(try run(fromNode, mark: UInt32(SLUICE_MARK_ALLOWED), program: "sluice_to_wire").returnCode == Self.ok,
                "decided at the node's ingress already")
    }

    @Test func theNodesOwnFlowToAnL7PortIsTurnedBackIntoTheNodeTowardTheProxy() throws {
        try apply { state in
            state.addresses[IPv4Prefix("10.9.2.1")!] = AddressEntry(identity: NumericIdentity.host, isLocalEndpoint: false)
            state.enforcement[301] = Enforcement(ingress: true, egress: false)
            state.policy[PolicyKey(endpoint: 301, direction: .ingress, peer: NumericIdentity.host, port: 8080, ipProtocol: 6)] =
                PolicyEntry(action: .redirect, proxyPort: 15001)
        }
        let fromNode = PacketBuilder.frame(source: "10.9.2.1", destination: Self.server, sourcePort: 47000, destinationPort: 8080)
        let outcome = try ProgramTestRun.run(object, program: "sluice_to_wire", packet: fromNode)
        #expect(outcome.returnCode == 7, "TC_ACT_REDIRECT: back into the node's ingress")
        #expect(outcome.mark & UInt32(SLUICE_MARK_MASK) == UInt32(SLUICE_MARK_FROM_NODE))
        #expect(counter(.redirected) == 1)
        // Its later packets follow it.
        let ack = PacketBuilder.frame(source: "10.9.2.1", destination: Self.server, sourcePort: 47000, destinationPort: 8080, syn: false, ack: true)
        #expect(try run(ack, program: "sluice_to_wire").returnCode == 7)
    }

    @Test func theNodesAddressFromTheWireIsSpoofedUnlessTheNodeTurnedItBack() throws {
        try apply { state in
            state.addresses[IPv4Prefix("10.9.2.1")!] = AddressEntry(identity: NumericIdentity.host, isLocalEndpoint: false)
        }
        let spoofed = PacketBuilder.frame(source: "10.9.2.1", destination: Self.server, sourcePort: 48000, destinationPort: 80)
        #expect(try run(spoofed).returnCode == Self.shot)
        #expect(counter(.dropSpoofedHost) == 1)
        #expect(try run(spoofed, mark: UInt32(SLUICE_MARK_FROM_NODE)).returnCode == Self.ok, "the node's own, turned back")
        #expect(counter(.dropSpoofedHost) == 1)
    }

    @Test func synchronisationWritesOnlyDifferences() throws {
        var state = maps.read()
        state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: 301, port: 443, ipProtocol: 6)] = PolicyEntry(action: .allow)
        let first = try maps.synchronize(to: state)
        #expect(first.written == 1)
        let second = try maps.synchronize(to: state)
        #expect(second.written == 0 && second.deleted == 0)
        state.policy = [:]
        let third = try maps.synchronize(to: state)
        #expect(third.deleted == 1)
    }
}
