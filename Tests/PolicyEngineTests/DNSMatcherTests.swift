import Testing
@testable import PolicyEngine

@Suite("DNS matchName / matchPattern")
struct DNSMatcherTests {
    @Test("reference wildcard semantics", arguments: [
        ("*.cilium.io", "www.cilium.io", true),
        ("*.cilium.io", "cilium.io", false),
        ("*.cilium.io", "a.b.cilium.io", false),
        ("*cilium.io", "cilium.io", true),
        ("*cilium.io", "subcilium.io", true),
        ("*cilium.io", "www.cilium.io", false),
        ("sub*.cilium.io", "sub.cilium.io", true),
        ("sub*.cilium.io", "subdomain.cilium.io", true),
        ("sub*.cilium.io", "asub.cilium.io", false),
        ("**.cilium.io", "a.cilium.io", true),
        ("**.cilium.io", "a.b.cilium.io", true),
        ("**.cilium.io", "cilium.io", false),
        ("*", "anything.example.com", true),
        ("**", "x", true),
        ("api.stripe.com", "api.stripe.com", true),
        ("api.stripe.com", "API.Stripe.COM.", true),
        ("api.stripe.com", "xapi.stripe.com", false),
        ("*.svc.cluster.local", "db.svc.cluster.local", true),
        ("*.svc.cluster.local", "db.prod.svc.cluster.local", false),
        ("*.internal.company.com.", "Vault.Internal.Company.Com", true),
        ("a*b*c.io", "axxbyyc.io", true),
        ("a*b*c.io", "axxbyy.io", false),
        ("*.example.com", "we!rd.example.com", false),
    ])
    func pattern(pattern: String, name: String, expected: Bool) {
        #expect(DNSMatcher(pattern: pattern).matches(name) == expected)
    }

    @Test("matchName is exact, case-insensitive, trailing dot implied", arguments: [
        ("api.stripe.com", "api.stripe.com.", true),
        ("API.stripe.com.", "api.STRIPE.com", true),
        ("api.stripe.com", "evil.example.com", false),
        ("api.stripe.com", "sub.api.stripe.com", false),
    ])
    func name(name: String, query: String, expected: Bool) {
        #expect(DNSMatcher(name: name).matches(query) == expected)
    }

    @Test("pattern and name charsets are validated", arguments: [
        ("matchPattern", "*.ok-name_1.com", true),
        ("matchPattern", "bad/char.com", false),
        ("matchPattern", "..com", false),
        ("matchName", "a*.com", false),
        ("matchName", "ok.com.", true),
    ])
    func charset(field: String, value: String, valid: Bool) {
        let yaml = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: dns}
        spec:
          endpointSelector: {}
          egress:
          - toFQDNs:
            - \(field): "\(value)"
        """
        let result = PolicyLoader.load(text: yaml, file: "dns.yaml")
        #expect(result.errors.isEmpty == valid, "\(result.errors)")
        if !valid { #expect(result.errors.first?.fieldPath == "spec.egress[0].toFQDNs[0].\(field)") }
    }
}
