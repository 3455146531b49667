import Testing
@testable import PolicyEngine

/// Issue 9, item 5 support: which L7 protocols judge a connection's requests, so the
/// proxy can deny and report a port whose rules it cannot parse instead of relaying it.
@Suite("L7 protocols of a connection")
struct L7ProtocolsTests {
    static let snapshot = PolicySnapshot(policies: loadPolicies("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: server, namespace: app}
    spec:
      endpointSelector: {matchLabels: {app: server}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: client}}]
        toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: GET}]}
        - ports: [{port: "9092", protocol: TCP}]
          rules: {kafka: [{role: produce}]}
        - ports: [{port: "7000", protocol: TCP}]
        - ports: [{port: "7001", protocol: TCP}]
          rules: {http: [{method: GET}]}
        - ports: [{port: "9000", endPort: 9010, protocol: TCP}]
          rules: {http: [{path: "/"}]}
      - fromEndpoints: [{matchLabels: {app: client}}]
        toPorts:
        - ports: [{port: "7001", protocol: TCP}]
      - fromEndpoints: [{matchLabels: {app: other}}]
        toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules: {http: [{}]}
      ingressDeny:
      - fromEndpoints: [{matchLabels: {app: client, banned: "yes"}}]
    ---
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: client, namespace: app}
    spec:
      endpointSelector: {matchLabels: {app: client}}
      egress:
      - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
        toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules: {dns: [{matchPattern: "*.example.com"}]}
      - toEndpoints: [{matchLabels: {app: server}}]
    """))

    static let server = pod("app", ["app": "server"])
    static let client = pod("app", ["app": "client"])
    static let dns = pod("kube-system", ["k8s-app": "kube-dns"])

    struct Case: CustomStringConvertible, Sendable {
        let name: String
        let flow: FlowContext
        let protocols: Set<L7Protocol>
        var description: String { name }
    }

    static let cases: [Case] = [
        Case(name: "HTTP port", flow: ingress(to: server, from: client, port: 80), protocols: [.http]),
        Case(name: "Kafka port", flow: ingress(to: server, from: client, port: 9092), protocols: [.kafka]),
        Case(name: "DNS port over UDP", flow: egress(from: client, to: dns, port: 53, .udp), protocols: [.dns]),
        Case(name: "DNS port over TCP", flow: egress(from: client, to: dns, port: 53, .tcp), protocols: [.dns]),
        Case(name: "port without L7 rules", flow: ingress(to: server, from: client, port: 7000), protocols: []),
        Case(name: "L7 rules and a plain allow on the same port: allowed at L4", flow: ingress(to: server, from: client, port: 7001), protocols: []),
        Case(name: "HTTP rules on a port range", flow: ingress(to: server, from: client, port: 9005), protocols: [.http]),
        Case(name: "peer the L7 rule does not select: default deny", flow: ingress(to: server, from: pod("app", ["app": "stranger"]), port: 80), protocols: []),
        Case(name: "another peer's rules on the same port", flow: ingress(to: server, from: pod("app", ["app": "other"]), port: 9092), protocols: [.http]),
        Case(name: "port no rule names", flow: ingress(to: server, from: client, port: 81), protocols: []),
        Case(name: "UDP on an HTTP port", flow: ingress(to: server, from: client, port: 80, .udp), protocols: []),
        Case(name: "deny rule wins", flow: ingress(to: server, from: pod("app", ["app": "client", "banned": "yes"]), port: 80), protocols: []),
        Case(name: "direction not enforced", flow: egress(from: server, to: client, port: 80), protocols: []),
        Case(name: "DNS rules do not apply to another peer on port 53", flow: egress(from: client, to: server, port: 53, .udp), protocols: []),
    ]

    @Test("protocols per flow, from the snapshot, the endpoint handle and the connection", arguments: cases)
    func protocols(_ testCase: Case) {
        let flow = testCase.flow
        #expect(Self.snapshot.l7Protocols(for: flow) == testCase.protocols)
        let handle = Self.snapshot.policy(forEndpoint: flow.subject)
        #expect(handle.l7Protocols(for: flow) == testCase.protocols)
        let connection = handle.connection(flow)
        #expect(connection.l7Protocols == testCase.protocols)
        // The contract: non-empty exactly when the L7 rules decide, on an allowed connection.
        if !testCase.protocols.isEmpty {
            #expect(connection.verdict.isAllowed)
        }
    }

    @Test("a request of a protocol outside the set is denied as a mismatch")
    func mismatch() {
        let connection = Self.snapshot.policy(forEndpoint: Self.server).connection(ingress(to: Self.server, from: Self.client, port: 9092))
        #expect(connection.l7Protocols == [.kafka])
        #expect(connection.evaluate(http: HTTPRequestFacts(method: "GET", path: "/")).reason == .l7ProtocolMismatch(expected: "KAFKA"))
    }
}
