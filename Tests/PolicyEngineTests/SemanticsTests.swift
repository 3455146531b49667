#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import PolicyEngine

@Suite("Selectors, identities and L3/L4")
struct L3L4Tests {
    static let policy = loadPolicies("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web, namespace: shop}
    spec:
      endpointSelector:
        matchLabels: {app: web}
        matchExpressions: [{key: tier, operator: NotIn, values: [legacy]}]
      ingress:
      - fromEndpoints: [{matchLabels: {app: frontend}}]
        toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: metrics, protocol: TCP}]}]
      - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": monitoring}, matchExpressions: [{key: role, operator: Exists}]}]
        toPorts: [{ports: [{port: "9000", endPort: 9100}]}]
      - fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]
        toPorts: [{ports: [{port: "443", protocol: TCP}]}]
      - fromEntities: [host]
      ingressDeny:
      - fromEndpoints: [{matchLabels: {app: frontend, compromised: "true"}}]
      egress:
      - toEndpoints: [{matchLabels: {"k8s:app": db}}]
        toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
      - toEntities: [world]
        toPorts: [{ports: [{port: "53", protocol: UDP}]}]
      - toEndpoints: [{matchLabels: {app: cache}}]
        toPorts: [{ports: [{port: redis, protocol: TCP}]}]
      enableDefaultDeny: {egress: false}
    """)

    static let web = pod("shop", ["app": "web"], ports: [NamedPort(name: "metrics", port: 9090)])
    static let snapshot = PolicySnapshot(policies: policy)

    struct FlowCase: CustomStringConvertible, Sendable {
        let name: String
        let flow: FlowContext
        let allowed: Bool
        let reason: VerdictReason
        var description: String { name }
    }

    static let flows: [FlowCase] = [
        FlowCase(name: "frontend to 8080", flow: ingress(to: web, from: pod("shop", ["app": "frontend"]), port: 8080), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "frontend to named port metrics", flow: ingress(to: web, from: pod("shop", ["app": "frontend"]), port: 9090), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "frontend to 8081: default deny", flow: ingress(to: web, from: pod("shop", ["app": "frontend"]), port: 8081), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "frontend over UDP", flow: ingress(to: web, from: pod("shop", ["app": "frontend"]), port: 8080, .udp), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "frontend of another namespace (scoping)", flow: ingress(to: web, from: pod("other", ["app": "frontend"]), port: 8080), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "compromised frontend: deny wins", flow: ingress(to: web, from: pod("shop", ["app": "frontend", "compromised": "true"]), port: 8080), allowed: false, reason: .deniedByRule),
        FlowCase(name: "monitoring with role, in range", flow: ingress(to: web, from: pod("monitoring", ["role": "scraper"]), port: 9050, .sctp), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "monitoring without role", flow: ingress(to: web, from: pod("monitoring", ["app": "x"]), port: 9050), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "monitoring out of range", flow: ingress(to: web, from: pod("monitoring", ["role": "scraper"]), port: 9101), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "world in CIDR", flow: ingress(to: web, from: .reserved(.world, address: IPAddress("203.0.113.5")), port: 443), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "world in except", flow: ingress(to: web, from: .reserved(.world, address: IPAddress("203.0.113.200")), port: 443), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "pod inside CIDR is not world", flow: ingress(to: web, from: pod("shop", ["app": "x"], ip: "203.0.113.5"), port: 443), allowed: false, reason: .noRuleAllows),
        FlowCase(name: "host entity, any port", flow: ingress(to: web, from: .reserved(.host), port: 1), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "egress to db", flow: egress(from: web, to: pod("shop", ["app": "db"]), port: 5432), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "egress not default-deny (enableDefaultDeny false)", flow: egress(from: web, to: pod("shop", ["app": "other"]), port: 80), allowed: true, reason: .notEnforced),
        FlowCase(name: "egress named port of the peer", flow: egress(from: web, to: pod("shop", ["app": "cache"], ports: [NamedPort(name: "redis", port: 6379)]), port: 6379), allowed: true, reason: .allowedAtL4),
        FlowCase(name: "legacy tier is not selected", flow: ingress(to: pod("shop", ["app": "web", "tier": "legacy"]), from: pod("shop", ["app": "x"]), port: 1), allowed: true, reason: .notEnforced),
    ]

    @Test("flows", arguments: flows)
    func flow(_ testCase: FlowCase) {
        let verdict = Self.snapshot.evaluate(flow: testCase.flow)
        #expect(verdict.isAllowed == testCase.allowed)
        #expect(verdict.reason == testCase.reason)
        if testCase.allowed && testCase.reason == .allowedAtL4 { #expect(!verdict.matched.isEmpty) }
    }

    @Test("selector operators and source prefixes", arguments: [
        ("app", LabelSelector.Requirement.Operator.in, ["a"], true),
        ("k8s:app", .in, ["a", "b"], true),
        ("reserved:app", .in, ["a"], false),
        ("app", .notIn, ["a"], false),
        ("missing", .notIn, ["a"], true),
        ("app", .exists, [], true),
        ("any:app", .exists, [], true),
        ("missing", .doesNotExist, [], true),
        ("app", .doesNotExist, [], false),
    ])
    func selector(key: String, op: LabelSelector.Requirement.Operator, values: [String], expected: Bool) {
        let selector = LabelSelector(requirements: [LabelSelector.Requirement(selectorKey: key, operator: op, values: values)])
        #expect(selector.matches(pod("ns", ["app": "a"]).labels) == expected)
    }

    @Test("entities", arguments: [
        (Entity.world, Identity.reserved(.world, address: IPAddress("8.8.8.8")), true),
        (.worldIPv6, .reserved(.world, address: IPAddress("8.8.8.8")), false),
        (.worldIPv6, .reserved(.world, address: IPAddress("2001:db8::1")), true),
        (.cluster, pod("a", ["x": "y"]), true),
        (.cluster, .reserved(.world, address: IPAddress("8.8.8.8")), false),
        (.cluster, .reserved(.remoteNode), true),
        (.host, .reserved(.host), true),
        (.remoteNode, .reserved(.host), false),
        (.kubeAPIServer, .reserved(.kubeAPIServer), true),
        (.all, .reserved(.world), true),
        (.none, pod("a", [:]), false),
    ])
    func entity(entity: Entity, identity: Identity, expected: Bool) {
        #expect(entity.contains(identity) == expected)
    }

    @Test("NetworkPolicy namespaceSelector, ipBlock and policyTypes")
    func networkPolicy() {
        let snapshot = PolicySnapshot(policies: loadPolicies("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: a}
        spec:
          podSelector: {}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {team: sre}}
              podSelector: {matchLabels: {app: prom}}
            - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
            ports: [{port: 9090}, {protocol: UDP, port: 5000, endPort: 5010}]
          egress:
          - to: [{podSelector: {}}]
        """))
        let subject = pod("a", ["app": "x"])
        let prom = Identity.pod(namespace: "mon", labels: ["app": "prom"], namespaceLabels: ["team": "sre"])
        #expect(snapshot.evaluate(flow: ingress(to: subject, from: prom, port: 9090)).isAllowed)
        #expect(snapshot.evaluate(flow: ingress(to: subject, from: prom, port: 5005, .udp)).isAllowed)
        #expect(!snapshot.evaluate(flow: ingress(to: subject, from: prom, port: 5005, .tcp)).isAllowed)
        #expect(!snapshot.evaluate(flow: ingress(to: subject, from: Identity.pod(namespace: "mon", labels: ["app": "prom"]), port: 9090)).isAllowed)
        #expect(snapshot.evaluate(flow: ingress(to: subject, from: .reserved(.world, address: IPAddress("10.2.0.1")), port: 9090)).isAllowed)
        #expect(!snapshot.evaluate(flow: ingress(to: subject, from: .reserved(.world, address: IPAddress("10.1.0.1")), port: 9090)).isAllowed)
        // Egress is in policyTypes implicitly (egress present): same namespace only.
        #expect(snapshot.evaluate(flow: egress(from: subject, to: pod("a", ["q": "r"]), port: 1)).isAllowed)
        #expect(!snapshot.evaluate(flow: egress(from: subject, to: pod("b", ["q": "r"]), port: 1)).isAllowed)
    }
}

