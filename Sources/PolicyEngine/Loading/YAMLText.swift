import Yams

/// YAML (and JSON) text turned into Yams nodes under limits, so that no input can make
/// loading trap, hang or exhaust memory; every refusal is a located `PolicyError`.
///
/// - Nesting: libyaml refuses more than 1,000 nested collections ("Maximum nesting
///   level reached"), which bounds the recursion of Yams' composer and of our readers.
/// - Aliases: Yams resolves `*alias` to the anchored node itself, so a few lines of
///   anchors that alias anchors describe a tree of billions of nodes. Two places would
///   walk that tree: our readers (bounded per document by `maximumAliasExpansion`, see
///   `checkAliasExpansion`), and Yams' composer itself, which hashes every mapping key
///   to find duplicates, so an alias inside a non-scalar key is hashed in full before we
///   see the document. Policies only have string keys, so text that may hold an alias
///   in a complex key is refused before composing (`refuseAliasedComplexKeys`).
enum YAMLText {
    /// Nodes a document may reach through aliases (each use counts its whole subtree).
    static let maximumAliasExpansion = 100_000

    /// Composes every document of `text`, calling `body` with each non-empty one (or the
    /// error that stopped it); a syntax error ends the stream, as in libyaml.
    static func forEachDocument(_ text: String, file: String, _ body: (Result<Node, PolicyError>) -> Void) {
        do throws(PolicyError) {
            try refuseAliasedComplexKeys(text, file: file)
        } catch {
            body(.failure(error))
            return
        }
        let documents: YamlSequence<Node>
        do {
            documents = try Yams.compose_all(yaml: text)
        } catch {
            body(.failure(PolicyLoader.yamlError(error, file: file)))
            return
        }
        var iterator = documents
        while let document = iterator.next() {
            do throws(PolicyError) {
                try checkAliasExpansion(document, file: file)
                body(.success(document))
            } catch {
                body(.failure(error))
            }
        }
        if let error = iterator.error {
            body(.failure(PolicyLoader.yamlError(error, file: file)))
        }
    }

    /// The first document of `text` (nil when there is none), under the same limits.
    static func firstDocument(_ text: String, file: String) throws(PolicyError) -> Node? {
        try refuseAliasedComplexKeys(text, file: file)
        let parser: Parser
        let node: Node?
        do {
            parser = try Parser(yaml: text)
            node = try parser.singleRoot()
        } catch {
            throw PolicyLoader.yamlError(error, file: file)
        }
        if let node { try checkAliasExpansion(node, file: file) }
        // Nodes hold their anchors weakly: the parser owns them until the walk is done.
        withExtendedLifetime(parser) {}
        return node
    }

    /// Refuses a document that reaches more than `maximumAliasExpansion` nodes through
    /// aliases. A node whose anchor was already met is an alias use (or a redefinition of
    /// the anchor, counted the same: the limit is generous). The walk stops at the limit,
    /// so its cost is the document's own size plus the limit, never the expansion.
    static func checkAliasExpansion(_ document: Node, file: String) throws(PolicyError) {
        var seenAnchors = Set<String>()
        var expanded = 0
        var exceeded = false
        func walk(_ node: Node, throughAlias: Bool) {
            if exceeded { return }
            var throughAlias = throughAlias
            if let anchor = node.anchor?.rawValue, !seenAnchors.insert(anchor).inserted { throughAlias = true }
            if throughAlias {
                expanded += 1
                if expanded > maximumAliasExpansion { exceeded = true; return }
            }
            switch node {
            case .scalar, .alias: return
            case .sequence(let sequence):
                for element in sequence { walk(element, throughAlias: throughAlias) }
            case .mapping(let mapping):
                for (key, value) in mapping {
                    walk(key, throughAlias: throughAlias)
                    walk(value, throughAlias: throughAlias)
                }
            }
        }
        walk(document, throughAlias: false)
        if exceeded {
            let mark = document.mark
            throw PolicyError(file: file, line: mark?.line ?? 0, column: mark?.column ?? 0, fieldPath: "",
                              message: "invalid YAML: aliases expand to more than \(maximumAliasExpansion) nodes; expected a document without excessive aliasing")
        }
    }

