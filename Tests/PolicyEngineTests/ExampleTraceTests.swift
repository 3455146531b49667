import Testing
@testable import PolicyEngine

/// Every example policy, traced against the example endpoints file, as `sluice policy trace` does.
@Suite("Example policies: traces that must be allowed and denied")
struct ExampleTraceTests {
    static let directory = try! EndpointDirectory.load(file: examplesDirectory + "/endpoints.yaml")

    struct TraceCase: CustomStringConvertible, Sendable {
        let file: String
        let from: String
        let to: String
        let port: UInt16
        var transport: TransportProtocol = .tcp
        var request: TraceRequest = .none
        var fqdn: [String] = []
        let allowed: Bool
        var description: String { "\(file): \(from) -> \(to):\(port) \(allowed ? "allowed" : "denied")" }
    }

    static func http(_ method: String, _ path: String, headers: [(name: String, value: String)] = [], host: String? = nil) -> TraceRequest {
        .http(HTTPRequestFacts(method: method, path: path, host: host, headers: headers))
    }

    static let cases: [TraceCase] = [
        // cilium-http-policy.yaml: frontend -> backend:8000
        TraceCase(file: "cilium-http-policy.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, request: http("GET", "/api/v1/products/42"), allowed: true),
        TraceCase(file: "cilium-http-policy.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, request: http("POST", "/api/v1/orders"), allowed: true),
        TraceCase(file: "cilium-http-policy.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, request: http("GET", "/health"), allowed: true),
        TraceCase(file: "cilium-http-policy.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, request: http("DELETE", "/api/v1/orders"), allowed: false),
        TraceCase(file: "cilium-http-policy.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, request: http("POST", "/api/v1/orders/7"), allowed: false),
        TraceCase(file: "cilium-http-policy.yaml", from: "10.0.1.30", to: "10.0.1.20", port: 8000, request: http("GET", "/health"), allowed: false),
        // cilium-dns-policy.yaml: backend -> kube-dns:53
        TraceCase(file: "cilium-dns-policy.yaml", from: "10.0.1.20", to: "10.96.0.10", port: 53, transport: .udp, request: .dns(DNSQueryFacts(name: "api.stripe.com")), allowed: true),
        TraceCase(file: "cilium-dns-policy.yaml", from: "10.0.1.20", to: "10.96.0.10", port: 53, transport: .tcp, request: .dns(DNSQueryFacts(name: "vault.internal.company.com.")), allowed: true),
        TraceCase(file: "cilium-dns-policy.yaml", from: "10.0.1.20", to: "10.96.0.10", port: 53, transport: .udp, request: .dns(DNSQueryFacts(name: "evil.example.com")), allowed: false),
        TraceCase(file: "cilium-dns-policy.yaml", from: "10.0.1.20", to: "8.8.8.8", port: 53, transport: .udp, request: .dns(DNSQueryFacts(name: "api.stripe.com")), allowed: false),
        // default-deny-all.yaml: everything denied but DNS egress
        TraceCase(file: "default-deny-all.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, allowed: false),
        TraceCase(file: "default-deny-all.yaml", from: "10.0.1.10", to: "10.96.0.10", port: 53, transport: .udp, allowed: true),
        TraceCase(file: "default-deny-all.yaml", from: "10.0.1.10", to: "1.1.1.1", port: 443, allowed: false),
        // network-policies-app.yaml: three tiers
        TraceCase(file: "network-policies-app.yaml", from: "10.0.5.10", to: "10.0.1.10", port: 8080, allowed: true),
        TraceCase(file: "network-policies-app.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, allowed: true),
        TraceCase(file: "network-policies-app.yaml", from: "10.0.1.20", to: "10.0.1.30", port: 5432, allowed: true),
        TraceCase(file: "network-policies-app.yaml", from: "10.0.1.10", to: "10.0.1.30", port: 5432, allowed: false),
        TraceCase(file: "network-policies-app.yaml", from: "10.0.1.30", to: "10.0.1.20", port: 8000, allowed: false),
        TraceCase(file: "network-policies-app.yaml", from: "10.0.6.10", to: "10.0.1.10", port: 8080, allowed: false),
        // namespace-isolation.yaml
        TraceCase(file: "namespace-isolation.yaml", from: "10.0.3.11", to: "10.0.3.10", port: 80, allowed: true),
        TraceCase(file: "namespace-isolation.yaml", from: "10.0.6.10", to: "10.0.3.10", port: 9100, allowed: true),
        TraceCase(file: "namespace-isolation.yaml", from: "10.0.4.10", to: "10.0.3.10", port: 80, allowed: false),
        TraceCase(file: "namespace-isolation.yaml", from: "10.0.3.10", to: "10.0.4.10", port: 80, allowed: false),
        TraceCase(file: "namespace-isolation.yaml", from: "10.0.3.10", to: "10.96.0.10", port: 53, transport: .udp, allowed: true),
        // pod-to-pod articles
        TraceCase(file: "pod-to-pod-backend-deny-all.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 8080, allowed: false),
        TraceCase(file: "pod-to-pod-backend-allow-frontend.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 8080, allowed: true),
        TraceCase(file: "pod-to-pod-backend-allow-frontend.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 9090, allowed: false),
        TraceCase(file: "pod-to-pod-l7-post-json.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 8080, request: http("POST", "/", headers: [("Content-Type", "application/json")]), allowed: true),
        TraceCase(file: "pod-to-pod-l7-post-json.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 8080, request: http("GET", "/"), allowed: false),
        TraceCase(file: "pod-to-pod-l7-get-post.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 8080, request: http("GET", "/"), allowed: true),
        TraceCase(file: "pod-to-pod-l7-get-post.yaml", from: "10.0.2.10", to: "10.0.2.20", port: 8080, request: http("POST", "/", headers: [("Content-Type", "text/html")]), allowed: false),
        // api-allow.yaml, api-only-from-frontend.yaml, api-users-l7.yaml
        TraceCase(file: "api-allow.yaml", from: "10.0.1.10", to: "10.0.1.40", port: 8080, allowed: true),
        TraceCase(file: "api-allow.yaml", from: "10.0.1.20", to: "10.0.1.40", port: 8080, allowed: false),
        TraceCase(file: "api-only-from-frontend.yaml", from: "10.0.7.20", to: "10.0.7.10", port: 8080, allowed: true),
        TraceCase(file: "api-only-from-frontend.yaml", from: "10.0.7.30", to: "10.0.7.10", port: 8080, allowed: false),
        TraceCase(file: "api-users-l7.yaml", from: "10.0.8.20", to: "10.0.8.10", port: 8080, request: http("GET", "/users/42"), allowed: true),
        TraceCase(file: "api-users-l7.yaml", from: "10.0.8.20", to: "10.0.8.10", port: 8080, request: http("GET", "/admin"), allowed: false),
        // api-backend-policy.yaml
        TraceCase(file: "api-backend-policy.yaml", from: "10.0.8.40", to: "10.0.8.30", port: 8080, allowed: true),
        TraceCase(file: "api-backend-policy.yaml", from: "10.0.8.20", to: "10.0.8.30", port: 8080, allowed: false),
        TraceCase(file: "api-backend-policy.yaml", from: "10.0.8.30", to: "10.0.8.50", port: 5432, allowed: true),
        TraceCase(file: "api-backend-policy.yaml", from: "10.0.8.30", to: "10.96.0.10", port: 53, transport: .udp, allowed: true),
        TraceCase(file: "api-backend-policy.yaml", from: "10.0.8.30", to: "10.96.0.10", port: 53, transport: .tcp, allowed: false),
        TraceCase(file: "api-backend-policy.yaml", from: "10.0.8.30", to: "93.184.216.34", port: 443, allowed: false),
        // default-deny-default-namespace.yaml
        TraceCase(file: "default-deny-default-namespace.yaml", from: "10.0.8.20", to: "10.0.8.10", port: 80, allowed: false),
        TraceCase(file: "default-deny-default-namespace.yaml", from: "10.0.1.10", to: "10.0.1.20", port: 8000, allowed: true),
        // kafka-topics.yaml
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.20", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 0, apiVersion: 11, topics: ["orders"])), allowed: true),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.20", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 1, apiVersion: 16, topics: ["orders"])), allowed: false),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.30", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 8, apiVersion: 9, topics: ["orders"])), allowed: true),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.30", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 1, apiVersion: 16, topics: ["orders", "payments"])), allowed: false),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.40", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 75, apiVersion: 0, topics: ["x"])), allowed: true),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.40", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 8, apiVersion: 9, clientID: "admin-tool", topics: ["x"])), allowed: true),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.40", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 8, apiVersion: 8, clientID: "admin-tool", topics: ["x"])), allowed: false),
        TraceCase(file: "kafka-topics.yaml", from: "10.0.9.40", to: "10.0.9.10", port: 9092, request: .kafka(KafkaRequestFacts(apiKey: 20, apiVersion: 6, topics: ["orders"])), allowed: false),
        // clusterwide-egress.json
        TraceCase(file: "clusterwide-egress.json", from: "10.0.10.10", to: "10.96.0.10", port: 53, transport: .udp, request: .dns(DNSQueryFacts(name: "anything.example")), allowed: true),
        TraceCase(file: "clusterwide-egress.json", from: "10.0.10.10", to: "54.187.174.169", port: 443, fqdn: ["api.stripe.com"], allowed: true),
        TraceCase(file: "clusterwide-egress.json", from: "10.0.10.10", to: "54.187.174.169", port: 443, fqdn: ["evil.example.com"], allowed: false),
        TraceCase(file: "clusterwide-egress.json", from: "10.0.10.10", to: "10.0.1.20", port: 8000, allowed: true),
        TraceCase(file: "clusterwide-egress.json", from: "10.0.10.10", to: "169.254.169.254", port: 80, allowed: false),
        // deny-all-ingress.yaml: `ingress: [{}]` in a CiliumNetworkPolicy denies all ingress (issue 9, item 6)
        TraceCase(file: "deny-all-ingress.yaml", from: "10.0.3.10", to: "10.0.4.10", port: 80, allowed: false),
        TraceCase(file: "deny-all-ingress.yaml", from: "192.168.0.10", to: "10.0.4.10", port: 22, allowed: false),
        TraceCase(file: "deny-all-ingress.yaml", from: "10.0.3.10", to: "10.0.4.10", port: 53, transport: .udp, allowed: false),
        TraceCase(file: "deny-all-ingress.yaml", from: "10.0.4.10", to: "10.0.3.10", port: 80, allowed: true),
        TraceCase(file: "deny-all-ingress.yaml", from: "10.0.4.10", to: "93.184.216.34", port: 443, allowed: true),
        // header-matches.yaml
        TraceCase(file: "header-matches.yaml", from: "10.0.8.40", to: "10.0.8.30", port: 8080, request: http("GET", "/v1/things", host: "api.example.com"), allowed: true),
        TraceCase(file: "header-matches.yaml", from: "10.0.8.40", to: "10.0.8.30", port: 8080, request: http("POST", "/v1/things", host: "api.example.com"), allowed: false),
        TraceCase(file: "header-matches.yaml", from: "10.0.8.40", to: "10.0.8.30", port: 8080, request: http("GET", "/v1/things", host: "evil.com"), allowed: false),
    ]

    @Test("trace", arguments: cases)
    func trace(_ testCase: TraceCase) throws {
        let result = PolicyLoader.load(file: examplesDirectory + "/" + testCase.file)
        try #require(result.errors.isEmpty)
        let snapshot = PolicySnapshot(policies: result.policies, endpoints: Self.directory)
        let source = Self.directory.identity(for: IPAddress(testCase.from)!)
        var destination = Self.directory.identity(for: IPAddress(testCase.to)!)
        if !testCase.fqdn.isEmpty { destination = destination.with(dnsNames: testCase.fqdn) }
        let report = snapshot.trace(from: source, to: destination, port: testCase.port, transport: testCase.transport, request: testCase.request)
        #expect(report.isAllowed == testCase.allowed, "\(report.explanation)")
    }

    @Test("header-matches example adds the missing tenant header and logs the wrong source")
    func headerActions() throws {
        let result = PolicyLoader.load(file: examplesDirectory + "/header-matches.yaml")
        let snapshot = PolicySnapshot(policies: result.policies, endpoints: Self.directory)
        let report = snapshot.trace(from: Self.directory.identity(for: IPAddress("10.0.8.40")!), to: Self.directory.identity(for: IPAddress("10.0.8.30")!),
                                    port: 8080, transport: .tcp, request: Self.http("HEAD", "/v1/x", headers: [("X-Request-Source", "curl")], host: "api.example.com:443"))
        let ingressSide = try #require(report.sides.first { $0.direction == .ingress })
        #expect(ingressSide.verdict.headerActions == [.add(name: "x-tenant", value: HeaderValue("acme", isSecret: false))])
        #expect(ingressSide.verdict.logMessages.count == 1)
        #expect(report.matched.map(\.description) == ["default/gateway-headers ingress[0].toPorts[0].rules[0]"])
    }
}
