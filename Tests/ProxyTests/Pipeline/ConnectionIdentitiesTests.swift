import Testing
import PolicyEngine
@testable import Proxy

/// Issue 15 item 3: which policy questions the proxy asks of a connection depends on which
/// ends are this node's pods: the source node judges egress, the destination node ingress.
@Suite struct ConnectionIdentitiesTests {
    static let endpoints = """
        endpoints:
          - {ip: 10.0.1.2, namespace: shop, pod: frontend, labels: {app: frontend}, node: node1}
          - {ip: 10.0.1.3, namespace: shop, pod: backend, labels: {app: backend}, node: node1}
          - {ip: 10.0.2.2, namespace: shop, pod: api, labels: {app: api}, node: node2}
        """

    static func questions(_ client: String, _ server: String, on node: String) throws -> [String] {
        let directory = try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml", localNode: node)
        let snapshot = PolicySnapshot(policies: [], endpoints: directory)
        let connection = ConnectionIdentities(client: SocketAddress("\(client):40000")!, server: SocketAddress("\(server):8080")!,
                                              snapshot: snapshot)
        return connection.flows.map { "\($0.subject.podName ?? "?") \($0.direction)" }
    }

    @Test func eachNodeAsksOnlyAboutItsOwnPods() throws {
        #expect(try Self.questions("10.0.1.2", "10.0.1.3", on: "node1") == ["backend ingress", "frontend egress"])
        #expect(try Self.questions("10.0.1.2", "10.0.2.2", on: "node1") == ["frontend egress"], "the api's ingress is node2's")
        #expect(try Self.questions("10.0.1.2", "10.0.2.2", on: "node2") == ["api ingress"], "the frontend's egress is node1's")
    }
}
