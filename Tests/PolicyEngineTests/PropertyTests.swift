import Testing
@testable import PolicyEngine

/// A plain evaluator that scans every rule of every policy for each question: no
/// slots, no HTTP index. The compiled snapshot must agree with it.
struct ReferenceEvaluator {
    let policies: [Policy]

    func evaluate(_ flow: FlowContext, _ request: HTTPRequestFacts) -> (allowed: Bool, matched: Set<RuleReference>) {
        var enforced = false
        var requirements: [LabelSelector] = []
        var denies: [RuleReference] = []
        var allows: [(RuleReference, L7Rules?)] = []
        for (policyIndex, policy) in policies.enumerated() {
            for rule in policy.rules {
                guard case .endpoints(let selector) = rule.subject, flow.subject.isClusterEndpoint, selector.matches(flow.subject.labels) else { continue }
                if rule.defaultDeny(flow.direction) { enforced = true }
                for isDeny in [false, true] {
                    for peerRule in rule.rules(flow.direction, deny: isDeny) {
                        requirements += peerRule.requires
                        let peerMatches = peerRule.peers.map { $0.contains { $0.selects(flow.remote) } } ?? true
                        guard peerMatches else { continue }
                        let named = flow.direction == .ingress ? flow.subject.namedPorts : flow.remote.namedPorts
                        var clauses: [(Int?, Bool, L7Rules?)] = []
                        if peerRule.portRules.isEmpty { clauses.append((nil, true, nil)) }
                        for portRule in peerRule.portRules {
                            // A port rule without ports covers no port (`toPorts: [{}]`).
                            let covers = portRule.ports.contains { $0.covers(port: flow.port, transport: flow.transport, namedPorts: named) }
                            clauses.append((portRule.index, covers, portRule.l7))
                        }
                        for (portIndex, covers, l7) in clauses where covers {
                            let reference = RuleReference(policyIndex: policyIndex, policy: policy.qualifiedName, direction: flow.direction,
                                                          isDeny: isDeny, rule: peerRule.index, portRule: portIndex, l7Rule: nil)
                            if isDeny { denies.append(reference) } else { allows.append((reference, l7)) }
                        }
                    }
                }
            }
        }
        if !denies.isEmpty { return (false, Set(denies)) }
        if !requirements.allSatisfy({ $0.matches(flow.remote.labels) }) { allows = [] }
        if allows.isEmpty { return (!enforced, []) }
        let plain = allows.filter { $0.1 == nil }.map(\.0)
        if !plain.isEmpty { return (true, Set(plain)) }
        var matched = Set<RuleReference>()
        for (reference, l7) in allows {
            guard case .http(let rules)? = l7 else { continue }
            for rule in rules where Self.matches(rule, request) { matched.insert(reference.with(l7Rule: rule.index)) }
        }
        return (!matched.isEmpty, matched)
    }

    static func matches(_ rule: HTTPRule, _ request: HTTPRequestFacts) -> Bool {
        // An absent fact fails a rule field that tests it.
        if let method = rule.method, !(request.method.map(method.matches) ?? false) { return false }
        if let path = rule.path, !(request.path.map(path.matches) ?? false) { return false }
        if let host = rule.host, !(request.host.map(host.matches) ?? false) { return false }
        for header in rule.headers {
            // A repeated header is seen as its values joined with ",".
            let values = request.headers.filter { $0.name.lowercased() == header.name }.map(\.value)
            if values.isEmpty { return false }
            if let expected = header.value, values.joined(separator: ",") != expected { return false }
        }
        return true
    }
}

@Suite("Compiled snapshot agrees with the reference evaluator")
struct PropertyTests {
    static let apps = ["a", "b", "c", "d"]
    static let methods = ["GET", "POST", "PUT", "DELETE"]
    static let methodPatterns = ["GET", "POST", "GET|PUT", "P.*", nil]
    static let pathPatterns = ["/api/v1/.*", "/api/v1/items/[0-9]+", "/health", "/api/v2/users", "/(a|b)/x", "/api/v1/items/4", "^/st[a-z]+/.*", nil]
    static let paths = ["/api/v1/items/42", "/api/v1/items/4", "/api/v1/x", "/health", "/healthz", "/api/v2/users", "/a/x", "/b/x", "/static/app.js", "/", "/api/v2/users?x=1"]
    static let ports: [UInt16] = [80, 8080, 9000, 8050, 443]

    static func randomPolicy(_ index: Int, _ generator: inout SplitMix64) -> String {
        func pick<T>(_ values: [T]) -> T { values[Int(generator.next() % UInt64(values.count))] }
        var text = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: p\(index), namespace: ns}
        spec:
          endpointSelector: {matchLabels: {app: \(pick(apps))}}

