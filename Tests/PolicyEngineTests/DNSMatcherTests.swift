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

    /// Issue 9, item 7: the reference's `*` alone is `(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)`:
    /// one or more non-empty labels of `[-a-zA-Z0-9_]`, or the root.
    @Test("patterns of only stars match valid names and the root, nothing else", arguments: ["*", "**", "**.", "*.", "***"])
    func onlyStars(pattern: String) {
        let matcher = DNSMatcher(pattern: pattern)
        for name in ["cilium.io", "cilium.io.", "WWW.Cilium.IO.", "a", "_srv._tcp.x-y.example", ".", String(repeating: "a.", count: 120)] {
            #expect(matcher.matches(name), "\(pattern) should match \(name)")
        }
        for name in ["cilium..io.", ".io.", ".io", "..", "a/b.com.", "a b.com", "a\u{0}b.com", "caf\u{E9}.com", "\u{212A}ube.io",
                     "a.b..", "", "*.com", "a\tb", String(repeating: "a", count: 300)] {
            #expect(!matcher.matches(name), "\(pattern) should not match \(name.debugDescription)")
        }
    }

    @Test("no pattern and no name matches a name with an empty label or a byte outside [-a-zA-Z0-9_]", arguments: [
        ("*.cilium.io", ".cilium.io"), ("*.cilium.io", "a/b.cilium.io"), ("*cilium.io", "\u{212A}cilium.io"),
        ("**.cilium.io", "a..cilium.io"), ("**.cilium.io", ".cilium.io"), ("**.cilium.io", "a/b.cilium.io"),
        ("*.*", ".io"), ("*.*", "a."), ("sub*.io", "sub .io"), ("*", "cilium.io.."),
    ])
    func invalidNames(pattern: String, name: String) {
        #expect(!DNSMatcher(pattern: pattern).matches(name))
    }

    @Test("matchName refuses invalid and Unicode-folded names")
    func invalidNamesForMatchName() {
        #expect(!DNSMatcher(name: "kube.io").matches("\u{212A}ube.io"))  // KELVIN SIGN lower-cases to "k"
        #expect(!DNSMatcher(name: "cilium.io").matches("cilium.io.."))
        #expect(!DNSMatcher(name: "cilium.io").matches(".cilium.io"))
        #expect(DNSMatcher(name: "cilium.io").matches("CILIUM.io."))
    }

    @Test("two or more leading stars and a dot stand for one or more whole labels", arguments: [
        ("***.cilium.io", "a.b.cilium.io", true), ("***.cilium.io", "cilium.io", false),
        ("**.*.io", "a.b.c.io", true), ("**.*.io", "b.io", false), ("a**b.io", "axxb.io", true),
    ])
    func subdomainWildcard(pattern: String, name: String, expected: Bool) {
        #expect(DNSMatcher(pattern: pattern).matches(name) == expected)
    }

    /// Issue 9, smaller item: validating `.` said it was outside `[-a-zA-Z0-9_.*]`.
    @Test("invalid names and patterns say what is wrong, at the value", arguments: [
        ("matchPattern", ".", "\".\" alone (the DNS root) is not a pattern; use \"*\" to match every name"),
        ("matchName", ".", "\".\" alone (the DNS root) is not a name a rule can match"),
        ("matchPattern", "cilium..io", "the pattern has an empty label (\"..\" at characters 7-8)"),
        ("matchPattern", ".cilium.io", "the pattern starts with \".\" (an empty first label)"),
        ("matchName", "a/b.com", "\"/\" (character 2) is not allowed; labels are made of [-a-zA-Z0-9_]"),
        ("matchName", "a*.com", "\"*\" (character 2) is not allowed in matchName; use matchPattern for wildcards"),
        ("matchPattern", "", "the pattern is empty"),
        ("matchPattern", String(repeating: "a", count: 256), "the pattern is 256 characters long; the maximum is 255"),
    ])
    func messages(field: String, value: String, message: String) throws {
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
        let error = try #require(PolicyLoader.load(text: yaml, file: "dns.yaml").errors.first)
        #expect(error.fieldPath == "spec.egress[0].toFQDNs[0].\(field)")
        #expect((error.line, error.column) == (8, 9 + field.count))
        #expect(error.message.hasPrefix(message), "\(error.message)")
        #expect(!error.message.contains("from [-a-zA-Z0-9_.*]"))
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