    /// Refuses text in which an alias may stand in or under a non-scalar mapping key,
    /// before Yams composes (and hashes) it. The scan over-approximates libyaml's tokens,
    /// quoted or not: an alias is `*` followed by a name byte (`[0-9A-Za-z_-]`, libyaml's
    /// anchor names) where a node may start (after a blank, a line break, one of `[{,:`
    /// or a non-ASCII byte such as a byte-order mark or a YAML 1.1 line break); a complex
    /// key is `?` followed by a blank or the end (an explicit key), or `]`, `}` or an alias
    /// followed on its line by blanks and `:` (an implicit key). Only text with both is
    /// refused: policies have string keys, so a valid policy is refused only if its
    /// scalars look like both (such as a description with `? ` and ` *word`).
    static func refuseAliasedComplexKeys(_ text: String, file: String) throws(PolicyError) {
        var text = text
        let found: (alias: Position, complexKey: Position)? = text.withUTF8 { bytes in
            var alias: Position?
            var complexKey: Position?
            var position = Position(line: 1, column: 1)
            var index = 0
            /// True when a `:` follows `index` after blanks on the same line.
            func colonFollows(_ index: Int) -> Bool {
                var next = index
                while next < bytes.count, bytes[next] == UInt8(ascii: " ") || bytes[next] == UInt8(ascii: "\t") { next += 1 }
                return next < bytes.count && bytes[next] == UInt8(ascii: ":")
            }
            while index < bytes.count {
                let byte = bytes[index]
                let previous = index > 0 ? bytes[index - 1] : UInt8(ascii: "\n")
                switch byte {
                case UInt8(ascii: "*") where mayStartNode(after: previous) && index + 1 < bytes.count && DNSName.isLabelByte(bytes[index + 1]):
                    alias = alias ?? position
                    var end = index + 1
                    while end < bytes.count, DNSName.isLabelByte(bytes[end]) { end += 1 }
                    if colonFollows(end) { complexKey = complexKey ?? position }
                case UInt8(ascii: "?") where index + 1 == bytes.count || mayStartNode(after: bytes[index + 1]):
                    complexKey = complexKey ?? position
                case UInt8(ascii: "]"), UInt8(ascii: "}"):
                    if colonFollows(index + 1) { complexKey = complexKey ?? position }
                default:
                    break
                }
                if byte == UInt8(ascii: "\n") {
                    position = Position(line: position.line + 1, column: 1)
                } else if byte & 0xC0 != 0x80 {
                    position.column += 1  // columns count characters, not UTF-8 continuation bytes
                }
                if alias != nil, complexKey != nil { break }
                index += 1
            }
            guard let alias, let complexKey else { return nil }
            return (alias, complexKey)
        }
        guard let found else { return }
        let later = found.alias < found.complexKey ? found.complexKey : found.alias
        throw PolicyError(file: file, line: later.line, column: later.column, fieldPath: "",
                          message: "invalid YAML: an alias may be used in a non-scalar mapping key (alias at \(found.alias), complex key at \(found.complexKey)); expected string keys, and aliases only as values")
    }

    struct Position: Comparable, CustomStringConvertible {
        var line: Int
        var column: Int
        static func < (lhs: Position, rhs: Position) -> Bool { (lhs.line, lhs.column) < (rhs.line, rhs.column) }
        var description: String { "\(line):\(column)" }
    }

    /// True when a YAML node may start right after `byte`.
    private static func mayStartNode(after byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"),
             UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","), UInt8(ascii: ":"):
            return true
        default:
            return byte >= 0x80
        }
    }
}
