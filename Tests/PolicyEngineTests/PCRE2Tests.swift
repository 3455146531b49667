import CPCRE2
import Testing
@testable import PolicyEngine

@Suite("PCRE2 patterns")
struct PCRE2Tests {
    @Test("the CPCRE2 system library links and matches")
    func systemLibraryLinks() {
        var errorCode: Int32 = 0
        var errorOffset = 0
        let pattern = Array("a+b".utf8)
        let code = pcre2_compile_8(pattern, pattern.count, 0, &errorCode, &errorOffset, nil)
        #expect(code != nil)
        let matchData = pcre2_match_data_create_from_pattern_8(code, nil)
        let subject = Array("xaaab".utf8)
        let result = pcre2_match_8(code, subject, subject.count, 0, 0, matchData, nil)
        #expect(result == 1)
        let offsets = pcre2_get_ovector_pointer_8(matchData)!
        #expect(offsets[0] == 1 && offsets[1] == 5)
        pcre2_match_data_free_8(matchData)
        pcre2_code_free_8(code)
    }

    @Test("patterns are anchored at both ends", arguments: [
        ("/api/v1/products.*", "/api/v1/products/42", true),
        ("/api/v1/products.*", "/x/api/v1/products", false),
        ("/public", "/public", true),
        ("/public", "/public?x=1", false),
        ("/public", "/publicity", false),
        ("GET", "GETS", false),
        ("GET|POST", "POST", true),
        ("/users/.*", "/users/", true),
        ("", "", true),
        ("", "/", false),
    ])
    func anchored(pattern: String, subject: String, expected: Bool) throws {
        #expect(try PCRE2Pattern(pattern).matches(subject) == expected)
    }

    @Test("an invalid pattern reports PCRE2's message and offset")
    func invalid() {
        #expect(throws: PCRE2Pattern.CompileError.self) { try PCRE2Pattern("/api/(v1") }
        do {
            _ = try PCRE2Pattern("/a[")
        } catch {
            #expect(error.message.contains("missing terminating ]"))
            #expect(error.offset == 3)
        }
    }

    @Test("no size cliff: a 5,000-character path regex compiles with the JIT and evaluates")
    func longPattern() throws {
        var alternatives: [String] = []
        var index = 0
        while alternatives.joined(separator: "|").utf8.count < 5_000 {
            alternatives.append("/service\(index)/v[0-9]+/items")
            index += 1
        }
        let source = "(" + alternatives.joined(separator: "|") + ")(/.*)?"
        #expect(source.utf8.count > 5_000)
        let pattern = try PCRE2Pattern(source)
        #expect(pattern.isJITCompiled)
        #expect(pattern.matches("/service\(index - 1)/v2/items/9"))
        #expect(pattern.matches("/service0/v1/items"))
        #expect(!pattern.matches("/service\(index)/v1/items"))

        // The same through a policy: it loads, and the snapshot evaluates it.
        let policies = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: long, namespace: default}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules:
                http:
                - path: "\(source)"
        """)
        let backend = pod("default", ["app": "backend"])
        let snapshot = PolicySnapshot(policies: policies)
        let flow = ingress(to: backend, from: pod("default", ["app": "x"]), port: 80)
        #expect(snapshot.evaluate(flow: flow, http: HTTPRequestFacts(method: "GET", path: "/service7/v3/items")).isAllowed)
        #expect(!snapshot.evaluate(flow: flow, http: HTTPRequestFacts(method: "GET", path: "/service7/items")).isAllowed)
    }

    @Test("catastrophic backtracking fails closed instead of hanging")
    func backtrackingLimit() throws {
        let pattern = try PCRE2Pattern("(a+)+b")
        #expect(!pattern.matches(String(repeating: "a", count: 40)))
        #expect(pattern.matches("aaab"))
    }

    @Test("a literal followed by .* is decided without PCRE2 exactly as PCRE2 decides it")
    func literalThenAnythingAgreesWithPCRE2() throws {
        #expect(PCRE2Pattern.literalThenAnything("/api/v1/products.*") == Array("/api/v1/products".utf8))
        #expect(PCRE2Pattern.literalThenAnything("^/api/.*$") == Array("/api/".utf8))
        #expect(PCRE2Pattern.literalThenAnything(".*") == [])
        for notLiteral in ["/api/v1.*/x", "/a.b.*", "/a+.*", "/(a).*", "/a|b.*", "/a\\..*", "/a b.*", "/a.+", "/é.*"] {
            #expect(PCRE2Pattern.literalThenAnything(notLiteral) == nil, "\(notLiteral)")
        }
        // The same language through PCRE2 itself: a group keeps the pattern off the fast path.
        let pairs = [("/api/.*", "(?:/api/).*"), ("^/api/v1/products.*$", "(?:/api/v1/products).*"), (".*", "(?:).*"),
                     ("GET.*", "(?:GET).*")]
        var random = SplitMix64(seed: 7)
        let alphabet: [UInt8] = Array("/apiv1roductsGET-_.%?=&".utf8) + [0x00, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x7F,
                                                                         0x80, 0xC3, 0xA9, 0xE2, 0x80, 0xA8, 0xFF]
        for (fast, slow) in pairs {
            let fastPattern = try PCRE2Pattern(fast), slowPattern = try PCRE2Pattern(slow)
            #expect(PCRE2Pattern.literalThenAnything(slow) == nil)
            for round in 0..<3_000 {
                // Half the subjects start with the literal, so the remainder's bytes are what is tested.
                var subject: [UInt8] = round % 2 == 0 ? Array(fast.utf8.filter { $0 != UInt8(ascii: "^") }.prefix { $0 != UInt8(ascii: ".") }) : []
                for _ in 0..<Int(random.next() % 12) { subject.append(alphabet[Int(random.next() % UInt64(alphabet.count))]) }
                let decided = subject.withUnsafeBufferPointer { fastPattern.matches(bytes: $0) }
                let expected = subject.withUnsafeBufferPointer { slowPattern.matches(bytes: $0) }
                #expect(decided == expected, "\(fast) on \(subject)")
            }
        }
    }
}
