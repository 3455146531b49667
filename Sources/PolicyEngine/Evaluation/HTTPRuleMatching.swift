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
    ///
    /// A fact the request does not have (`HTTPRequestFacts` with a nil method, path or
    /// host) fails every rule field that tests it. A header sent several times is
    /// compared as its values joined with `,` (`HTTPRequestFacts.value(of:)`), so
    /// `headers: ["X-Token: secret"]` does not match `X-Token: wrong` + `X-Token: secret`;
    /// a bare `Name` (presence) is satisfied by any copy.
    func evaluate(_ request: HTTPRequestFacts, isMethodKnown: Bool = false, isPathKnown: Bool = false) -> HTTPRuleOutcome {
        var outcome = HTTPRuleOutcome()
        // The patterns are tested where they are (binding one with `if let` would count a reference).
        if !isMethodKnown, method != nil {
            guard let requestMethod = request.method, method.unsafelyUnwrapped.matches(requestMethod) else { return outcome }
        }
        if !isPathKnown, path != nil {
            guard let requestPath = request.path, path.unsafelyUnwrapped.matches(requestPath) else { return outcome }
        }
        if host != nil {
            guard let requestHost = request.host, host.unsafelyUnwrapped.matches(requestHost) else { return outcome }
        }
        for header in headers {
            if let expected = header.value {
                // "Name: value" is an exact match of the whole (combined) value.
                guard request.value(of: header.name) == expected else { return outcome }
            } else if !request.contains(header: header.name) {
                return outcome
            }
        }
        for match in headerMatches {
            let satisfied: Bool
            if let expected = match.value {
                satisfied = request.value(of: match.name) == expected.value
            } else {
                satisfied = request.contains(header: match.name)
            }
            if satisfied { continue }
            switch match.mismatch {
            case .deny:
                return outcome
            case .log:
                outcome.logMessages.append("header \(match.name) mismatch: expected \(match.value.map { "\"\($0)\"" } ?? "presence")")
            case .add(let value):
                outcome.headerActions.append(.add(name: match.name, value: value))
            case .delete:
                // Every copy goes: the proxy removes fields by name.
                outcome.headerActions.append(.remove(name: match.name))
            case .replace(let value):
                // Every copy is replaced by the one value.
                outcome.headerActions.append(.replace(name: match.name, value: value))
            }
        }
        outcome.matched = true
        return outcome
    }
}
