/// The outcome of one HTTP rule against one request.
struct HTTPRuleOutcome {
    var matched = false
    var headerActions: [HeaderAction] = []
    var logMessages: [String] = []
}

extension HTTPRule {
    /// Evaluates the rule: method, path, host (anchored regexes), `headers` (exact or
    /// presence) and `headerMatches` with their mismatch actions. Fields are ANDed.
    /// `isMethodKnown`/`isPathKnown`: the caller has already established that the
    /// method (a literal equal to the request's) or the path matches.
    func evaluate(_ request: HTTPRequestFacts, isMethodKnown: Bool = false, isPathKnown: Bool = false) -> HTTPRuleOutcome {
        var outcome = HTTPRuleOutcome()
        if !isMethodKnown, let method, !method.matches(request.method) { return outcome }
        if !isPathKnown, let path, !path.matches(request.path) { return outcome }
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

