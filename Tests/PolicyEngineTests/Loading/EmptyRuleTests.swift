import Testing
@testable import PolicyEngine

/// Issue 9, item 6: an empty rule is not an allow-all. In a CiliumNetworkPolicy or
/// CiliumClusterwideNetworkPolicy, `ingress: [{}]` / `egress: [{}]` is the reference's
/// documented deny-all for that direction and `ingressDeny: [{}]` denies nothing; in a
/// Kubernetes NetworkPolicy `ingress: [{}]` allows all and `ingress: []` (with the
/// policy type) denies all.
@Suite("Empty rules: deny-all in Cilium kinds, allow-all in NetworkPolicy")
struct EmptyRuleTests {
    static let web = pod("shop", ["app": "web"])
    static let frontend = pod("shop", ["app": "frontend"])
    static let world = Identity.reserved(.world, address: IPAddress("203.0.113.7"))

    static func snapshot(_ yaml: String) -> PolicySnapshot {
        PolicySnapshot(policies: loadPolicies(yaml))
    }

    /// Peers and ports an allow-all would let through.
    static let probes: [(remote: Identity, port: UInt16, transport: TransportProtocol)] = [
        (frontend, 80, .tcp), (frontend, 53, .udp), (pod("other", ["app": "x"]), 8080, .tcp),
        (.reserved(.host), 22, .tcp), (world, 443, .tcp), (world, 1, .sctp), (frontend, 8, .icmp),
    ]

