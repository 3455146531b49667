import Testing
@testable import PolicyEngine

/// Issue 15 item 3: the endpoints file places pods on nodes (`node:`); each node's sluice
/// loads it for itself, so another node's pods are peers only and another node's own
/// addresses are `reserved:remote-node`.
@Suite struct EndpointNodeTests {
    static let text = """
        endpoints:
          - {ip: 10.0.1.2, namespace: shop, pod: frontend, labels: {app: frontend}, node: node1}
          - {ip: 10.0.2.2, namespace: shop, pod: api, labels: {app: api}, node: node2}
          - {ip: 10.0.3.2, namespace: shop, pod: anywhere, labels: {app: anywhere}}
          - {ip: 10.0.1.1, reserved: host, node: node1}
          - {ip: 10.0.2.1, reserved: host, node: node2}
        """

    @Test func podsOnAnotherNodeArePeersAndItsAddressesRemoteNodes() throws {
        let directory = try EndpointDirectory.load(text: Self.text, file: "endpoints.yaml", localNode: "node1")
        #expect(directory.nodeNames == ["node1", "node2"])
        let frontend = directory.identity(for: IPAddress("10.0.1.2")!)
        let api = directory.identity(for: IPAddress("10.0.2.2")!)
        #expect(frontend.isLocalEndpoint && !frontend.isOnAnotherNode)
        #expect(api.isClusterEndpoint && api.isOnAnotherNode && !api.isLocalEndpoint)
        #expect(directory.identity(for: IPAddress("10.0.3.2")!).isLocalEndpoint, "no node: on whichever node reads the file")
        #expect(directory.identity(for: IPAddress("10.0.1.1")!).reservedKind == .host)
        #expect(directory.identity(for: IPAddress("10.0.2.1")!).reservedKind == .remoteNode)

        let seenFromNode2 = try EndpointDirectory.load(text: Self.text, file: "endpoints.yaml", localNode: "node2")
        #expect(seenFromNode2.identity(for: IPAddress("10.0.2.2")!).isLocalEndpoint)
        #expect(seenFromNode2.identity(for: IPAddress("10.0.1.2")!).isOnAnotherNode)
        #expect(seenFromNode2.identity(for: IPAddress("10.0.1.1")!).reservedKind == .remoteNode)
        #expect(seenFromNode2.identity(for: IPAddress("10.0.2.1")!).reservedKind == .host)
    }

    @Test func withoutALocalNodeEveryEntryIsLocal() throws {
        let directory = try EndpointDirectory.load(text: Self.text, file: "endpoints.yaml")
        #expect(directory.identity(for: IPAddress("10.0.2.2")!).isLocalEndpoint)
        #expect(directory.identity(for: IPAddress("10.0.2.1")!).reservedKind == .host)
    }

    @Test(arguments: [
        ("endpoints:\n  - {ip: 10.0.0.1, namespace: shop, node: Node_1}\n",
         "endpoints.yaml:2:43: endpoints[0].node: expected a node name (lowercase letters, digits, '-' and '.', at most 253 characters), got \"Node_1\""),
        ("endpoints:\n  - {ip: 10.0.0.1, namespace: shop, node: [node1]}\n", "endpoints[0].node: expected a string"),
        ("endpoints:\n  - {ip: 10.0.0.1, namespace: shop, node: \"\"}\n", "endpoints[0].node: expected a node name"),
        ("endpoints:\n  - {ip: 10.0.0.1, namespace: shop, nodes: node1}\n", "endpoints[0].nodes: unknown field; expected one of: ip, cidr, namespace, pod, labels, ports, reserved, node"),
    ])
    func aBadNodeIsRejectedWithWhereAndWhat(text: String, expected: String) {
        do {
            _ = try EndpointDirectory.load(text: text, file: "endpoints.yaml", localNode: "node1")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "got: \(error.description)")
        }
    }
}
