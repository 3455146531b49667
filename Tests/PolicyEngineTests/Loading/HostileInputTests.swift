#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import PolicyEngine

/// Issue 9, item 7 (loader part of the fuzzing work): no YAML or JSON input makes the
/// loader trap, hang or exhaust memory; each bad input is a located `PolicyError`.
@Suite("Hostile policy input", .timeLimit(.minutes(1)))
struct HostileInputTests {
    /// Loads `text`, which must produce exactly one error; returns it.
    static func onlyError(_ text: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> PolicyError? {
        let result = PolicyLoader.load(text: text, file: "hostile.yaml")
        #expect(result.policies.isEmpty, sourceLocation: sourceLocation)
        #expect(result.errors.count == 1, "\(result.errors)", sourceLocation: sourceLocation)
        if let error = result.errors.first {
            #expect(error.description.count < 2_000, "a message must not copy the input", sourceLocation: sourceLocation)
        }
        return result.errors.first
    }

    @Test("deep nesting is refused by the YAML parser, not the stack", arguments: [
        String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000),
        String(repeating: "{a: ", count: 50_000) + "b" + String(repeating: "}", count: 50_000),
        String(repeating: "- ", count: 50_000) + "x\n",
        (0..<2_000).map { String(repeating: " ", count: $0) + "k:\n" }.joined(),
    ])
    func deepNesting(text: String) {
        let error = Self.onlyError(text)
        #expect(error?.message.contains("Maximum nesting level") == true, "\(String(describing: error))")
        #expect((error?.line ?? 0) > 0)
    }

    /// Four levels the reader walks (ingress, toPorts, rules.http, headers), each an
    /// alias repeated 100 times: 10^8 headers from 2 KB of text.
    static let aliasBomb: String = {
        func list(_ item: String) -> String { "[" + Array(repeating: item, count: 100).joined(separator: ", ") + "]" }
        return """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: bomb, namespace: ns}
        status:
          headers: &headers \(list("\"X-A: b\""))
          http: &http \(list("{headers: *headers}"))
          toPorts: &toPorts \(list("{ports: [{port: \"80\", protocol: TCP}], rules: {http: *http}}"))
          ingress: &ingress \(list("{toPorts: *toPorts}"))
        spec:
          endpointSelector: {}
          ingress: *ingress
        """
    }()

    @Test("aliases that expand past the limit are refused before the reader walks them")
    func aliasExpansion() throws {
        let error = try #require(Self.onlyError(Self.aliasBomb))
        #expect(error.message.contains("aliases expand to more than \(YAMLText.maximumAliasExpansion) nodes"))
        #expect(error.line == 1)
        // The same through the endpoints-file reader.
        let endpoints = "a: &a [" + Array(repeating: "1", count: 400).joined(separator: ",") + "]\n"
            + "b: &b [" + Array(repeating: "*a", count: 400).joined(separator: ",") + "]\nendpoints: []\n"
        #expect(throws: PolicyError.self) { try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml") }
        #expect(!EndpointDirectory.isEndpointsText(endpoints))
    }