@Suite("HTTP rules")
struct HTTPRuleTests {
    static let snapshot = PolicySnapshot(policies: loadPolicies("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: http, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
      - toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
            - {method: GET, path: "/public"}
            - {method: "POST|PUT", path: "/items/[0-9]+", headers: ["Content-Type: application/json", "X-Trace"]}
            - {host: "api\\\\.example\\\\.com(:[0-9]+)?", path: "/host-only"}
            - path: "/tenant/.*"
              headerMatches:
              - {name: X-Tenant, value: acme, mismatch: REPLACE}
              - {name: X-Debug, mismatch: DELETE}
              - {name: X-Source, value: gw, mismatch: LOG}
            - path: "/strict"
              headerMatches: [{name: X-Key, value: k1}]
    """))
    static let flow = ingress(to: pod("default", ["app": "api"]), from: pod("default", ["app": "c"]), port: 80)

    struct RequestCase: CustomStringConvertible, Sendable {
        let name: String
        let request: HTTPRequestFacts
        let allowed: Bool
        var description: String { name }
    }

    static let requests: [RequestCase] = [
        RequestCase(name: "GET /public", request: HTTPRequestFacts(method: "GET", path: "/public"), allowed: true),
        RequestCase(name: "query string is part of the path", request: HTTPRequestFacts(method: "GET", path: "/public?x=1"), allowed: false),
        RequestCase(name: "method is anchored", request: HTTPRequestFacts(method: "GETX", path: "/public"), allowed: false),
        RequestCase(name: "POST with headers", request: HTTPRequestFacts(method: "POST", path: "/items/12", headers: [("content-type", "application/json"), ("X-Trace", "1")]), allowed: true),
        RequestCase(name: "POST missing presence header", request: HTTPRequestFacts(method: "POST", path: "/items/12", headers: [("Content-Type", "application/json")]), allowed: false),
        RequestCase(name: "POST wrong header value", request: HTTPRequestFacts(method: "PUT", path: "/items/12", headers: [("Content-Type", "text/plain"), ("X-Trace", "1")]), allowed: false),
        RequestCase(name: "host with port", request: HTTPRequestFacts(method: "GET", path: "/host-only", host: "api.example.com:8443"), allowed: true),
        RequestCase(name: "wrong host", request: HTTPRequestFacts(method: "GET", path: "/host-only", host: "evil.com"), allowed: false),
        RequestCase(name: "headerMatches without action denies", request: HTTPRequestFacts(method: "GET", path: "/strict", headers: [("X-Key", "wrong")]), allowed: false),
        RequestCase(name: "headerMatches satisfied", request: HTTPRequestFacts(method: "GET", path: "/strict", headers: [("x-key", "k1")]), allowed: true),
    ]

    @Test("requests", arguments: requests)
    func request(_ testCase: RequestCase) {
        #expect(Self.snapshot.evaluate(flow: Self.flow, http: testCase.request).isAllowed == testCase.allowed)
    }

    @Test("headerMatches mismatch actions: REPLACE, DELETE, LOG")
    func actions() throws {
        let verdict = Self.snapshot.evaluate(flow: Self.flow, http: HTTPRequestFacts(method: "GET", path: "/tenant/1", headers: [("X-Tenant", "evil")]))
        #expect(verdict.isAllowed)
        #expect(verdict.headerActions == [.replace(name: "x-tenant", value: HeaderValue("acme", isSecret: false)), .remove(name: "x-debug")])
        #expect(verdict.logMessages.count == 1 && verdict.logMessages[0].contains("x-source"))
        #expect(verdict.matched.map(\.l7Rule) == [3])
        let clean = Self.snapshot.evaluate(flow: Self.flow, http: HTTPRequestFacts(method: "GET", path: "/tenant/1", headers: [("X-Tenant", "acme"), ("X-Debug", "1"), ("X-Source", "gw")]))
        #expect(clean.headerActions.isEmpty && clean.logMessages.isEmpty)
    }

    @Test("secrets are read from files and never printed")
    func secrets() throws {
        let directory = "/tmp/sluice-policy-secrets-\(getpid())"
        try writeFile("\(directory)/default/api-key", "s3cr3t-value\n")
        let policies = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: secret, namespace: default}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules:
                http:
                - headerMatches: [{name: Authorization, secret: {namespace: default, name: api-key}, mismatch: ADD}]
        """, options: PolicyLoadOptions(secretsDirectory: directory))
        let snapshot = PolicySnapshot(policies: policies)
        let flow = ingress(to: pod("default", ["a": "b"]), from: pod("default", ["c": "d"]), port: 80)
        let verdict = snapshot.evaluate(flow: flow, http: HTTPRequestFacts(method: "GET", path: "/"))
        #expect(verdict.isAllowed)
        guard case .add(let name, let value)? = verdict.headerActions.first else { Issue.record("no ADD action"); return }
        #expect(name == "authorization" && value.value == "s3cr3t-value")
        #expect("\(verdict.headerActions)".contains("[redacted]"))
        #expect(!"\(verdict.headerActions)".contains("s3cr3t"))
        #expect(!String(reflecting: value).contains("s3cr3t"))
        let missing = PolicyLoader.load(text: policiesText(secret: "nope"), file: "s.yaml", options: PolicyLoadOptions(secretsDirectory: directory))
        #expect(missing.errors.first?.fieldPath == "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret")
    }

