import Testing
import CSluiceDatapath
import PolicyEngine
@testable import Datapath
#if canImport(Glibc)
import Glibc
#endif

/// The tc programs on crafted IPv6 packets (BPF_PROG_TEST_RUN), judged against the same
/// policy entries as IPv4 (identities are shared; only the identity map differs), and the
/// hostile shapes of IPv6: extension header chains, routing headers, fragments that hide the
/// L4 header, IPv4-mapped addresses, ICMPv6 beyond neighbour discovery. Root only.
@Suite(.serialized, .enabled(if: DatapathTestSupport.kernelTestsEnabled, "needs root (BPF)"))
final class IPv6ProgramTests {
    let pinRoot = "/sys/fs/bpf/sluice-unit6-\(getpid())"
    let object: BPFObject
    let maps: DatapathMaps
    static let ok: UInt32 = 0
    static let shot: UInt32 = 2

    static let client = "fd00:9:1::2"   // identity 300, local endpoint
    static let server = "fd00:9:2::2"   // identity 301, local endpoint
    static let outside = "2001:db8::9"  // world-ipv6

    init() throws {
        let setup = DatapathSetup(namespace: nil, interfaces: [], pinRoot: pinRoot, objectPath: try DatapathTestSupport.requireObject())
        setup.removePins()
        object = try BPFObject(path: setup.objectPath, pinRoot: pinRoot)
        maps = try DatapathMaps(pinRoot: pinRoot)
        var state = DatapathState()
        state.addresses6[IPv6Prefix(Self.client)!] = AddressEntry(identity: 300, isLocalEndpoint: true)
        state.addresses6[IPv6Prefix(Self.server)!] = AddressEntry(identity: 301, isLocalEndpoint: true)
        // The backend admits the client on port 80 only; the client may not leave the node.
        state.enforcement[301] = Enforcement(ingress: true, egress: false)
        state.policy[PolicyKey(endpoint: 301, direction: .ingress, peer: 300, port: 80, ipProtocol: 6)] = PolicyEntry(action: .allow, rule: 7)
        try maps.synchronize(to: state)
    }

    deinit {
        DatapathSetup(namespace: nil, interfaces: [], pinRoot: pinRoot, objectPath: "").removePins()
    }

    func run(_ packet: [UInt8], mark: UInt32 = 0, program: String = "sluice_from_wire") throws -> UInt32 {
        try ProgramTestRun.run(object, program: program, packet: packet, mark: mark).returnCode
    }

    func ipv6(_ counter: DatapathCounter) -> UInt64 { maps.counters.total(counter.ipv6Slot) }
    func ipv4(_ counter: DatapathCounter) -> UInt64 { maps.counters.total(counter.rawValue) }

    func syn(_ port: UInt16, from source: String = client, sourcePort: UInt16, _ extensions: [PacketBuilder6.Extension] = []) -> [UInt8] {
        PacketBuilder6.frame(source: source, destination: Self.server, extensions: extensions, sourcePort: sourcePort, destinationPort: port)
    }

    @Test func identitiesComeFromTheIPv6MapAndPolicyIsTheSharedOne() throws {
        let outcome = try ProgramTestRun.run(object, program: "sluice_from_wire", packet: syn(80, sourcePort: 41000))
        #expect(outcome.returnCode == Self.ok)
        #expect(outcome.mark & UInt32(SLUICE_MARK_MASK) == UInt32(SLUICE_MARK_ALLOWED))
        #expect(try run(syn(81, sourcePort: 41001)) == Self.shot, "default deny")
        #expect(try run(syn(80, from: Self.outside, sourcePort: 41002)) == Self.shot, "the allow names the client, not world-ipv6")
        #expect(ipv6(.allowed) == 1 && ipv6(.dropPolicyDefault) == 2)
        #expect(ipv4(.allowed) == 0 && ipv4(.dropPolicyDefault) == 0, "IPv6 is counted apart")
        // The reply of the allowed flow is known (IPv6 connection tracking).
        let reply = PacketBuilder6.frame(source: Self.server, destination: Self.client, sourcePort: 80, destinationPort: 41000,
                                         syn: true, ack: true)
        #expect(try run(reply) == Self.ok)
        #expect(ipv6(.established) == 1)
        #expect(maps.entryCounts().first { $0.0 == "sluice_ct6" }?.1 == 1)
    }

    @Test func aDenyRuleWinsOverIPv6AsOverIPv4() throws {
        var state = maps.read()
        state.policy[PolicyKey(endpoint: 300, direction: .egress, peer: NumericIdentity.any, port: 0, ipProtocol: 6)] =
            PolicyEntry(action: .deny, rule: 9)
        try maps.synchronize(to: state)
        #expect(try run(syn(80, sourcePort: 41500)) == Self.shot, "the client's egress deny beats the server's allow")
        #expect(ipv6(.dropPolicyDeny) == 1)
    }

    @Test func extensionHeadersAreWalkedToTheRealPort() throws {
        let chain: [PacketBuilder6.Extension] = [.hopByHop, .destinationOptions, .authentication, .routing(segmentsLeft: 0),
                                                 .fragment(offset: 0, more: false), .destinationOptions]
        #expect(try run(syn(81, sourcePort: 42000, chain)) == Self.shot, "the denied port behind six headers")
        #expect(try run(syn(80, sourcePort: 42001, chain)) == Self.ok)
        #expect(ipv6(.dropPolicyDefault) == 1)
    }