        """
        if generator.next() % 5 == 0 { text += "  enableDefaultDeny: {ingress: false}\n" }
        text += "  ingress:\n"
        for _ in 0..<(1 + generator.next() % 3) {
            text += "  - "
            switch generator.next() % 4 {
            case 0: text += "fromEndpoints: [{matchLabels: {app: \(pick(apps))}}]\n    "
            case 1: text += "fromEndpoints: [{matchExpressions: [{key: app, operator: NotIn, values: [\(pick(apps))]}]}]\n    "
            case 2: text += "fromEntities: [cluster]\n    "
            default: break
            }
            text += "toPorts:\n"
            for _ in 0..<(1 + generator.next() % 2) {
                let l7 = generator.next() % 3 != 0
                if l7 || generator.next() % 2 == 0 {
                    text += "    - ports: [{port: \"\(pick(["80", "8080", "9000"]))\", protocol: TCP}]\n"
                } else {
                    text += "    - ports: [{port: \"8000\", endPort: 8100, protocol: TCP}]\n"
                }
                if l7 {
                    text += "      rules:\n        http:\n"
                    for _ in 0..<(1 + generator.next() % 4) {
                        var fields: [String] = []
                        if let method = pick(methodPatterns) { fields.append("method: \"\(method)\"") }
                        if let path = pick(pathPatterns) { fields.append("path: \"\(path)\"") }
                        if generator.next() % 6 == 0 { fields.append("headers: [\"X-Token\"]") }
                        text += "        - {\(fields.joined(separator: ", "))}\n"
                    }
                }
            }
        }
        if generator.next() % 6 == 0 {
            // An empty rule: it turns default deny on and allows nothing.
            text += "  - {}\n"
        }
        if generator.next() % 4 == 0 {
            text += "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: \(pick(apps))}}]\n    toPorts: [{ports: [{port: \"\(pick(["80", "8080"]))\", protocol: TCP}]}]\n"
        }
        return text
    }

    @Test("random policies and requests (seeded)", arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func agreement(seed: UInt64) {
        var generator = SplitMix64(seed: seed)
        let text = (0..<(2 + Int(generator.next() % 12))).map { Self.randomPolicy($0, &generator) }.joined(separator: "---\n")
        let result = PolicyLoader.load(text: text, file: "random-\(seed).yaml")
        #expect(result.errors.isEmpty, "\(result.errors)")
        var directory = EndpointDirectory()
        for (index, app) in Self.apps.enumerated() {
            directory.add(Identity.pod(namespace: "ns", labels: ["app": app]), prefix: CIDR("10.0.0.\(index + 1)/32")!)
        }
        let snapshot = PolicySnapshot(policies: result.policies, endpoints: directory)
        let reference = ReferenceEvaluator(policies: result.policies)
        var allowedCount = 0
        for _ in 0..<1_000 {
            func pick<T>(_ values: [T]) -> T { values[Int(generator.next() % UInt64(values.count))] }
            let subject = Identity.pod(namespace: "ns", labels: ["app": pick(Self.apps)])
            let remote = generator.next() % 8 == 0 ? Identity.reserved(.world, address: IPAddress("8.8.8.8")) : Identity.pod(namespace: pick(["ns", "other"]), labels: ["app": pick(Self.apps)])
            let flow = ingress(to: subject, from: remote, port: pick(Self.ports))
            var headers: [(name: String, value: String)] = []
            if generator.next() % 2 == 0 { headers.append(("x-token", "1")) }
            let request = HTTPRequestFacts(method: pick(Self.methods), path: pick(Self.paths), headers: headers)
            let compiled = snapshot.evaluate(flow: flow, http: request)
            let expected = reference.evaluate(flow, request)
            #expect(compiled.isAllowed == expected.allowed, "\(flow.subject) <- \(flow.remote) :\(flow.port) \(request.method) \(request.path)")
            #expect(Set(compiled.matched) == expected.matched, "\(request.method) \(request.path)")
            if compiled.isAllowed { allowedCount += 1 }
        }
        // The generator must exercise both outcomes, or the comparison proves little.
        #expect(allowedCount > 50 && allowedCount < 950, "allowed \(allowedCount) of 1000")
    }
}

@Suite("Snapshot holder")
struct SnapshotHolderTests {
    @Test("readers always see a complete snapshot while it is replaced")
    func atomicReplacement() async {
        let allowAll = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: open, namespace: ns}
        spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]}
        """)
        let denyAll = loadPolicies("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: closed, namespace: ns}
        spec: {endpointSelector: {}, ingress: [{}], ingressDeny: [{}]}
        """)
        let holder = PolicySnapshotHolder()
        holder.replace(policies: allowAll, endpoints: EndpointDirectory())
        let flow = ingress(to: pod("ns", ["a": "b"]), from: pod("ns", ["c": "d"]), port: 80)
        let inconsistent = await withTaskGroup(of: Int.self) { group in
            group.addTask {
                for round in 0..<200 { holder.replace(policies: round % 2 == 0 ? denyAll : allowAll, endpoints: EndpointDirectory()) }
                return 0
            }
            for _ in 0..<3 {
                group.addTask {
                    var count = 0
                    for _ in 0..<2_000 {
                        let snapshot = holder.snapshot
                        let verdict = snapshot.evaluate(flow: flow)
                        // A snapshot is either the open one or the closed one, never a mix.
                        let isOpen = snapshot.policies.first?.name == "open"
                        if verdict.isAllowed != isOpen { count += 1 }
                    }
                    return count
                }
            }
            return await group.reduce(0, +)
        }
        #expect(inconsistent == 0)
        #expect(holder.snapshot.generation == 201)
    }
}
