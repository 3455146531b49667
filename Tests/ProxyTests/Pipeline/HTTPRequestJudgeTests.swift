import Testing
import PolicyEngine
@testable import Proxy

/// A request judged for a caller that records nothing (`references: false`) gets the decision,
/// header actions and deciding direction it gets with references, whichever policy decides:
/// the server's L7 rules, or the client's egress policy settling every request at L3/L4.
@Suite struct HTTPRequestJudgeTests {
    /// The backend's ingress rules of the HTTP session tests (an L7 allow and a header ADD).
    static let ingress = HTTPPolicySessionTests.policy

    /// The frontend's egress: to the backend's port at L4 only, to another port only, or with
    /// an L7 rule of its own.
    static func egress(_ toPorts: String) -> String {
        """
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: frontend, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: frontend}}
          egress:
            - toEndpoints: [{matchLabels: {app: backend}}]
              toPorts:
        \(toPorts)
        """
    }

    static let cases: [(name: String, policy: String)] = [
        ("no egress policy", ingress),
        ("egress allowed at L4", ingress + "\n" + egress("        - ports: [{port: \"8080\", protocol: TCP}]")),
        ("egress denied at L4", ingress + "\n" + egress("        - ports: [{port: \"9090\", protocol: TCP}]")),
        ("egress L7 rules", ingress + "\n" + egress("""
                    - ports: [{port: "8080", protocol: TCP}]
                      rules:
                        http: [{method: GET, path: "/api/items"}]
            """)),
    ]

