import Testing
@testable import PolicyEngine

/// Issue 9, item 4 (duplicate headers, policy side), item 12 (no force unwraps in rule
/// matching) and the smaller item on absent facts.
@Suite("HTTP rule matching: repeated headers and absent facts")
struct HTTPRuleMatchingTests {
    static let snapshot = PolicySnapshot(policies: loadPolicies("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: headers, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
      - toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
            - {path: "/exact", headers: ["X-Token: secret"]}
            - {path: "/presence", headers: ["X-Trace"]}
            - path: "/match"
              headerMatches: [{name: X-Key, value: k1}]
            - path: "/replace"
              headerMatches: [{name: X-Tenant, value: acme, mismatch: REPLACE}]
            - path: "/delete"
              headerMatches: [{name: X-Debug, value: "off", mismatch: DELETE}]
            - path: "/add"
              headerMatches: [{name: X-Source, value: gw, mismatch: ADD}]
            - {path: "/joined", headers: ["X-Token: a,b"]}
    """))
    static let flow = ingress(to: pod("default", ["app": "api"]), from: pod("default", ["app": "c"]), port: 80)

    static func evaluate(_ path: String, _ headers: [(name: String, value: String)]) -> Verdict {
        snapshot.evaluate(flow: flow, http: HTTPRequestFacts(method: "GET", path: path, headers: headers))
    }

    @Test("a repeated header is judged by all its values joined with \",\"", arguments: [
        ([("X-Token", "wrong"), ("X-Token", "secret")], false),
        ([("X-Token", "secret"), ("X-Token", "wrong")], false),
        ([("x-token", "secret"), ("X-TOKEN", "secret")], false),
        ([("X-Token", "secret")], true),
        ([("x-token", "secret"), ("Other", "1")], true),
        ([("X-Token", "secret,")], false),
        ([], false),
    ])
    func exactHeader(headers: [(String, String)], allowed: Bool) {
        #expect(Self.evaluate("/exact", headers.map { (name: $0.0, value: $0.1) }).isAllowed == allowed)
    }

    @Test("the joined value is what a rule compares: X-Token: a + X-Token: b reads \"a,b\"")
    func joinedValue() {
        #expect(Self.evaluate("/joined", [("X-Token", "a"), ("x-token", "b")]).isAllowed)
        #expect(!Self.evaluate("/joined", [("X-Token", "b"), ("x-token", "a")]).isAllowed)
        let facts = HTTPRequestFacts(method: "GET", path: "/", headers: [("A", "1"), ("b", "2"), ("a", "3"), ("A", "")])
        #expect(facts.value(of: "a") == "1,3,")
        #expect(facts.value(of: "b") == "2")
        #expect(facts.value(of: "c") == nil)
        #expect(facts.contains(header: "b") && !facts.contains(header: "c"))
    }

    @Test("presence is satisfied by any copy")
    func presence() {
        #expect(Self.evaluate("/presence", [("X-Trace", ""), ("X-Trace", "2")]).isAllowed)
        #expect(Self.evaluate("/presence", [("x-trace", "1")]).isAllowed)
        #expect(!Self.evaluate("/presence", [("X-Tracer", "1")]).isAllowed)
    }

    @Test("headerMatches without a mismatch action: one wrong copy fails the rule")
    func headerMatchesDeny() {
        #expect(Self.evaluate("/match", [("X-Key", "k1")]).isAllowed)
        #expect(!Self.evaluate("/match", [("X-Key", "k2"), ("X-Key", "k1")]).isAllowed)
        #expect(!Self.evaluate("/match", [("X-Key", "k1"), ("X-Key", "k1")]).isAllowed)
    }

    @Test("REPLACE and DELETE act on every copy; ADD appends one; a satisfied match acts on none")
    func headerMatchesActions() {
        let acme = HeaderValue("acme", isSecret: false)
        let replaced = Self.evaluate("/replace", [("X-Tenant", "acme"), ("X-Tenant", "evil")])
        #expect(replaced.isAllowed)
        #expect(replaced.headerActions == [.replace(name: "x-tenant", value: acme)])
        #expect(Self.evaluate("/replace", [("X-Tenant", "acme")]).headerActions.isEmpty)
        let deleted = Self.evaluate("/delete", [("X-Debug", "off"), ("X-Debug", "on")])
        #expect(deleted.isAllowed && deleted.headerActions == [.remove(name: "x-debug")])
        let added = Self.evaluate("/add", [("X-Source", "curl")])
        #expect(added.headerActions == [.add(name: "x-source", value: HeaderValue("gw", isSecret: false))])
    }

    @Test("ADD and REPLACE carry the value they set: the mismatch action holds it")
    func mismatchCarriesValue() throws {
        let rules = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: m, namespace: default}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules:
                http:
                - headerMatches:
                  - {name: A, value: x, mismatch: ADD}
                  - {name: B, value: y, mismatch: REPLACE}
                  - {name: C, mismatch: DELETE}
                  - {name: D, mismatch: LOG}
                  - {name: E, value: z}
        """).first?.rules.first?.ingress.first?.portRules.first?.l7
        guard case .http(let http)? = rules, let matches = http.first?.headerMatches else {
            Issue.record("no HTTP rule loaded")
            return
        }
        #expect(matches.map(\.mismatch) == [.add(HeaderValue("x", isSecret: false)), .replace(HeaderValue("y", isSecret: false)), .delete, .log, .deny])
        #expect(matches.map(\.mismatch.keyword) == ["ADD", "REPLACE", "DELETE", "LOG", "DENY"])
    }

