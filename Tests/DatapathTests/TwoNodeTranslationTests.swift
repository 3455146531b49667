import Testing
import PolicyEngine
@testable import Datapath

/// Issue 15 item 3: the lab's files (configs/lab) as each of its two nodes' datapaths hold
/// them. A node enforces its own pods' policies only; the other node's pods are peers with
/// their identity (not local endpoints), and its own addresses are `reserved:remote-node`.
@Suite struct TwoNodeTranslationTests {
    static func state(node: String) throws -> DatapathState {
        let root = DatapathTestSupport.packageRoot
        let loaded = PolicyLoader.load(file: "\(root)/configs/lab/policies.yaml")
        #expect(loaded.errors.isEmpty)
        let endpoints = try EndpointDirectory.load(file: "\(root)/configs/lab/endpoints.yaml", localNode: node)
        let snapshot = PolicySnapshot(policies: loaded.policies, endpoints: endpoints)
        return try PolicyTranslation(snapshot: snapshot, nodeAddresses: [], proxyPorts: .init(tcp: 15001, udp: 15053)).translate()
    }

    @Test func eachNodeEnforcesItsOwnPodsAndKnowsTheOthers() throws {
        let node1 = try Self.state(node: "node1"), node2 = try Self.state(node: "node2")
        let frontend1 = PolicyTranslationTests.identity(node1, "shop/frontend"), api1 = PolicyTranslationTests.identity(node1, "shop/api")
        #expect(node1.addresses[IPv4Prefix("10.200.1.2")!] == AddressEntry(identity: frontend1, isLocalEndpoint: true))
        #expect(node1.addresses[IPv4Prefix("10.201.1.2")!] == AddressEntry(identity: api1, isLocalEndpoint: false))
        #expect(node1.addresses6[IPv6Prefix("fd00:201:1::2/128")!] == AddressEntry(identity: api1, isLocalEndpoint: false))
        #expect(node1.enforcement[frontend1] == Enforcement(ingress: false, egress: true))
        #expect(node1.enforcement[api1] == nil, "the api's ingress is node2's business")
        #expect(!node1.policy.keys.contains { $0.endpoint == api1 })
        // The frontend's egress to the api: L7 on 8080 (node1's proxy), L4 on 9090.
        #expect(node1.policy[PolicyKey(endpoint: frontend1, direction: .egress, peer: api1, port: 8080, ipProtocol: 6)]?.action == .redirect)
        #expect(node1.policy[PolicyKey(endpoint: frontend1, direction: .egress, peer: api1, port: 9090, ipProtocol: 6)]?.action == .allow)
        #expect(node1.addresses[IPv4Prefix("10.200.250.1")!]?.identity == NumericIdentity.host)
        #expect(node1.addresses[IPv4Prefix("10.200.250.2")!] == AddressEntry(identity: NumericIdentity.remoteNode, isLocalEndpoint: false))
        #expect(node1.identityNames[NumericIdentity.remoteNode] == "reserved:remote-node")

        let frontend2 = PolicyTranslationTests.identity(node2, "shop/frontend"), api2 = PolicyTranslationTests.identity(node2, "shop/api")
        #expect(node2.addresses[IPv4Prefix("10.200.1.2")!] == AddressEntry(identity: frontend2, isLocalEndpoint: false))
        #expect(node2.addresses[IPv4Prefix("10.201.1.2")!] == AddressEntry(identity: api2, isLocalEndpoint: true))
        #expect(node2.enforcement[api2] == Enforcement(ingress: true, egress: false))
        #expect(node2.enforcement[frontend2] == nil, "the frontend's egress is node1's business")
        #expect(node2.policy[PolicyKey(endpoint: api2, direction: .ingress, peer: frontend2, port: 8080, ipProtocol: 6)]?.action == .redirect)
        #expect(node2.policy[PolicyKey(endpoint: api2, direction: .ingress, peer: frontend2, port: 9090, ipProtocol: 6)]?.action == .allow)
        // node1's own addresses are a remote node to node2, which the api does not admit.
        #expect(node2.addresses[IPv4Prefix("10.200.250.1")!]?.identity == NumericIdentity.remoteNode)
        #expect(node2.addresses6[IPv6Prefix("fd00:200:250::1/128")!]?.identity == NumericIdentity.remoteNode)
        #expect(node2.policy.keys.allSatisfy { !($0.endpoint == api2 && $0.peer == NumericIdentity.remoteNode) },
                "default deny keeps node1 itself out of the api")
    }
}
