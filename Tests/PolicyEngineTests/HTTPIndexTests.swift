import Testing
@testable import PolicyEngine

/// Pieces random path regexes and paths are built from: each regex piece comes with
/// sample texts, most of which it matches, and a path built from the samples of a
/// regex's pieces often matches it, so a good share of the requests hits some rule.
enum RegexPieces {
    static let pieces: [(regex: String, samples: [String])] = [
        ("/(static|assets)", ["/static", "/assets", "/other"]), ("/[a-z]+", ["/abc", "/x", "/ABC"]),
        ("/r1", ["/r1"]), ("/r2", ["/r2"]), ("/r17", ["/r17", "/r1"]), ("/v[0-9]+", ["/v2", "/v10", "/v"]),
        ("/files", ["/files"]), ("/.*", ["/anything", "/"]), (".*", ["", "/z"]), ("/x?", ["/", "/x"]),
        ("/(?i:admin)", ["/ADMIN", "/admin"]), ("/report\\.pdf", ["/report.pdf", "/reportxpdf"]),
        ("/[0-9]{2,4}", ["/123", "/7", "/12345"]), ("/(a|b)", ["/a", "/b", "/c"]), ("/users/[^/]+", ["/users/42", "/users/"]),
        ("/", ["/"]), ("/é?", ["/é", "/"]), ("(?=/s)/[a-z]+", ["/static", "/abc"]), ("/(a)\\1", ["/aa", "/a"]),
        ("/(?<name>n)", ["/n"]), ("/(?:x|y)+", ["/xyx", "/"]), ("/\\d+", ["/7", "/x"]), ("/\\Qa.b\\E", ["/a.b", "/axb"]),
        ("/(*COMMIT)c", ["/c"]), ("/[a-z]+/logs", ["/abc/logs", "/logs"]), ("(/x)?/data/", ["/data/", "/x/data/"]),
        ("/(a|b)/item", ["/a/item", "/c/item"]), ("/[a-z]+/files/", ["/abc/files/", "/files/"]),
    ]

    /// A regex of one to three pieces, and the pieces it used (a named group at most once).
    static func regex(_ generator: inout SplitMix64) -> (source: String, pieces: [Int]) {
        var chosen: [Int] = []
        for _ in 0..<(1 + Int(generator.next() % 3)) {
            let piece = Int(generator.next() % UInt64(pieces.count))
            if pieces[piece].regex.contains("(?<"), chosen.contains(piece) { continue }
            chosen.append(piece)
        }
        return (chosen.map { pieces[$0].regex }.joined(), chosen)
    }

    /// A path from one sample of each piece.
    static func path(_ pieceIndexes: [Int], _ generator: inout SplitMix64) -> String {
        pieceIndexes.map { pieces[$0].samples[Int(generator.next() % UInt64(pieces[$0].samples.count))] }.joined()
    }

    /// A path from the samples of random pieces.
    static func path(_ generator: inout SplitMix64) -> String {
        path(regex(&generator).pieces, &generator)
    }
}

@Suite("HTTP rule index: combined programs and literal prefilter")
struct HTTPIndexTests {
    /// A path built from the samples of the pieces `source` was made of.
    func sampleFor(_ source: String, _ generator: inout SplitMix64) -> String {
        var rest = Substring(source)
        var pieces: [Int] = []
        while !rest.isEmpty {
            guard let piece = RegexPieces.pieces.indices.filter({ rest.hasPrefix(RegexPieces.pieces[$0].regex) })
                .max(by: { RegexPieces.pieces[$0].regex.count < RegexPieces.pieces[$1].regex.count }) else { break }
            pieces.append(piece)
            rest = rest.dropFirst(RegexPieces.pieces[piece].regex.count)
        }
        return RegexPieces.path(pieces, &generator)
    }

