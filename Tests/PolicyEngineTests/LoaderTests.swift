import Testing
@testable import PolicyEngine

/// A CiliumNetworkPolicy whose spec body starts on line 5, indented by two spaces.
func cnp(_ body: String) -> String {
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n"
        + body.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n")
}

struct ValidationCase: CustomStringConvertible, Sendable {
    let name: String
    let body: String
    let line: Int
    let column: Int
    let path: String
    let message: String
    var description: String { name }
}

@Suite("Loading and validation")
struct LoaderTests {
    static let cases: [ValidationCase] = [
        ValidationCase(name: "two L7 types in one port rule", body: """
            endpointSelector: {}
            egress:
            - toPorts:
              - ports: [{port: "80", protocol: TCP}]
                rules:
                  http: [{}]
                  kafka: [{}]
            """, line: 11, column: 16, path: "spec.egress[0].toPorts[0].rules.kafka", message: "one L7 type per port rule"),
        ValidationCase(name: "L7 without a port", body: """
            endpointSelector: {}
            egress:
            - toPorts:
              - rules:
                  http: [{path: "/"}]
            """, line: 9, column: 9, path: "spec.egress[0].toPorts[0].rules", message: "L7 rules need a port"),
        ValidationCase(name: "L7 on port 0", body: """
            endpointSelector: {}
            egress:
            - toPorts:
              - ports: [{port: "0", protocol: TCP}]
                rules: {http: [{}]}
            """, line: 8, column: 15, path: "spec.egress[0].toPorts[0].ports[0]", message: "port is 0"),
        ValidationCase(name: "HTTP on UDP", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "80", protocol: UDP}]
                rules: {http: [{}]}
            """, line: 8, column: 15, path: "spec.ingress[0].toPorts[0].ports[0]", message: "L7 rules can only apply to TCP (not UDP)"),
        ValidationCase(name: "HTTP on ANY", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "80"}]
                rules: {http: [{}]}
            """, line: 8, column: 15, path: "spec.ingress[0].toPorts[0].ports[0]", message: "(not ANY)"),
        ValidationCase(name: "DNS on ingress", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "53", protocol: UDP}]
                rules:
                  dns: [{matchName: a.com}]
            """, line: 10, column: 14, path: "spec.ingress[0].toPorts[0].rules.dns", message: "DNS rules are not allowed on ingress"),
        ValidationCase(name: "DNS with a port range", body: """
            endpointSelector: {}
            egress:
            - toPorts:
              - ports: [{port: "53", endPort: 60, protocol: UDP}]
                rules:
                  dns: [{matchName: a.com}]
            """, line: 8, column: 37, path: "spec.egress[0].toPorts[0].ports[0].endPort", message: "DNS rules do not support port ranges"),
        ValidationCase(name: "role and apiKey together", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "9092", protocol: TCP}]
                rules:
                  kafka:
                  - role: produce
                    apiKey: fetch
            """, line: 12, column: 19, path: "spec.ingress[0].toPorts[0].rules.kafka[0].apiKey", message: "mutually exclusive"),
        ValidationCase(name: "topic charset", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "9092", protocol: TCP}]
                rules:
                  kafka:
                  - topic: "bad topic!"
            """, line: 11, column: 18, path: "spec.ingress[0].toPorts[0].rules.kafka[0].topic", message: "[a-zA-Z0-9._-]"),
        ValidationCase(name: "topic length", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "9092", protocol: TCP}]
                rules:
                  kafka:
                  - topic: \(String(repeating: "t", count: 256))
            """, line: 11, column: 18, path: "spec.ingress[0].toPorts[0].rules.kafka[0].topic", message: "at most 255"),
        ValidationCase(name: "unknown Kafka API key", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "9092", protocol: TCP}]
                rules:
                  kafka:
                  - apiKey: sendmoney
            """, line: 11, column: 19, path: "spec.ingress[0].toPorts[0].rules.kafka[0].apiKey", message: "Kafka API key name"),
        ValidationCase(name: "port out of range", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "70000"}]
            """, line: 8, column: 22, path: "spec.ingress[0].toPorts[0].ports[0].port", message: "port number 0-65535"),
        ValidationCase(name: "endPort below port", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "8080", endPort: 8000}]
            """, line: 8, column: 39, path: "spec.ingress[0].toPorts[0].ports[0].endPort", message: "endPort >= port"),
        ValidationCase(name: "more than 40 ports", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [\((1...41).map { "{port: \"\($0)\"}" }.joined(separator: ", "))]
            """, line: 8, column: 14, path: "spec.ingress[0].toPorts[0].ports", message: "the maximum is 40"),
        ValidationCase(name: "two peer kinds in one egress rule", body: """
            endpointSelector: {}
            egress:
            - toEndpoints: [{}]
              toCIDR: [10.0.0.0/8]
            """, line: 8, column: 13, path: "spec.egress[0].toCIDR", message: "one kind of peer per rule"),
        ValidationCase(name: "bad protocol", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "80", protocol: QUIC}]
            """, line: 8, column: 38, path: "spec.ingress[0].toPorts[0].ports[0].protocol", message: "TCP, UDP, SCTP or ANY"),
        ValidationCase(name: "bad regex", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "80", protocol: TCP}]
                rules:
                  http:
                  - path: "/api/(v1"
            """, line: 11, column: 17, path: "spec.ingress[0].toPorts[0].rules.http[0].path", message: "missing closing parenthesis"),
        ValidationCase(name: "unknown field", body: """
            endpointSelector: {}
            ingress:
            - fromEndpoint: [{}]
            """, line: 7, column: 5, path: "spec.ingress[0].fromEndpoint", message: "unknown field"),
        ValidationCase(name: "no direction", body: """
            endpointSelector: {matchLabels: {app: a}}
            """, line: 5, column: 3, path: "spec", message: "at least one of ingress, ingressDeny, egress, egressDeny"),
        ValidationCase(name: "bad operator", body: """
            endpointSelector:
              matchExpressions:
              - {key: app, operator: Maybe, values: [a]}
            ingress: [{}]
            """, line: 7, column: 28, path: "spec.endpointSelector.matchExpressions[0].operator", message: "In, NotIn, Exists or DoesNotExist"),
        ValidationCase(name: "In without values", body: """
            endpointSelector:
              matchExpressions:
              - {key: app, operator: In}
            ingress: [{}]
            """, line: 7, column: 7, path: "spec.endpointSelector.matchExpressions[0]", message: "non-empty values"),
        ValidationCase(name: "CIDR except outside", body: """
            endpointSelector: {}
            egress:
            - toCIDRSet:
              - cidr: 10.0.0.0/8
                except: [192.168.0.0/16]
            """, line: 9, column: 16, path: "spec.egress[0].toCIDRSet[0].except[0]", message: "inside 10.0.0.0/8"),
        ValidationCase(name: "unknown entity", body: """
            endpointSelector: {}
            egress:
            - toEntities: [everywhere]
            """, line: 7, column: 18, path: "spec.egress[0].toEntities[0]", message: "expected an entity"),
        ValidationCase(name: "headerMatches mismatch value", body: """
            endpointSelector: {}
            ingress:
            - toPorts:
              - ports: [{port: "80", protocol: TCP}]
                rules:
                  http:
                  - headerMatches: [{name: X-A, value: b, mismatch: IGNORE}]
            """, line: 11, column: 59, path: "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", message: "LOG, ADD, DELETE or REPLACE"),
        ValidationCase(name: "deny rule with L7", body: """
            endpointSelector: {}
            ingressDeny:
            - toPorts:
              - ports: [{port: "80", protocol: TCP}]
                rules: {http: [{}]}
            """, line: 9, column: 7, path: "spec.ingressDeny[0].toPorts[0].rules", message: "unknown field"),
    ]

    @Test("invalid rules are rejected with file, line, column, field path and expectation", arguments: cases)
    func rejects(_ testCase: ValidationCase) throws {
        let error = try #require(loadError(cnp(testCase.body)))
        #expect(error.file == "bad.yaml")
        #expect(error.fieldPath == testCase.path)
        #expect(error.message.contains(testCase.message), "\(error.message)")
        #expect(error.line == testCase.line && error.column == testCase.column, "at \(error.line):\(error.column) `\(Self.snippet(cnp(testCase.body), error))`")
        #expect(error.description.hasPrefix("bad.yaml:\(error.line):\(error.column): \(testCase.path): "))
    }

    static func snippet(_ text: String, _ error: PolicyError) -> String {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard error.line >= 1, error.line <= lines.count else { return "" }
        return String(lines[error.line - 1].dropFirst(max(0, error.column - 1)).prefix(20))
    }

    @Test("a bad document is rejected whole, the others in the file still load")
    func badDocumentRejectedWhole() {
        let text = """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: good-one, namespace: a}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: bad, namespace: a}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts:
            - ports: [{port: "80", protocol: TCP}]
          egress:
          - toPorts:
            - ports: [{port: "http!"}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: good-two, namespace: a}
        spec: {podSelector: {}, policyTypes: [Egress]}
        """
        let result = PolicyLoader.load(text: text, file: "multi.yaml")
        #expect(result.documentCount == 3)
        #expect(result.policies.map(\.name) == ["good-one", "good-two"])
        #expect(result.errors.map(\.description) == [
            "multi.yaml:16:22: spec.egress[0].toPorts[0].ports[0].port: expected a port number 0-65535 or a port name (IANA service name: letters, digits and '-', at most 15 characters), got \"http!\"",
        ])
    }

    @Test("YAML syntax errors carry their position")
    func syntaxError() {
        let result = PolicyLoader.load(text: "kind: NetworkPolicy\nmetadata: {name: [x\n", file: "syntax.yaml")
        #expect(result.errors.count == 1)
        #expect(result.errors.first?.line ?? 0 >= 2)
        #expect(result.errors.first?.description.hasPrefix("syntax.yaml:") == true)
    }

    @Test("JSON documents load like YAML, including specs and the clusterwide kind")
    func json() throws {
        let policies = loadPolicies("""
        {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "cw"},
         "specs": [{"endpointSelector": {}, "ingress": [{}]},
                   {"endpointSelector": {"matchLabels": {"a": "b"}}, "egress": [{"toEntities": ["world"]}, {"toEntities": ["host"]}]}]}
        """)
        let policy = try #require(policies.first)
        #expect(policy.kind == .ciliumClusterwideNetworkPolicy)
        #expect(policy.namespace == nil && policy.qualifiedName == "cw")
        #expect(policy.rules.count == 2)
        #expect(policy.rules[1].egress.map(\.index) == [0, 1])
    }

    @Test("a List of policies is unpacked")
    func list() {
        let policies = loadPolicies("""
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a}, spec: {podSelector: {}}}
        - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: b}, spec: {podSelector: {}}}
        """)
        #expect(policies.map(\.qualifiedName) == ["default/a", "default/b"])
    }

    @Test("wrong kind or apiVersion is refused")
    func kinds() throws {
        let service = try #require(loadError("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n"))
        #expect(service.fieldPath == "kind" && service.line == 2 && service.column == 7)
        let version = try #require(loadError("apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: s}\nspec: {}\n"))
        #expect(version.fieldPath == "apiVersion" && version.message.contains("cilium.io/v2"))
    }

    @Test("every example policy loads cleanly")
    func examples() throws {
        let files = PolicyFilesForTests.exampleFiles()
        #expect(files.count >= 15)
        for file in files {
            let result = PolicyLoader.load(file: file)
            #expect(result.errors.isEmpty, "\(file): \(result.errors)")
            #expect(!result.policies.isEmpty, "\(file)")
        }
        let directory = try EndpointDirectory.load(file: examplesDirectory + "/endpoints.yaml")
        #expect(directory.identities.count > 20)
    }
}

enum PolicyFilesForTests {
    static func exampleFiles() -> [String] {
        let names = [
            "default-deny-all.yaml", "network-policies-app.yaml", "cilium-http-policy.yaml", "cilium-dns-policy.yaml",
            "namespace-isolation.yaml", "pod-to-pod-backend-deny-all.yaml", "pod-to-pod-backend-allow-frontend.yaml",
            "pod-to-pod-l7-post-json.yaml", "pod-to-pod-l7-get-post.yaml", "api-allow.yaml", "api-only-from-frontend.yaml",
            "api-users-l7.yaml", "api-backend-policy.yaml", "default-deny-default-namespace.yaml", "kafka-topics.yaml",
            "clusterwide-egress.json", "header-matches.yaml",
        ]
        return names.map { examplesDirectory + "/" + $0 }
    }
}