    @Test("ingress: [{}] in a CiliumNetworkPolicy denies every peer on every port")
    func ciliumIngressDenyAll() {
        let snapshot = Self.snapshot("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-all, namespace: shop}
        spec:
          endpointSelector: {}
          ingress:
          - {}
        """)
        for probe in Self.probes {
            let verdict = snapshot.evaluate(flow: ingress(to: Self.web, from: probe.remote, port: probe.port, probe.transport))
            #expect(!verdict.isAllowed, "\(probe.remote) \(probe.port)/\(probe.transport)")
            #expect(verdict.reason == .noRuleAllows)
            #expect(verdict.matched.isEmpty)
        }
        // Requests are denied too, and egress is untouched.
        #expect(!snapshot.evaluate(flow: ingress(to: Self.web, from: Self.frontend, port: 80), http: HTTPRequestFacts(method: "GET", path: "/")).isAllowed)
        #expect(snapshot.evaluate(flow: egress(from: Self.web, to: Self.frontend, port: 80)).reason == .notEnforced)
        let trace = snapshot.trace(from: Self.frontend, to: Self.web, port: 80, transport: .tcp)
        #expect(!trace.isAllowed)
        #expect(trace.explanation.contains("selected by: shop/deny-all"))
        #expect(trace.explanation.contains("default deny: on"))
    }

    @Test("egress: [{}] in a CiliumClusterwideNetworkPolicy denies every destination")
    func clusterwideEgressDenyAll() {
        let snapshot = Self.snapshot("""
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: no-egress}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          egress:
          - {}
        """)
        for probe in Self.probes {
            let verdict = snapshot.evaluate(flow: egress(from: Self.web, to: probe.remote, port: probe.port, probe.transport))
            #expect(!verdict.isAllowed && verdict.reason == .noRuleAllows, "\(probe.remote) \(probe.port)/\(probe.transport)")
        }
        #expect(snapshot.evaluate(flow: egress(from: pod("shop", ["app": "db"]), to: Self.world, port: 443)).isAllowed)
    }

    @Test("the empty rule adds nothing: other rules and policies still allow what they name")
    func emptyRuleBesideAllows() {
        let snapshot = Self.snapshot("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-all, namespace: shop}
        spec:
          endpointSelector: {}
          ingress:
          - {}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-frontend, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: frontend}}]
            toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """)
        let allowed = snapshot.evaluate(flow: ingress(to: Self.web, from: Self.frontend, port: 80))
        #expect(allowed.isAllowed)
        #expect(allowed.matched.map(\.policy) == ["shop/allow-frontend"])
        #expect(!snapshot.evaluate(flow: ingress(to: Self.web, from: Self.frontend, port: 81)).isAllowed)
        #expect(!snapshot.evaluate(flow: ingress(to: Self.web, from: pod("shop", ["app": "x"]), port: 80)).isAllowed)
    }

    @Test("ingressDeny: [{}] denies nothing; its section only turns default deny on")
    func emptyDenyRule() {
        let snapshot = Self.snapshot("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: empty-deny, namespace: shop}
        spec:
          endpointSelector: {}
          ingressDeny:
          - {}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-frontend, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: frontend}}]
        """)
        let verdict = snapshot.evaluate(flow: ingress(to: Self.web, from: Self.frontend, port: 80))
        #expect(verdict.isAllowed)
        #expect(verdict.reason == .allowedAtL4)
        // Others are denied by default deny, not by the empty deny rule.
        let other = snapshot.evaluate(flow: ingress(to: Self.web, from: Self.world, port: 80))
        #expect(!other.isAllowed && other.reason == .noRuleAllows)
        // An endpoint only the empty deny rule selects: default deny, no deny rule matched.
        let alone = snapshot.evaluate(flow: ingress(to: pod("shop", ["app": "db"]), from: Self.frontend, port: 5432))
        #expect(!alone.isAllowed && alone.reason == .noRuleAllows && alone.matched.isEmpty)
    }

    @Test("explicitly empty peer lists select nobody, even with ports", arguments: [
        "fromEndpoints: []", "fromCIDR: []", "fromCIDRSet: []", "fromEntities: []", "fromNodes: []",
    ])
    func explicitlyEmptyPeers(member: String) {
        let snapshot = Self.snapshot("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: empty-peers, namespace: shop}
        spec:
          endpointSelector: {}
          ingress:
          - \(member)
            toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """)
        for probe in Self.probes {
            #expect(!snapshot.evaluate(flow: ingress(to: Self.web, from: probe.remote, port: 80)).isAllowed, "\(probe.remote)")
        }
    }

    @Test("a port rule without ports covers no port; toPorts alone still means every peer")
    func portRulesWithoutPorts() {
        let snapshot = Self.snapshot("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: ports, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - toPorts: [{}]
          - toPorts: [{ports: []}]
          - toPorts: [{ports: [{port: "443", protocol: TCP}]}]
        """)
        #expect(!snapshot.evaluate(flow: ingress(to: Self.web, from: Self.frontend, port: 80)).isAllowed)
        #expect(!snapshot.evaluate(flow: ingress(to: Self.web, from: Self.world, port: 8443)).isAllowed)
        #expect(snapshot.evaluate(flow: ingress(to: Self.web, from: Self.world, port: 443)).isAllowed)
        #expect(snapshot.evaluate(flow: ingress(to: Self.web, from: Self.frontend, port: 443)).isAllowed)
    }

    @Test("the loader records an empty rule as selecting no peer, and a ports-only rule as every peer")
    func model() throws {
        let policies = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: model, namespace: shop}
        spec:
          endpointSelector: {}
          ingress:
          - {}
          - toPorts: [{ports: [{port: "80"}]}]
          - fromRequires: [{matchLabels: {env: prod}}]
          egress:
          - {}
          egressDeny:
          - {}
        """)
        let rule = try #require(policies.first?.rules.first)
        #expect(rule.ingress.map { $0.peers?.count } == [0, nil, 0])
        #expect(rule.egress.first?.peers?.isEmpty == true)
        #expect(rule.egressDeny.first?.peers?.isEmpty == true)
        #expect(rule.defaultDenyIngress && rule.defaultDenyEgress)
    }

    @Test("NetworkPolicy keeps Kubernetes semantics: ingress: [{}] allows all, ingress: [] denies all")
    func networkPolicy() {
        let allowAll = Self.snapshot("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-all, namespace: shop}
        spec:
          podSelector: {}
          ingress:
          - {}
          egress:
          - to: []
          policyTypes: [Ingress, Egress]
        """)
        for probe in Self.probes {
            #expect(allowAll.evaluate(flow: ingress(to: Self.web, from: probe.remote, port: probe.port, probe.transport)).isAllowed, "\(probe.remote)")
            #expect(allowAll.evaluate(flow: egress(from: Self.web, to: probe.remote, port: probe.port, probe.transport)).isAllowed, "\(probe.remote)")
        }
        let denyAll = Self.snapshot("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-all, namespace: shop}
        spec:
          podSelector: {}
          ingress: []
          policyTypes: [Ingress]
        """)
        for probe in Self.probes {
            let verdict = denyAll.evaluate(flow: ingress(to: Self.web, from: probe.remote, port: probe.port, probe.transport))
            #expect(!verdict.isAllowed && verdict.reason == .noRuleAllows, "\(probe.remote)")
        }
        #expect(denyAll.evaluate(flow: egress(from: Self.web, to: Self.world, port: 443)).reason == .notEnforced)
    }
}