    @Test("a combined program reports exactly the members that match alone", arguments: [11, 12, 13, 14] as [UInt64])
    func alternationAgreesWithMembers(seed: UInt64) throws {
        var generator = SplitMix64(seed: seed)
        var sources: [String] = []
        while sources.count < 60 {
            let source = RegexPieces.regex(&generator).source
            if PCRE2Alternation.isCombinable(source) { sources.append(source) }
        }
        let members = try sources.map { try PCRE2Pattern($0) }
        let alternation = try #require(PCRE2Alternation(members: sources))
        #expect(alternation.isJITCompiled)
        var matchedSomething = 0
        for round in 0..<500 {
            // Half the subjects are built for one of the members.
            var subject = round % 2 == 0 ? RegexPieces.path(&generator) : sampleFor(sources[round % sources.count], &generator)
            var reported: [Int] = []
            let finished = subject.withUTF8 { bytes in alternation.forEachMatch(in: bytes) { reported.append($0) } }
            #expect(finished)
            let expected = members.indices.filter { members[$0].matches(subject) }
            #expect(reported == expected, "\(subject): \(reported.map { sources[$0] }) vs \(expected.map { sources[$0] })")
            if !expected.isEmpty { matchedSomething += 1 }
        }
        #expect(matchedSomething > 50, "the generator must produce matching subjects")
    }

    @Test("members are merged on their leading atoms; members that cannot be split stay whole")
    func factoring() throws {
        #expect(PCRE2Alternation.atoms(of: "/(static|assets)/[a-z]+[1]\\.x*?y{2,3}+é?") == ["/", "(static|assets)", "/", "[a-z]+", "[1]", "\\.", "x*?", "y{2,3}+", "é?"])
        #expect(PCRE2Alternation.atoms(of: "a|b") == nil)
        #expect(PCRE2Alternation.atoms(of: "(?i)ab") == nil)
        #expect(PCRE2Alternation.atoms(of: "a{x}") == nil)
        #expect(PCRE2Alternation.atoms(of: "\\x{41}") == nil)
        let source = PCRE2Alternation.programSource(["/ab[0-9]", "/ab[0-9]c", "/ax", "a|b", "/ab"])
        // Whole members first, then one branch per distinct next atom; a shared run (`/a`) is not grouped.
        #expect(source == "(?:(?:a|b)\\z(?C\"4\")|/a(?:b(?:\\z(?C\"5\")|[0-9](?:\\z(?C\"1\")|c\\z(?C\"2\")))|x\\z(?C\"3\")))")
        let alternation = try #require(PCRE2Alternation(members: ["/ab[0-9]", "/ab[0-9]c", "/ax", "a|b", "/ab"]))
        for (subject, expected) in [("/ab7", [0]), ("/ab7c", [1]), ("/ax", [2]), ("a", [3]), ("/ab", [4]), ("/a", [])] {
            var subject = subject
            var reported: [Int] = []
            #expect(subject.withUTF8 { alternation.forEachMatch(in: $0) { reported.append($0) } })
            #expect(reported == expected, "\(subject)")
        }
    }

    @Test("members that would change meaning inside an alternation are not combined", arguments: [
        ("/(a)\\1", false), ("/(?<name>n)", false), ("/(*COMMIT)c", false), ("/\\Qa.b\\E", false), ("(?x)/a # c", false),
        ("/\\k<n>", false), ("/(?1)", false), ("/(?|a|b)", false), ("[(?]x", true), ("/(?i:admin)", true), ("(?i)/a", true),
        ("/(static|assets)/r1/.*", true), ("(?=/s)/[a-z]+", true), ("/[]a]", true), ("/[", false),
    ] as [(String, Bool)])
    func combinable(source: String, expected: Bool) {
        #expect(PCRE2Alternation.isCombinable(source) == expected)
    }

    @Test("required literals are text every match contains", arguments: [
        ("/(static|assets)/r42/.*", "/r42/"), ("/api/v1/items/[0-9]+", "/api/v1/items/"), ("/(a|b)/report\\.pdf", "/report.pdf"),
        ("/x/abcde?", "/x/abcd"), ("/abcé?/zz", "/abc"), ("[a-z]+/users/[0-9]{2}", "/users/"), ("a|bcdefgh", nil),
        ("(?i)/admin/panel", nil), ("/\\x41bcdef", nil), ("/ab+cd", nil), ("/abcd+", "/abcd"), ("/a{2}bcdef", "bcdef"),
        ("/[[:alpha:]]/long/", "/long/"), ("/[]abc]/wxyz", "/wxyz"),
    ] as [(String, String?)])
    func requiredLiteral(pattern: String, expected: String?) {
        let literal = LiteralPrefilter.requiredLiteral(of: pattern).map { String(decoding: $0, as: UTF8.self) }
        #expect(literal == expected)
    }