    @Test(arguments: cases.indices)
    func unrecordedJudgementsDecideAsRecordedOnes(index: Int) throws {
        let (name, text) = Self.cases[index]
        let loaded = PolicyLoader.load(text: text, file: "policy.yaml")
        #expect(loaded.errors.isEmpty, "\(name): \(loaded.errors)")
        let snapshot = PolicySnapshot(policies: loaded.policies,
                                      endpoints: try EndpointDirectory.load(text: HTTPPolicySessionTests.endpoints,
                                                                            file: "endpoints.yaml"))
        let policy = WorkerPolicy(holder: PolicySnapshotHolder(snapshot))
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        var recorded = HTTPRequestJudge(policy: policy, identities: identities)
        var unrecorded = HTTPRequestJudge(policy: policy, identities: identities)
        var decisions: [Bool] = []
        for (method, path) in [("GET", "/api/items"), ("GET", "/api/other"), ("POST", "/api/items"), ("GET", "/tagged"),
                               ("GET", "/admin")] {
            let facts = HTTPRequestFacts(method: method, path: path, host: "backend")
            let full = recorded.judge(facts, references: true)
            let lean = unrecorded.judge(facts, references: false)
            #expect(lean.allowed == full.allowed, "\(name): \(method) \(path)")
            #expect(lean.actions == full.actions, "\(name): \(method) \(path)")
            #expect(lean.direction == full.direction, "\(name): \(method) \(path)")
            if full.allowed { #expect(!full.rules.isEmpty, "\(name): an allowed request names its rules") }
            if path == "/tagged" && full.allowed { #expect(!lean.actions.isEmpty, "\(name): the ADD action is kept") }
            decisions.append(full.allowed)
        }
        // Each case decides differently, or the comparison above proves little.
        switch name {
        case "egress denied at L4": #expect(decisions == [false, false, false, false, false])
        case "egress L7 rules": #expect(decisions == [true, false, false, false, false])
        default: #expect(decisions == [true, true, false, true, false], "\(name)")
        }
    }

    /// A judge that records nothing still takes each policy change before the next request:
    /// the L7 allow removed, the client's egress settled at L3/L4 as denied, then allowed again.
    @Test func unrecordedJudgementsFollowPolicyChangesRequestByRequest() throws {
        func snapshot(_ text: String) throws -> PolicySnapshot {
            let loaded = PolicyLoader.load(text: text, file: "policy.yaml")
            #expect(loaded.errors.isEmpty)
            return PolicySnapshot(policies: loaded.policies,
                                  endpoints: try EndpointDirectory.load(text: HTTPPolicySessionTests.endpoints,
                                                                        file: "endpoints.yaml"))
        }
        let holder = PolicySnapshotHolder(try snapshot(Self.cases[1].policy))
        let policy = WorkerPolicy(holder: holder)
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!)
        var judge = HTTPRequestJudge(policy: policy, identities: identities)
        let facts = HTTPRequestFacts(method: "GET", path: "/api/items", host: "backend")
        #expect(judge.judge(facts, references: false).allowed)
        holder.replace(with: try snapshot(Self.cases[1].policy.replacingOccurrences(of: "/api/.*", with: "/other/.*")))
        #expect(!judge.judge(facts, references: false).allowed, "the L7 allow was removed")
        holder.replace(with: try snapshot(Self.cases[2].policy))
        let denied = judge.judge(facts, references: false)
        #expect(!denied.allowed && denied.direction == .egress, "the client's egress now denies at L3/L4")
        holder.replace(with: try snapshot(Self.cases[1].policy))
        #expect(judge.judge(facts, references: false).allowed, "and allows again")
    }

    // MARK: Recent judgements

    /// The backend's rules of the HTTP session tests up to its header rule, then `extra`
    /// rules (same indentation): verdicts depend on method, path and host unless `extra`
    /// reads a header.
    static func pathRules(_ extra: [String] = []) -> String {
        let lines = HTTPPolicySessionTests.policy.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let last = lines.firstIndex { $0.contains("\"/api/.*\"") }!
        let indent = String(lines[last].prefix { $0 == " " })
        let added = [#"- {method: GET, path: "/hosted", host: 'good\.example'}"#] + extra
        return (lines[...last] + added.map { indent + $0 }).joined(separator: "\n") + "\n"
    }

    static func judge(_ holder: PolicySnapshotHolder) -> HTTPRequestJudge {
        let policy = WorkerPolicy(holder: holder)
        return HTTPRequestJudge(policy: policy, identities: policy.identities(
            client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:8080")!))
    }

    /// A request asked again on the connection takes the judgement the rules gave it, for the
    /// same method, path and host only, with and without rule references apart; the
    /// connection's first request is not kept (a connection that asks once and idles holds
    /// nothing for it).
    @Test func aRepeatedRequestTakesItsRecentJudgement() throws {
        let snapshot = try HTTPPolicySessionTests.snapshot(Self.pathRules())
        var judge = Self.judge(PolicySnapshotHolder(snapshot))
        let items = HTTPRequestFacts(method: "GET", path: "/api/items", host: "backend")
        #expect(!judge.isRecent(items, references: true))
        let first = judge.judge(items, references: true)
        #expect(first.allowed && first.rules.count == 1)
        #expect(!judge.isRecent(items, references: true), "the connection's first request is not kept")
        #expect(judge.judge(items, references: true).allowed)
        #expect(judge.isRecent(items, references: true))
        let again = judge.judge(items, references: true)
        #expect(again.allowed && again.rules == first.rules && again.direction == first.direction)
        // Kept apart: the lean judgement names no rules.
        #expect(!judge.isRecent(items, references: false))
        #expect(judge.judge(items, references: false).rules.isEmpty)
        // Another method, path or host is judged by the rules, and differently.
        for facts in [HTTPRequestFacts(method: "POST", path: "/api/items", host: "backend"),
                      HTTPRequestFacts(method: "GET", path: "/admin", host: "backend"),
                      HTTPRequestFacts(method: "GET", path: "/hosted", host: "evil.example")] {
            #expect(!judge.isRecent(facts, references: true), "\(facts.method!) \(facts.path!) \(facts.host!)")
            #expect(!judge.judge(facts, references: true).allowed, "\(facts.method!) \(facts.path!) \(facts.host!)")
            #expect(!judge.judge(facts, references: true).allowed, "asked again: \(facts.path!)")
        }
        #expect(judge.judge(HTTPRequestFacts(method: "GET", path: "/hosted", host: "good.example")).allowed)
        #expect(judge.judge(items, references: true).allowed)
    }

    /// A policy change empties the recent judgements: the same request asked again after it
    /// is judged by the new rules, in both directions of the change.
    @Test func aPolicyChangeEmptiesTheRecentJudgements() throws {
        let allowing = try HTTPPolicySessionTests.snapshot(Self.pathRules())
        let denying = try HTTPPolicySessionTests.snapshot(Self.pathRules().replacingOccurrences(of: "/api/.*",
                                                                                                with: "/other/.*"))
        let holder = PolicySnapshotHolder(allowing)
        var judge = Self.judge(holder)
        let items = HTTPRequestFacts(method: "GET", path: "/api/items", host: "backend")
        for references in [false, true] {
            #expect(judge.judge(items, references: references).allowed)
            #expect(judge.judge(items, references: references).allowed)
            holder.replace(with: denying)
            #expect(!judge.judge(items, references: references).allowed, "the allow was removed")
            #expect(!judge.judge(items, references: references).allowed)
            holder.replace(with: allowing)
            #expect(judge.judge(items, references: references).allowed, "and given back")
        }
    }

    /// While a rule reads a header field, no judgement is kept: two requests with the same
    /// method, path and host but other header values get their own verdicts.
    @Test func judgementsThatHeadersDecideAreNotKept() throws {
        let text = Self.pathRules([#"- {method: GET, path: "/team", headers: ["X-Team: shop"]}"#])
        var judge = Self.judge(PolicySnapshotHolder(try HTTPPolicySessionTests.snapshot(text)))
        let readsHeaders = judge.needsHeaders()
        #expect(readsHeaders)
        let shop = HTTPRequestFacts(method: "GET", path: "/team", host: "backend", headers: [("X-Team", "shop")])
        let other = HTTPRequestFacts(method: "GET", path: "/team", host: "backend", headers: [("X-Team", "other")])
        #expect(judge.judge(shop).allowed)
        #expect(!judge.isRecent(shop, references: true))
        #expect(!judge.judge(other).allowed)
        #expect(judge.judge(shop).allowed)
        let items = HTTPRequestFacts(method: "GET", path: "/api/items", host: "backend")
        #expect(judge.judge(items).allowed)
        #expect(judge.judge(items).allowed)
        #expect(!judge.isRecent(items, references: true))
    }

    /// At most `RecentJudgements.capacity` requests are kept, the oldest replaced first, and
    /// none whose path and host are longer than `maximumKeyBytes`.
    @Test func recentJudgementsAreBounded() throws {
        var judge = Self.judge(PolicySnapshotHolder(try HTTPPolicySessionTests.snapshot(Self.pathRules())))
        #expect(judge.judge(HTTPRequestFacts(method: "GET", path: "/api/first", host: "backend")).allowed)
        let requests = (0...RecentJudgements.capacity).map {
            HTTPRequestFacts(method: "GET", path: "/api/\($0)", host: "backend")
        }
        for facts in requests { #expect(judge.judge(facts).allowed) }
        #expect(!judge.isRecent(requests[0], references: true), "the oldest was replaced")
        for facts in requests.dropFirst() { #expect(judge.isRecent(facts, references: true), "\(facts.path!)") }
        #expect(judge.judge(requests[0]).allowed, "and is judged by the rules again")
        let long = HTTPRequestFacts(method: "GET", path: "/api/" + String(repeating: "x", count: RecentJudgements.maximumKeyBytes),
                                    host: "backend")
        #expect(judge.judge(long).allowed)
        #expect(!judge.isRecent(long, references: true))
    }

    /// Requests are told apart by their bytes: a path or host canonically equivalent to a
    /// kept one ("é" precomposed, or "e" and a combining accent), equal as `String`s, is not
    /// taken for it.
    @Test func recentJudgementsCompareBytes() {
        var recent = RecentJudgements()
        let composed = HTTPRequestFacts(method: "GET", path: "/caf\u{E9}", host: "caf\u{E9}.example")
        // (The first is not kept.)
        recent.remember(HTTPRequestJudge.Judgement(), of: composed, references: false)
        #expect(recent.judgement(of: composed, references: false) == nil)
        recent.remember(HTTPRequestJudge.Judgement(), of: composed, references: false)
        #expect(recent.judgement(of: composed, references: false) != nil)
        let decomposedPath = HTTPRequestFacts(method: "GET", path: "/cafe\u{301}", host: "caf\u{E9}.example")
        let decomposedHost = HTTPRequestFacts(method: "GET", path: "/caf\u{E9}", host: "cafe\u{301}.example")
        #expect(decomposedPath.path == composed.path, "equal as Strings")
        #expect(recent.judgement(of: decomposedPath, references: false) == nil)
        #expect(recent.judgement(of: decomposedHost, references: false) == nil)
        #expect(recent.judgement(of: HTTPRequestFacts(method: "GET", path: "/caf\u{E9}", host: nil), references: false) == nil)
        #expect(recent.judgement(of: composed, references: true) == nil)
        #expect(RecentJudgements.sameBytes(nil, nil) && !RecentJudgements.sameBytes("", nil))
    }
}
