import Foundation
import Testing
import PolicyEngine
@testable import Datapath

/// The L3/L4 view of the lab's real policies (configs/lab), as the datapath will hold it.
@Suite struct PolicyTranslationTests {
    static func labState() throws -> DatapathState {
        let root = DatapathTestSupport.packageRoot
        let loaded = PolicyLoader.load(file: "\(root)/configs/lab/policies.yaml")
        #expect(loaded.errors.isEmpty)
        let endpoints = try EndpointDirectory.load(file: "\(root)/configs/lab/endpoints.yaml")
        let snapshot = PolicySnapshot(policies: loaded.policies, endpoints: endpoints)
        return try PolicyTranslation(snapshot: snapshot, nodeAddresses: [], proxyPorts: .init(tcp: 15001, udp: 15053)).translate()
    }

    static func identity(_ state: DatapathState, _ name: String) -> UInt32 {
        state.identityNames.first { $0.value == name }!.key
    }

    @Test func identitiesAndEnforcement() throws {
        let state = try Self.labState()
        let frontend = Self.identity(state, "shop/frontend"), backend = Self.identity(state, "shop/backend")
        #expect(state.addresses[IPv4Prefix("10.200.1.2")!] == AddressEntry(identity: frontend, isLocalEndpoint: true))
        #expect(state.addresses[IPv4Prefix("10.200.2.1")!]?.identity == NumericIdentity.host)
        #expect(state.addresses[IPv4Prefix("10.200.100.0/24")!]?.isLocalEndpoint == false)
        #expect(state.enforcement[frontend] == Enforcement(ingress: false, egress: true))
        #expect(state.enforcement[backend] == Enforcement(ingress: true, egress: false))
        let intruder = Self.identity(state, "shop/intruder")
        #expect(state.enforcement[intruder] == nil, "no policy selects the intruder")
    }