    @Test("required literals hold: whenever a pattern matches, its literal occurs", arguments: [21, 22] as [UInt64])
    func requiredLiteralSoundness(seed: UInt64) throws {
        var generator = SplitMix64(seed: seed)
        var checked = 0
        for _ in 0..<300 {
            let (source, pieces) = RegexPieces.regex(&generator)
            guard let literal = LiteralPrefilter.requiredLiteral(of: source), let pattern = try? PCRE2Pattern(source) else { continue }
            for _ in 0..<40 {
                let path = RegexPieces.path(pieces, &generator)
                if pattern.matches(path) {
                    checked += 1
                    #expect(Array(path.utf8).firstRange(of: literal) != nil, "\(source) matched \(path) without \(literal)")
                }
            }
        }
        #expect(checked > 20)
    }

    @Test("programs split by member count and source size: many long members and a 3,000-alternative one")
    func splitting() throws {
        // 600 members of ~400 characters (all in the no-prefix bucket: `|` inside) and
        // one of 3,000 alternatives: more than one program's source budget.
        let long = String(repeating: "(?:ab|cd)", count: 45)
        var items: [HTTPRuleIndex.Item] = []
        for index in 0..<600 {
            let source = "/[a-z]\(long)/[m]\(index)"
            items.append(HTTPRuleIndex.Item(entry: 0, rule: HTTPRule(index: index, method: nil, path: try PCRE2Pattern(source), host: nil, headers: [], headerMatches: [])))
        }
        let huge = "/(?:" + (0..<3_000).map { "w\($0)" }.joined(separator: "|") + ")"
        items.append(HTTPRuleIndex.Item(entry: 0, rule: HTTPRule(index: 600, method: nil, path: try PCRE2Pattern(huge), host: nil, headers: [], headerMatches: [])))
        let (programs, refused) = HTTPRuleIndex.programs(for: items.enumerated().compactMap { position, item in item.rule.path.map { (position, $0.source) } })
        #expect(programs.count >= 3)
        #expect(programs.allSatisfy { $0.members.count <= PCRE2Alternation.maximumMembers })
        #expect(Set(programs.flatMap(\.members) + refused) == Set(items.indices))
        let index = HTTPRuleIndex(items: items)
        #expect(index.buckets.contains { $0.programs.count >= 3 })
        // Members of programs are candidates only when their path matched.
        #expect(index.candidates(method: "GET", path: "/q\(String(repeating: "ab", count: 45))/m433") == [433])
        #expect(index.candidates(method: "GET", path: "/q\(String(repeating: "cd", count: 45))/m599") == [599])
        #expect(index.candidates(method: "GET", path: "/w2999") == [600])
        #expect(index.candidates(method: "GET", path: "/q/m433") == [])
    }

    @Test("members PCRE2 refuses to compile together are split until they fit, or checked alone")
    func refusedPrograms() throws {
        // Four members of ~20,000 characters with nothing in common: two fit one
        // program's source budget but not PCRE2's compiled-size limit together.
        var items: [HTTPRuleIndex.Item] = []
        for member in 0..<4 {
            let source = "/k\(member)(?:" + (0..<3_000).map { "w\($0)" }.joined(separator: "|") + ")"
            items.append(HTTPRuleIndex.Item(entry: 0, rule: HTTPRule(index: member, method: nil, path: try PCRE2Pattern(source), host: nil, headers: [], headerMatches: [])))
        }
        #expect(PCRE2Alternation(members: items.prefix(2).map { $0.rule.path!.source }) == nil, "the pair must be too large for PCRE2")
        let (programs, refused) = HTTPRuleIndex.programs(for: items.enumerated().compactMap { position, item in item.rule.path.map { (position, $0.source) } })
        #expect(programs.isEmpty)
        #expect(refused.sorted() == [0, 1, 2, 3])
        let index = HTTPRuleIndex(items: items)
        #expect(index.candidates(method: "GET", path: "/k2w17") == [0, 1, 2, 3])
        #expect(items.indices.filter { items[$0].rule.path!.matches("/k2w17") } == [2])
    }