    /// Yams hashes every mapping key to find duplicates, walking an aliased key in full:
    /// 10^9 nodes here, before any of our code would see the document.
    static func keyBomb(_ key: String) -> String {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for level in 1...9 {
            text += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ") + "]\n"
        }
        return text + key
    }

    @Test("an alias inside a non-scalar key is refused before composing", arguments: [
        "? *a9\n: 1\n", "[*a9]: 1\n", "{*a9 : 1}: 2\n", "x: {*a9 : 1}\n", "*a9 : 1\n", "? - *a9\n: 1\n",
    ])
    func aliasedComplexKey(key: String) throws {
        let error = try #require(Self.onlyError(Self.keyBomb(key)))
        #expect(error.message.contains("an alias may be used in a non-scalar mapping key"), "\(error)")
        #expect(error.line >= 2)
        #expect(throws: PolicyError.self) { try EndpointDirectory.load(text: Self.keyBomb(key), file: "e.yaml") }
    }

    @Test("modest anchors and aliases still load, and mean what they expand to")
    func legitimateAliases() {
        let policies = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: reuse, namespace: ns}
        spec:
          endpointSelector: &web {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [*web]
            toPorts: &http-port [{ports: [{port: "80", protocol: TCP}]}]
          egress:
          - toEndpoints: [*web]
            toPorts: *http-port
        """)
        let snapshot = PolicySnapshot(policies: policies)
        let web = pod("ns", ["app": "web"])
        #expect(snapshot.evaluate(flow: ingress(to: web, from: web, port: 80)).isAllowed)
        #expect(!snapshot.evaluate(flow: ingress(to: web, from: web, port: 81)).isAllowed)
        #expect(snapshot.evaluate(flow: egress(from: web, to: web, port: 80)).isAllowed)
        // Text that merely looks like an alias in a scalar is not refused.
        _ = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: stars, namespace: ns}
        spec:
          description: "why? because"
          endpointSelector: {}
          egress:
          - toFQDNs: [{matchPattern: "*.example.com"}, {matchPattern: '**.cilium.io'}]
          - toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules: {http: [{path: "/a.*", headers: ["Accept: */*"]}]}
        """)
    }

    static func port(_ value: String, key: String = "port") -> String {
        """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: ports, namespace: ns}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts: [{ports: [{port: "80", \(key): \(value)}]}]
        """
    }

    @Test("numbers out of range are refused, never converted with a trap", arguments: [
        ("port", "\"99999999999999999999999999\""), ("port", "65536"), ("port", "-1"), ("port", "\"+80\""), ("port", "\" 80\""),
        ("endPort", "99999999999999999999"), ("endPort", "1e400"), ("endPort", "-5"),
        ("endPort", "65536"), ("endPort", "8.5"),
    ])
    func ports(key: String, value: String) throws {
        var text = Self.port(value, key: key)
        if key == "port" { text = text.replacingOccurrences(of: "port: \"80\", port:", with: "port:") }
        let error = try #require(Self.onlyError(text))
        #expect(error.fieldPath.hasPrefix("spec.ingress[0].toPorts[0].ports[0]"), "\(error)")
        #expect(error.line == 7)
    }

    @Test("other numeric fields: ICMP types, Kafka versions and keys", arguments: [
        "icmps: [{fields: [{type: 256}]}]", "icmps: [{fields: [{type: 99999999999999999999999}]}]",
        "toPorts: [{ports: [{port: \"9092\", protocol: TCP}], rules: {kafka: [{apiVersion: \"99999999\"}]}}]",
        "toPorts: [{ports: [{port: \"9092\", protocol: TCP}], rules: {kafka: [{apiKey: \"40000\"}]}}]",
        "toPorts: [{ports: [{port: \"9092\", protocol: TCP}], rules: {kafka: [{apiVersion: \"-1\"}]}}]",
    ])
    func otherNumbers(rule: String) {
        let error = Self.onlyError("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: numbers, namespace: ns}
        spec:
          endpointSelector: {}
          ingress:
          - \(rule)
        """)
        #expect(error?.line == 7)
    }

    @Test("empty documents load as nothing, without an error", arguments: [
        "", "\n\n", "---", "---\n---\n...\n", "# only a comment\n", "~\n", "--- null\n---\n", "\u{FEFF}",
    ])
    func emptyDocuments(text: String) {
        let result = PolicyLoader.load(text: text, file: "empty.yaml")
        #expect(result.errors.isEmpty && result.policies.isEmpty && result.documentCount == 0, "\(result.errors)")
    }

    @Test("documents of the wrong shape are located errors", arguments: [
        "hello\n", "[1, 2]\n", "{[a, b]: c}\n", "? {a: b}\n: c\n", "kind: [CiliumNetworkPolicy]\napiVersion: cilium.io/v2\n",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: ns}\nspec: {endpointSelector: {}, ingress: [[]]}\n",
        "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: List, items: [{apiVersion: v1, kind: List, items: [hello]}]}]\n",
        "\u{0}", "a: \"\u{1}\"\n", "a: b\n\tc: d\n",
    ])
    func wrongShapes(text: String) {
        let result = PolicyLoader.load(text: text, file: "shape.yaml")
        #expect(result.policies.isEmpty)
        #expect(!result.errors.isEmpty)
        for error in result.errors { #expect(error.description.hasPrefix("shape.yaml")) }
    }

    @Test("a huge value is named, not copied, in the message")
    func hugeValue() {
        let error = Self.onlyError("apiVersion: cilium.io/v2\nkind: \(String(repeating: "K", count: 1_000_000))\n")
        #expect(error?.message.contains("KKKK...\"") == true, "\(String(describing: error))")
    }

    @Test("a NUL inside an address is not cut off by the C parser", arguments: ["fromCIDR: [\"10.0.0.1\\0junk\"]", "fromCIDRSet: [{cidr: \"10.0.0.0/8\\0\"}]"])
    func nulInAddress(member: String) {
        let error = Self.onlyError("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: nul, namespace: ns}
        spec:
          endpointSelector: {}
          ingress:
          - \(member)
        """)
        #expect(error?.line == 7)
        #expect(IPAddress("10.0.0.1\u{0}junk") == nil)
    }

    @Test("a file that is not UTF-8 is refused as a whole", arguments: [
        [0xFF, 0xFE, 0x00, 0x61], [0x6B, 0x69, 0x6E, 0x64, 0x3A, 0x20, 0xC3, 0x28], [0xED, 0xA0, 0x80],
    ] as [[UInt8]])
    func notUTF8(bytes: [UInt8]) throws {
        let path = "/tmp/sluice-policy-hostile-\(getpid())-\(bytes.count).yaml"
        let file = try #require(fopen(path, "w"))
        _ = bytes.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
        defer { unlink(path) }
        let result = PolicyLoader.load(file: path)
        #expect(result.errors.map(\.description) == ["\(path): expected UTF-8 text"])
    }
}
