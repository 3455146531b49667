/// The outcome of one HTTP rule against one request.
struct HTTPRuleOutcome {
    var matched = false
    var headerActions: [HeaderAction] = []
    var logMessages: [String] = []
}

extension HTTPRule {
    /// Evaluates the rule: method, path, host (anchored regexes), `headers` (exact or
    /// presence) and `headerMatches` with their mismatch actions. Fields are ANDed.
    func evaluate(_ request: HTTPRequestFacts) -> HTTPRuleOutcome {
        var outcome = HTTPRuleOutcome()
        if let method, !method.matches(request.method) { return outcome }
        if let path, !path.matches(request.path) { return outcome }
        if let host, !host.matches(request.host ?? "") { return outcome }
        for header in headers {
            let values = request.values(of: header.name)
            if let expected = header.value {
                if !values.contains(expected) { return outcome }
            } else if values.isEmpty {
                return outcome
            }
        }
        for match in headerMatches {
            let values = request.values(of: match.name)
            let satisfied = match.value.map { values.contains($0.value) } ?? !values.isEmpty
            if satisfied { continue }
            switch match.mismatch {
            case .deny:
                return outcome
            case .log:
                outcome.logMessages.append("header \(match.name) mismatch: expected \(match.value.map { "\"\($0)\"" } ?? "presence")")
            case .add:
                outcome.headerActions.append(.add(name: match.name, value: match.value!))
            case .delete:
                outcome.headerActions.append(.remove(name: match.name))
            case .replace:
                outcome.headerActions.append(.replace(name: match.name, value: match.value!))
            }
        }
        outcome.matched = true
        return outcome
    }
}

/// The HTTP rules of one port, indexed so a request only runs the regexes of rules
/// that can match it: rules are bucketed by literal method (`GET`) or "any method",
/// then by the literal prefix of their path regex (`/api/v1/products.*` -> `/api/v1/products`).
/// A request looks up its method's bucket and the any-method bucket, and in each
/// probes one hash table per distinct prefix length, so the cost grows with the
/// number of distinct prefix lengths, not with the number of rules.
struct HTTPRuleIndex: Sendable {
    struct Item: Sendable {
        /// Index of the port entry (in the direction policy) that owns the rule.
        let entry: Int
        let rule: HTTPRule
    }

    struct PrefixTable: Sendable {
        var byPrefix: [String: [Int]] = [:]
        var lengths: [Int] = []

        mutating func insert(_ item: Int, prefix: String) {
            if byPrefix[prefix] == nil {
                let length = prefix.utf8.count
                if !lengths.contains(length) { lengths.append(length); lengths.sort() }
            }
            byPrefix[prefix, default: []].append(item)
        }

        func collect(path: String, into result: inout [Int]) {
            let bytes = path.utf8
            for length in lengths {
                if length > bytes.count { break }
                let key = length == 0 ? "" : String(decoding: bytes.prefix(length), as: UTF8.self)
                if let items = byPrefix[key] { result += items }
            }
        }
    }

    let items: [Item]
    private var byMethod: [String: PrefixTable] = [:]
    private var anyMethod = PrefixTable()

    init(items: [Item]) {
        self.items = items
        for (position, item) in items.enumerated() {
            let prefix = item.rule.path.map { Self.literalPrefix(of: $0.source) } ?? ""
            if let method = item.rule.method, let literal = Self.literalMethod(method.source) {
                byMethod[literal, default: PrefixTable()].insert(position, prefix: prefix)
            } else {
                anyMethod.insert(position, prefix: prefix)
            }
        }
    }

    /// Items whose method bucket and path prefix admit the request, in item order.
    func candidates(method: String, path: String) -> [Int] {
        var result: [Int] = []
        byMethod[method]?.collect(path: path, into: &result)
        anyMethod.collect(path: path, into: &result)
        if result.count > 1 { result.sort() }
        return result
    }

    /// A method pattern made only of letters matches exactly that method.
    static func literalMethod(_ pattern: String) -> String? {
        !pattern.isEmpty && pattern.utf8.allSatisfy({ (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) }) ? pattern : nil
    }

    /// The literal text every match of `pattern` starts with: the characters before the
    /// first metacharacter, minus the last one if a quantifier follows it. Conservative:
    /// a pattern with `|` anywhere, or starting with a group or flag, has prefix "".
    static func literalPrefix(of pattern: String) -> String {
        if pattern.contains("|") { return "" }
        var prefix: [Character] = []
        var characters = Substring(pattern)
        if characters.hasPrefix("^") { characters = characters.dropFirst() }
        for character in characters {
            if "\\.^$|?*+()[]{}".contains(character) || !character.isASCII {
                if "?*{+".contains(character), !prefix.isEmpty { prefix.removeLast() }
                break
            }
            prefix.append(character)
        }
        return String(prefix)
    }
}