    @Test func l7PortsRedirectAndL4PortsAllow() throws {
        let state = try Self.labState()
        let frontend = Self.identity(state, "shop/frontend"), backend = Self.identity(state, "shop/backend")
        let cidr = state.addresses[IPv4Prefix("10.200.100.0/24")!]!.identity
        #expect(state.policy[PolicyKey(endpoint: backend, direction: .ingress, peer: frontend, port: 8080, ipProtocol: 6)]
                == PolicyEntry(action: .redirect, proxyPort: 15001, rule: state.policy[PolicyKey(endpoint: backend, direction: .ingress, peer: frontend, port: 8080, ipProtocol: 6)]!.rule))
        #expect(state.policy[PolicyKey(endpoint: backend, direction: .ingress, peer: frontend, port: 9090, ipProtocol: 6)]?.action == .allow)
        #expect(state.policy[PolicyKey(endpoint: frontend, direction: .egress, peer: cidr, port: 53, ipProtocol: 17)]
                .map { ($0.action, $0.proxyPort) } ?? (.allow, 0) == (.redirect, 15053))
        #expect(state.policy[PolicyKey(endpoint: frontend, direction: .egress, peer: cidr, port: 80, ipProtocol: 6)]?.action == .allow)
        let intruder = Self.identity(state, "shop/intruder")
        #expect(state.policy.keys.allSatisfy { !($0.endpoint == backend && $0.peer == intruder) },
                "nothing lets the intruder in: default deny decides")
        let rule = state.policy[PolicyKey(endpoint: backend, direction: .ingress, peer: frontend, port: 9090, ipProtocol: 6)]!.rule
        #expect(state.ruleNames[rule]?.contains("shop/backend-ingress") == true)
    }

    @Test func nftablesHoldsLearnedAddressesInSetsWithTimeouts() throws {
        let state = try Self.labState()
        let frontend = Self.identity(state, "shop/frontend")
        let learned = [
            LearnedEntry(endpoint: frontend, address: IPAddress("192.0.2.1")!, grants: [
                LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow)),
                LearnedGrant(port: 80, ipProtocol: 6, entry: PolicyEntry(action: .redirect, proxyPort: 15001)),
                LearnedGrant(port: 22, ipProtocol: 6, entry: PolicyEntry(action: .deny)),
                LearnedGrant(port: 0, ipProtocol: 17, entry: PolicyEntry(action: .allow))], expires: 31_000_000_000),
            LearnedEntry(endpoint: frontend, address: IPAddress("192.0.2.2")!, grants: [
                LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow))], expires: 500_000_000),
        ]
        let text = NftablesRuleset(state: state, interfaces: ["ep1"], proxyPorts: .init(tcp: 15001, udp: 15053),
                                   learned: learned, now: 1_000_000_000).text()
        #expect(text.contains("set fqdn_port_\(frontend) {\n    type ipv4_addr . inet_proto . inet_service; flags timeout;\n    elements = { 192.0.2.1 . tcp . 443 timeout 30000ms }"))
        #expect(text.contains("192.0.2.1 . tcp . 80 timeout 30000ms"))
        #expect(text.contains("set fqdn_any_\(frontend) {\n    type ipv4_addr . inet_proto; flags timeout;\n    elements = { 192.0.2.1 . udp timeout 30000ms }"))
        #expect(!text.contains("192.0.2.2"), "expired before the table was written")
        // Consulted only after the explicit entries, right before the default deny.
        let deny = try #require(text.range(of: "ip saddr @id_\(frontend) counter drop comment \"default deny shop/frontend egress\""))
        let learnedRule = try #require(text.range(of: "ip daddr . meta l4proto . th dport @fqdn_port_\(frontend) counter return"))
        #expect(learnedRule.lowerBound < deny.lowerBound)
        #expect(text.contains("@fqdn_deny_\(frontend) counter drop"))
        #expect(text.contains("@fqdn_redirect_\(frontend) meta mark set meta mark or 0x1000 counter return"))
    }

    @Test func nftablesRoundsLearnedLifetimesUpByAnEighthAtMost() throws {
        let writer = try NftablesLearnedAddresses(namespace: nil, clock: { 0 })
        let second: UInt64 = 1_000_000_000
        #expect(writer.roundedExpiry(100 * second + 1, lifetime: 70 * second) == 104 * second, "steps of 8 s for 70 s")
        #expect(writer.roundedExpiry(100 * second + 1, lifetime: 2 * second) == 101 * second, "never under a second")
        #expect(writer.roundedExpiry(96 * second, lifetime: 70 * second) == 96 * second)
    }

    @Test func nftablesFallbackRulesetFailsClosed() throws {
        let state = try Self.labState()
        let text = NftablesRuleset(state: state, interfaces: ["ep1", "ep2"], proxyPorts: .init(tcp: 15001, udp: 15053)).text()
        #expect(text.contains("tproxy to 127.0.0.1:15001"))
        #expect(text.contains("counter drop comment \"proxy unavailable: fail closed\""))
        #expect(text.contains("default deny shop/backend ingress"))
        // Replies to the proxy's upstream legs (sent from the client's address): to its socket, or dropped.
        #expect(text.contains("ct mark set ct mark or 0x4000 accept comment \"the proxy's own upstream connections\""))
        #expect(text.contains("ct direction reply ct mark and 0x4000 != 0 meta l4proto udp socket transparent 1 meta mark set 0x200 accept"))
        #expect(text.contains("ct direction reply ct mark and 0x4000 != 0 fib daddr type != local counter drop"))
        #expect(text.hasPrefix("table ip sluice {}\ndelete table ip sluice\n"), "the table is replaced atomically")
        // An endpoint posing as the node (its source one of the node's addresses), in both tables,
        // before any rule that accepts traffic from the datapath's interfaces.
        for table in text.components(separatedBy: "table ip6 sluice {}") {
            let spoofed = try #require(table.range(of: "    fib saddr type local counter drop comment \"node address spoofed\""))
            #expect(table.range(of: "socket transparent 1")!.lowerBound > spoofed.lowerBound)
            #expect(table.range(of: "iifname != { \"ep1\", \"ep2\" } accept")!.lowerBound < spoofed.lowerBound)
        }
    }

    // MARK: IPv6 (issue 15)

    static func state(policies: String, endpoints: String) throws -> DatapathState {
        let loaded = PolicyLoader.load(text: policies, file: "policies.yaml")
        #expect(loaded.errors.isEmpty, "\(loaded.errors)")
        let directory = try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml")
        let snapshot = PolicySnapshot(policies: loaded.policies, endpoints: directory)
        return try PolicyTranslation(snapshot: snapshot, nodeAddresses: [], proxyPorts: .init(tcp: 15001, udp: 15053)).translate()
    }

    static let dualStackEndpoints = """
        endpoints:
          - {ip: 10.0.1.2, namespace: app, pod: client, labels: {app: client}}
          - {ip: "fd00:1::2", namespace: app, pod: client, labels: {app: client}}
          - {ip: "fd00:2::2", namespace: app, pod: server, labels: {app: server}}
          - {ip: "fd00:1::1", reserved: host}
        """

    @Test func dualStackEndpointsShareOneIdentityAndIPv6CIDRsGetTheirOwn() throws {
        let state = try Self.labState()
        let frontend = Self.identity(state, "shop/frontend")
        #expect(state.addresses6[IPv6Prefix("fd00:200:1::2")!] == AddressEntry(identity: frontend, isLocalEndpoint: true))
        #expect(state.addresses[IPv4Prefix("10.200.1.2")!]?.identity == frontend, "one identity for both families")
        #expect(state.addresses6[IPv6Prefix("fd00:200:2::1")!]?.identity == NumericIdentity.host)
        let cidr6 = try #require(state.addresses6[IPv6Prefix("fd00:200:100::/64")!])
        let cidr4 = try #require(state.addresses[IPv4Prefix("10.200.100.0/24")!])
        #expect(cidr6.identity != cidr4.identity && !cidr6.isLocalEndpoint)
        #expect(state.policy[PolicyKey(endpoint: frontend, direction: .egress, peer: cidr6.identity, port: 53, ipProtocol: 17)]
                .map { ($0.action, $0.proxyPort) } ?? (.allow, 0) == (.redirect, 15053))
        #expect(state.policy[PolicyKey(endpoint: frontend, direction: .egress, peer: NumericIdentity.worldIPv6, port: 53, ipProtocol: 17)] == nil,
                "an IPv6 address outside the CIDR is world-ipv6: default deny")
    }

    @Test func worldIPv4AndWorldIPv6AreToldApartAndExceptCarvesIPv6() throws {
        let state = try Self.state(policies: """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: client-egress, namespace: app}
            spec:
              endpointSelector: {matchLabels: {app: client}}
              egress:
                - toEntities: [world-ipv6]
                  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
                - toCIDRSet: [{cidr: "2001:db8::/32", except: ["2001:db8:bad::/48"]}]
                  toPorts: [{ports: [{port: "80", protocol: TCP}]}]
                - toEndpoints: [{matchLabels: {app: server}}]
                  icmps: [{fields: [{type: 128, family: IPv6}]}]
            """, endpoints: Self.dualStackEndpoints)
        let client = Self.identity(state, "app/client"), server = Self.identity(state, "app/server")
        func action(_ peer: UInt32, _ port: UInt16, _ ipProtocol: UInt8 = 6) -> PolicyAction? {
            state.policy[PolicyKey(endpoint: client, direction: .egress, peer: peer, port: port, ipProtocol: ipProtocol)]?.action
        }
        #expect(action(NumericIdentity.worldIPv6, 443) == .allow)
        #expect(action(NumericIdentity.world, 443) != .allow, "world-ipv6 does not admit IPv4 addresses")
        let allowed = try #require(state.addresses6[IPv6Prefix("2001:db8::/32")!]).identity
        let carved = try #require(state.addresses6[IPv6Prefix("2001:db8:bad::/48")!]).identity
        #expect(action(allowed, 80) == .allow)
        #expect(action(carved, 80) != .allow, "except carves its prefix out")
        #expect(action(server, 0, 58) == .allow, "ICMPv6 echo to the server")
        #expect(action(server, 0, 1) != .allow, "the ICMPv6 rule does not admit ICMP")
        #expect(state.addresses6[IPv6Prefix("fd00:1::2")!]?.identity == client)
        #expect(state.addresses6[IPv6Prefix("fd00:1::1")!]?.identity == NumericIdentity.host)
    }

    @Test func nftablesHasAnIPv6TableThatFailsClosedAndKeepsTheLink() throws {
        let state = try Self.labState()
        let text = NftablesRuleset(state: state, interfaces: ["ep1", "ep2"], proxyPorts: .init(tcp: 15001, udp: 15053)).text()
        let ipv6 = try #require(text.range(of: "table ip6 sluice {}\ndelete table ip6 sluice\n").map { String(text[$0.lowerBound...]) })
        let ipv4 = String(text[..<text.range(of: "table ip6 sluice {}")!.lowerBound])
        #expect(ipv6.contains("tproxy to [::1]:15001") && ipv6.contains("tproxy to [::1]:15053"))
        #expect(ipv6.contains("counter drop comment \"proxy unavailable: fail closed\""))
        #expect(ipv6.contains("default deny shop/backend ingress"))
        #expect(ipv6.contains("fd00:200:2::2/128") && !ipv6.contains("10.200.2.2"))
        #expect(ipv6.contains("nd-neighbor-solicit") && ipv6.contains("ip6 hoplimit 255"))
        #expect(ipv6.contains("rt seg-left != 0 counter drop"))
        #expect(ipv6.contains("type ipv6_addr . inet_proto . inet_service; flags timeout;"), "learned IPv6 addresses have sets of their own")
        #expect(ipv6.contains("ip6 saddr @id_") && ipv6.contains("ip6 daddr . meta l4proto . th dport @fqdn_port_"))
        #expect(!ipv4.contains("fd00:") && ipv4.contains("tproxy to 127.0.0.1:15001"))
    }

    @Test func learnedAddressesGoToTheTableOfTheirFamily() throws {
        let state = try Self.labState()
        let frontend = Self.identity(state, "shop/frontend")
        let grants = [LearnedGrant(port: 443, ipProtocol: 6, entry: PolicyEntry(action: .allow))]
        let learned = [LearnedEntry(endpoint: frontend, address: IPAddress("192.0.2.1")!, grants: grants, expires: 31_000_000_000),
                       LearnedEntry(endpoint: frontend, address: IPAddress("2001:db8::1")!, grants: grants, expires: 31_000_000_000)]
        let text = NftablesRuleset(state: state, interfaces: ["ep1"], proxyPorts: .init(tcp: 15001, udp: 15053),
                                   learned: learned, now: 1_000_000_000).text()
        let split = try #require(text.range(of: "table ip6 sluice {}"))
        #expect(text[..<split.lowerBound].contains("192.0.2.1 . tcp . 443 timeout 30000ms"))
        #expect(!text[..<split.lowerBound].contains("2001:db8::1"))
        #expect(text[split.lowerBound...].contains("2001:db8::1 . tcp . 443 timeout 30000ms"))
        let commands = NftablesLearnedAddresses.commands("add", learned, now: 1_000_000_000)
        #expect(commands.contains("add element ip sluice fqdn_port_\(frontend) { 192.0.2.1 . tcp . 443 timeout 30000ms }"))
        #expect(commands.contains("add element ip6 sluice fqdn_port_\(frontend) { 2001:db8::1 . tcp . 443 timeout 30000ms }"))
    }

    @Test(arguments: [("fd00::1", "fd00::1/128"), ("fd00:1:2:3::5/48", "fd00:1:2::/48"), ("::/0", "::/0"),
                      ("2001:db8::ff/127", "2001:db8::fe/127")])
    func ipv6PrefixesNormalise(text: String, expected: String) {
        #expect(IPv6Prefix(text)?.description == expected)
    }

    @Test(arguments: ["10.1.2.3", "fd00::/129", "fd00:::1", ""])
    func badIPv6PrefixesAreRejected(text: String) {
        #expect(IPv6Prefix(text) == nil)
    }

    @Test(arguments: [("10.1.2.3", "10.1.2.3/32"), ("10.1.2.3/8", "10.0.0.0/8"), ("0.0.0.0/0", "0.0.0.0/0")])
    func prefixesNormalise(text: String, expected: String) {
        #expect(IPv4Prefix(text)?.description == expected)
    }

    @Test(arguments: ["10.1.2", "10.1.2.256", "10.1.2.3/33", "a.b.c.d", ""])
    func badPrefixesAreRejected(text: String) {
        #expect(IPv4Prefix(text) == nil)
    }
}