    @Test("a program that exhausts its matching budget hands its members back to be checked alone")
    func limitFallsBackToMembers() throws {
        // Catastrophic backtracking: the pass over the combined program fails with a
        // limit, so every member becomes a candidate and is checked with its own budget.
        let catastrophic = "/(a+)+b"
        let sources = [catastrophic, "/a+", "/[xy]", "/[a-z]*c"]
        let items = try sources.enumerated().map { HTTPRuleIndex.Item(entry: 0, rule: HTTPRule(index: $0.offset, method: nil, path: try PCRE2Pattern($0.element), host: nil, headers: [], headerMatches: [])) }
        let index = HTTPRuleIndex(items: items)
        #expect(index.buckets.contains { !$0.programs.isEmpty }, "the four members should be combined")
        let path = "/" + String(repeating: "a", count: 40)
        var verdicts: [(Int, Bool)] = []
        index.forEachCandidate(method: "GET", path: path) { item, _, isPathKnown in verdicts.append((item, isPathKnown)) }
        #expect(verdicts.map(\.0) == [0, 1, 2, 3])
        #expect(verdicts.allSatisfy { !$0.1 })
        // And the members alone: only `/a+` matches.
        #expect(items.indices.filter { items[$0].rule.path!.matches(path) } == [1])
    }

    @Test("the default benchmark mix puts rules without a literal prefix behind the prefilter")
    func prefilterUsed() throws {
        var items: [HTTPRuleIndex.Item] = []
        for index in 0..<20 {
            let source = "/(static|assets)/r\(index)/.*"
            items.append(HTTPRuleIndex.Item(entry: 0, rule: HTTPRule(index: index, method: nil, path: try PCRE2Pattern(source), host: nil, headers: [], headerMatches: [])))
        }
        // Literals at the very start and the very end of the path.
        for index in 20..<40 {
            items.append(HTTPRuleIndex.Item(entry: 0, rule: HTTPRule(index: index, method: nil, path: try PCRE2Pattern("[a-z]*/key\(index)"), host: nil, headers: [], headerMatches: [])))
        }
        let index = HTTPRuleIndex(items: items)
        #expect(index.buckets.count == 1 && index.buckets[0].prefilter != nil && index.buckets[0].single.isEmpty)
        #expect(index.candidates(method: "GET", path: "/key25") == [25])
        #expect(index.candidates(method: "GET", path: "abc/key39") == [39])
        #expect(index.candidates(method: "GET", path: "/key2") == [])
        #expect(index.candidates(method: "GET", path: "/assets/r17/app.js") == [17])
        #expect(index.candidates(method: "GET", path: "/static/r1/x") == [1])
        #expect(index.candidates(method: "GET", path: "/other/r170/x").isEmpty)
    }
}

@Suite("Crowded ports agree with the reference evaluator")
struct CrowdedPortPropertyTests {
    /// One port with many HTTP rules whose paths mostly lack a literal prefix, so the
    /// literal prefilter, combined programs (with members that cannot be combined) and
    /// plain buckets are all used; several policies select the endpoint with different peers.
    static func policies(_ generator: inout SplitMix64) -> String {
        var documents: [String] = []
        for policyIndex in 0..<3 {
            var text = """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: crowded\(policyIndex), namespace: ns}
            spec:
              endpointSelector: {matchLabels: {app: a}}
              ingress:
              - fromEndpoints: [{matchLabels: {app: \(["b", "c", "b"][policyIndex])}}]
                toPorts:
                - ports: [{port: "80", protocol: TCP}]
                  rules:
                    http:

            """
            for _ in 0..<(20 + Int(generator.next() % 60)) {
                var fields: [String] = []
                switch generator.next() % 4 {
                case 0: fields.append("method: GET")
                case 1: fields.append("method: \"GET|POST\"")
                case 2: fields.append("method: POST")
                default: break
                }
                let path = RegexPieces.regex(&generator).source
                fields.append("path: '\(path)'")
                if generator.next() % 10 == 0 { fields.append("headers: [\"X-Token\"]") }
                text += "        - {\(fields.joined(separator: ", "))}\n"
            }
            documents.append(text)
        }
        return documents.joined(separator: "---\n")
    }