    // MARK: Absent facts

    static let methods = PolicySnapshot(policies: loadPolicies("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: facts, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
      - toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
            - {method: GET, path: "/get"}
            - {path: "/any-method"}
            - {method: POST}
            - {host: ".*", path: "/host"}
            - {headers: ["X-Only"]}
      - fromEndpoints: [{matchLabels: {app: c}}]
        toPorts:
        - ports: [{port: "8000", endPort: 8010, protocol: TCP}]
          rules:
            http:
            - {method: GET, path: "/get"}
            - {path: "/any-method"}
    """))

    /// Port 80 goes through the slot's HTTP index; 8005 (a range) through the scanned clauses.
    @Test("a fact not given fails the rules that test it, and only those", arguments: [80, 8005] as [UInt16])
    func absentFacts(port: UInt16) {
        let flow = ingress(to: pod("default", ["app": "api"]), from: pod("default", ["app": "c"]), port: port)
        func allowed(_ facts: HTTPRequestFacts) -> Bool { Self.methods.evaluate(flow: flow, http: facts).isAllowed }
        #expect(!allowed(HTTPRequestFacts(method: nil, path: "/get")))
        #expect(allowed(HTTPRequestFacts(method: "GET", path: "/get")))
        #expect(allowed(HTTPRequestFacts(method: nil, path: "/any-method")))
        #expect(!allowed(HTTPRequestFacts(method: nil, path: nil)))
        if port == 80 {
            #expect(allowed(HTTPRequestFacts(method: "POST", path: nil)))
            #expect(!allowed(HTTPRequestFacts(method: "GET", path: "/host")))  // no Host: a host rule does not match
            #expect(allowed(HTTPRequestFacts(method: "GET", path: "/host", host: "")))
            #expect(allowed(HTTPRequestFacts(method: nil, path: nil, headers: [("X-Only", "1")])))
        }
        let verdict = Self.methods.evaluate(flow: flow, http: HTTPRequestFacts(method: nil, path: "/nothing"))
        #expect(verdict.reason == .noL7RuleMatches("(no method) /nothing"))
    }

    @Test("a Kafka request without a version fails rules that name one")
    func absentKafkaVersion() {
        let snapshot = PolicySnapshot(policies: loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: k, namespace: kafka}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts:
            - ports: [{port: "9092", protocol: TCP}]
              rules:
                kafka:
                - {apiKey: fetch, apiVersion: "0", topic: orders}
                - {apiKey: produce, topic: orders}
        """))
        let flow = ingress(to: pod("kafka", ["app": "k"]), from: pod("kafka", ["app": "c"]), port: 9092)
        #expect(!snapshot.evaluate(flow: flow, kafka: KafkaRequestFacts(apiKey: 1, apiVersion: nil, topics: ["orders"])).isAllowed)
        #expect(snapshot.evaluate(flow: flow, kafka: KafkaRequestFacts(apiKey: 1, apiVersion: 0, topics: ["orders"])).isAllowed)
        #expect(snapshot.evaluate(flow: flow, kafka: KafkaRequestFacts(apiKey: 0, apiVersion: nil, topics: ["orders"])).isAllowed)
    }
}