    func policiesText(secret: String) -> String {
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: secret, namespace: default}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules:
                http:
                - headerMatches: [{name: Authorization, secret: {name: \(secret)}}]
        """
    }

    @Test("literal prefixes used by the index are conservative", arguments: [
        ("/api/v1/products.*", "/api/v1/products"),
        ("^/health", "/health"),
        ("/items?", "/item"),
        ("/a|/b", ""),
        ("(?i)/api", ""),
        ("/api/v[0-9]+/x", "/api/v"),
        ("/x\\.y", "/x"),
    ])
    func literalPrefix(pattern: String, prefix: String) {
        #expect(PCRE2Pattern.literalPrefix(of: pattern) == prefix)
    }
}

@Suite("Kafka rules")
struct KafkaRuleTests {
    static let snapshot = PolicySnapshot(policies: loadPolicies("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: k, namespace: kafka}
    spec:
      endpointSelector: {matchLabels: {app: kafka}}
      ingress:
      - toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
            - {role: produce, topic: orders}
            - {apiKey: produce, topic: audit, clientID: auditor}
            - {apiKey: fetch, apiVersion: "12", topic: orders}
            - {apiKey: describetopicpartitions}
    """))
    static let flow = ingress(to: pod("kafka", ["app": "kafka"]), from: pod("kafka", ["app": "c"]), port: 9092)

    @Test("requests", arguments: [
        (KafkaRequestFacts(apiKey: 0, apiVersion: 9, topics: ["orders"]), true),
        (KafkaRequestFacts(apiKey: 0, apiVersion: 9, topics: ["payments"]), false),
        (KafkaRequestFacts(apiKey: 0, apiVersion: 9, clientID: "auditor", topics: ["orders", "audit"]), true),
        (KafkaRequestFacts(apiKey: 0, apiVersion: 9, clientID: "other", topics: ["orders", "audit"]), false),
        (KafkaRequestFacts(apiKey: 3, apiVersion: 12), true),
        (KafkaRequestFacts(apiKey: 18, apiVersion: 3), true),
        (KafkaRequestFacts(apiKey: 1, apiVersion: 12, topics: ["orders"]), true),
        (KafkaRequestFacts(apiKey: 1, apiVersion: 13, topics: ["orders"]), false),
        (KafkaRequestFacts(apiKey: 75, apiVersion: 0, topics: ["anything"]), true),
        (KafkaRequestFacts(apiKey: 8, apiVersion: 9, topics: ["orders"]), false),
    ])
    func request(request: KafkaRequestFacts, allowed: Bool) {
        #expect(Self.snapshot.evaluate(flow: Self.flow, kafka: request).isAllowed == allowed)
    }

    @Test("every API key Kafka defines has a name that resolves back to it")
    func apiKeys() {
        #expect(KafkaAPIKeys.names.count == 93)
        for key in Int16(0)...92 {
            let name = KafkaAPIKeys.names[key]
            #expect(name != nil, "key \(key)")
            #expect(KafkaAPIKeys.key(named: name!) == key)
            #expect(KafkaAPIKeys.key(named: name!.uppercased()) == key)
        }
        #expect(KafkaAPIKeys.key(named: "offsets") == 2)
        #expect(KafkaAPIKeys.key(named: "offset_commit") == 8)
        #expect(KafkaAPIKeys.key(named: "nosuchapi") == nil)
        #expect(KafkaAPIKeys.consumeRole == [1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18])
    }

    @Test("HTTP request on a Kafka port is denied as a protocol mismatch")
    func mismatch() {
        let verdict = Self.snapshot.evaluate(flow: Self.flow, http: HTTPRequestFacts(method: "GET", path: "/"))
        #expect(!verdict.isAllowed && verdict.reason == .l7ProtocolMismatch(expected: "KAFKA"))
    }
}

func writeFile(_ path: String, _ text: String) throws {
    var components = path.split(separator: "/").dropLast()
    var current = ""
    while !components.isEmpty {
        current += "/" + components.removeFirst()
        mkdir(current, 0o700)
    }
    guard let file = fopen(path, "w") else { throw PolicyError(file: path, line: 0, column: 0, fieldPath: "", message: "cannot write") }
    fputs(text, file)
    fclose(file)
}