    @Test func whatCannotBeJudgedIsDropped() throws {
        // A routing header with segments left: the destination judged is not the final one.
        #expect(try run(syn(80, sourcePort: 43000, [.routing(segmentsLeft: 1)])) == Self.shot)
        // More extension headers than the program walks.
        let long = [PacketBuilder6.Extension](repeating: .destinationOptions, count: Int(SLUICE_IPV6_MAX_EXTENSION_HEADERS) + 1)
        #expect(try run(syn(80, sourcePort: 43001, long)) == Self.shot)
        #expect(ipv6(.dropExtensionHeader) == 2)
        // A later fragment carries no L4 header.
        #expect(try run(syn(80, sourcePort: 43002, [.fragment(offset: 16, more: false)])) == Self.shot)
        #expect(ipv6(.dropFragment) == 1)
        // A first fragment that hides (part of) the TCP header.
        let hidden = PacketBuilder6.frame(source: Self.client, destination: Self.server, extensions: [.fragment(offset: 0, more: true)],
                                          sourcePort: 43003, destinationPort: 80, l4Bytes: 2)
        #expect(try run(hidden) == Self.shot)
        #expect(ipv6(.dropMalformed) == 1)
        // IPv4-mapped addresses never belong on the wire (RFC 4291 2.5.5.2).
        #expect(try run(syn(80, from: "::ffff:10.9.1.2", sourcePort: 43004)) == Self.shot)
        #expect(try run(PacketBuilder6.frame(source: Self.client, destination: "::ffff:10.9.2.2", sourcePort: 43005)) == Self.shot)
        #expect(ipv6(.dropMappedAddress) == 2)
        #expect(ipv6(.allowed) == 0, "nothing above passed")
    }

    @Test func neighbourDiscoveryPassesAndOtherICMPv6MeetsThePolicy() throws {
        let solicitation = PacketBuilder6.frame(source: "fe80::1", destination: Self.server, protocol: 58, hopLimit: 255, icmpType: 135)
        #expect(try run(solicitation) == Self.ok)
        #expect(try run(solicitation, program: "sluice_to_wire") == Self.ok)
        let report = PacketBuilder6.frame(source: "fe80::1", destination: "ff02::16", extensions: [.hopByHop], protocol: 58,
                                          hopLimit: 1, icmpType: 143)
        #expect(try run(report) == Self.ok)
        #expect(ipv6(.neighbour) == 3)
        // The same message with a hop limit a router could have decremented is no ND: judged.
        let forwarded = PacketBuilder6.frame(source: Self.client, destination: Self.server, protocol: 58, hopLimit: 64, icmpType: 135)
        #expect(try run(forwarded) == Self.shot)
        let echo = PacketBuilder6.frame(source: Self.client, destination: Self.server, protocol: 58, hopLimit: 64, icmpType: 128)
        #expect(try run(echo) == Self.shot)
        #expect(ipv6(.dropPolicyDefault) == 2)
    }

    @Test func theProxysOwnPacketsPassAndARedirectWithoutListenerFailsClosed() throws {
        var state = maps.read()
        state.policy[PolicyKey(endpoint: 301, direction: .ingress, peer: 300, port: 8080, ipProtocol: 6)] =
            PolicyEntry(action: .redirect, proxyPort: 1)
        try maps.synchronize(to: state)
        // Nothing listens on [::1]:1 in this namespace.
        #expect(try run(syn(8080, sourcePort: 44000)) == Self.shot)
        #expect(ipv6(.dropProxyUnavailable) == 1)
        #expect(try run(syn(81, sourcePort: 44001), mark: UInt32(SLUICE_MARK_FROM_PROXY)) == Self.ok)
        #expect(ipv6(.proxyPass) == 1)
    }

    @Test func aLearnedIPv6AddressAllowsOnlyItsEndpointItsPortAndUntilItExpires() throws {
        var state = maps.read()
        state.enforcement[300] = Enforcement(ingress: false, egress: true)
        try maps.synchronize(to: state)
        let syn = { (port: UInt16, sourcePort: UInt16) in
            PacketBuilder6.frame(source: Self.client, destination: Self.outside, sourcePort: sourcePort, destinationPort: port)
        }
        #expect(try run(syn(443, 46000)) == Self.shot, "nothing learned: default deny")
        let grant = [LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow))]
        // The same bits as an IPv4 address teach IPv6 nothing.
        try maps.writeLearned(endpoint: 300, address: IPAddress("32.1.13.184")!, grants: grant, expires: 0)
        #expect(try run(syn(443, 46001)) == Self.shot)
        try maps.writeLearned(endpoint: 300, address: IPAddress(Self.outside)!, grants: grant, expires: 0)
        #expect(try run(syn(443, 46002)) == Self.ok)
        #expect(ipv6(.fqdnAllowed) == 1)
        #expect(try run(syn(80, 46003)) == Self.shot, "another port is not granted")
        #expect(try run(PacketBuilder6.frame(source: Self.server, destination: Self.outside, sourcePort: 46004, destinationPort: 443))
                == Self.ok, "the server's egress is not enforced at all")
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        try maps.writeLearned(endpoint: 300, address: IPAddress(Self.outside)!, grants: grant, expires: UInt64(time.tv_sec) * 1_000_000_000 - 1)
        #expect(try run(syn(443, 46005)) == Self.shot, "expired")
        #expect(ipv6(.fqdnExpired) == 1)
        #expect(maps.learnedEntries().contains { $0.address == IPAddress(Self.outside)! && $0.endpoint == 300 })
        maps.clearLearned()
        #expect(maps.learnedEntries().isEmpty)
    }

    @Test func theNodesOwnIPv6TrafficMeetsTheDestinationsIngressPolicy() throws {
        let fromNode = PacketBuilder6.frame(source: "fd00:9:2::1", destination: Self.server, sourcePort: 45000)
        #expect(try run(fromNode, program: "sluice_to_wire") == Self.shot)
        #expect(try run(fromNode, mark: UInt32(SLUICE_MARK_ALLOWED), program: "sluice_to_wire") == Self.ok)
    }
}