    @Test("random crowded ports (seeded)", arguments: [31, 32, 33, 34, 35, 36] as [UInt64])
    func agreement(seed: UInt64) throws {
        var generator = SplitMix64(seed: seed)
        let policies = loadPolicies(Self.policies(&generator))
        let snapshot = PolicySnapshot(policies: policies)
        let reference = ReferenceEvaluator(policies: policies)
        let subject = pod("ns", ["app": "a"])
        let handle = snapshot.policy(forEndpoint: subject)
        var connections: [String: ConnectionPolicy] = [:]
        var allowed = 0
        for _ in 0..<1_500 {
            let peer = ["b", "c", "d"][Int(generator.next() % 3)]
            let flow = ingress(to: subject, from: pod("ns", ["app": peer]), port: 80)
            var headers: [(name: String, value: String)] = []
            if generator.next() % 2 == 0 { headers.append(("x-token", "1")) }
            let request = HTTPRequestFacts(method: ["GET", "POST", "PUT"][Int(generator.next() % 3)], path: RegexPieces.path(&generator), headers: headers)
            let expected = reference.evaluate(flow, request)
            let compiled = snapshot.evaluate(flow: flow, http: request)
            #expect(compiled.isAllowed == expected.allowed, "\(peer) \(request.method) \(request.path)")
            #expect(Set(compiled.matched) == expected.matched, "\(peer) \(request.method) \(request.path)")
            // The handles the proxy keeps answer exactly as the snapshot does.
            let connection = connections[peer] ?? handle.connection(flow)
            connections[peer] = connection
            let viaConnection = connection.evaluate(http: request)
            #expect(viaConnection.isAllowed == compiled.isAllowed && viaConnection.matched == compiled.matched)
            // A caller that records nothing gets the same decision and actions, without a verdict.
            #expect(connection.decide(http: request) == HTTPDecision(isAllowed: compiled.isAllowed,
                                                                     headerActions: viaConnection.headerActions))
            #expect(handle.evaluate(flow: flow, http: request).matched == compiled.matched)
            if compiled.isAllowed { allowed += 1 }
        }
        #expect(allowed > 150 && allowed < 1_350, "allowed \(allowed) of 1500")
        // The crowded slot really uses the new paths (or this test proves little).
        let slot = try #require(snapshot.endpointPolicy(for: subject).ingress.slots.values.first?.http)
        #expect(slot.buckets.contains { $0.prefilter != nil })
        #expect(slot.buckets.contains { !$0.programs.isEmpty })
    }

    @Test("threads evaluating one snapshot at once get the answers of one thread alone")
    func concurrentEvaluation() async throws {
        var generator = SplitMix64(seed: 41)
        let policies = loadPolicies(Self.policies(&generator))
        let snapshot = PolicySnapshot(policies: policies)
        let subject = pod("ns", ["app": "a"])
        let flows = ["b", "c"].map { ingress(to: subject, from: pod("ns", ["app": $0]), port: 80) }
        let requests = (0..<400).map { _ in
            HTTPRequestFacts(method: ["GET", "POST"][Int(generator.next() % 2)], path: RegexPieces.path(&generator))
        }
        let expected = flows.map { flow in requests.map { snapshot.evaluate(flow: flow, http: $0).matched } }
        #expect(expected.joined().contains { !$0.isEmpty })
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for task in 0..<4 {
                group.addTask {
                    let connections = flows.map { snapshot.policy(forEndpoint: subject).connection($0) }
                    var count = 0
                    for round in 0..<5 {
                        for (position, request) in requests.enumerated() {
                            let which = (position + task + round) % 2
                            if connections[which].evaluate(http: request).matched != expected[which][position] { count += 1 }
                        }
                    }
                    return count
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
    }
}
