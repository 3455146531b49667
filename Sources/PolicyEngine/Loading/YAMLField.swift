import Yams
import Foundation

/// A YAML node with the path that led to it: the only place that reads Yams nodes,
/// turning them into Swift values or a `PolicyError` that names file, line, column
/// and field path.
struct YAMLField {
    let node: Node
    let path: String
    let file: String
    /// Mark of the nearest node that has one (mappings may lack it in flow style).
    let fallbackMark: Mark?

    init(node: Node, path: String, file: String, fallbackMark: Mark? = nil) {
        self.node = node
        self.path = path
        self.file = file
        self.fallbackMark = node.mark ?? fallbackMark
    }

    func error(_ message: String) -> PolicyError {
        PolicyError(file: file, line: fallbackMark?.line ?? 0, column: fallbackMark?.column ?? 0,
                    fieldPath: path, message: message)
    }

    func child(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }

    var isNull: Bool {
        if case .scalar = node { return node.null != nil }
        return false
    }

    /// A short rendering of the node for messages.
    var shown: String {
        switch node {
        case .scalar(let scalar): return "\"\(scalar.string.prefix(80))\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    /// The node as a mapping whose keys must all be in `allowed` (nil = any key).
    func mapping(allowed: [String]?) throws(PolicyError) -> YAMLMapping {
        guard case .mapping(let mapping) = node else {
            if isNull { return YAMLMapping(owner: self, entries: [:], order: []) }
            throw error("expected a mapping, got \(shown)")
        }
        var entries: [String: (key: Node, value: Node)] = [:]
        var order: [String] = []
        for (key, value) in mapping {
            guard case .scalar(let keyScalar) = key else {
                let keyField = YAMLField(node: key, path: path, file: file, fallbackMark: fallbackMark)
                throw keyField.error("expected a string key, got \(keyField.shown)")
            }
            let name = keyScalar.string
            if let allowed, !allowed.contains(name) {
                let keyField = YAMLField(node: key, path: child(name), file: file, fallbackMark: fallbackMark)
                throw keyField.error("unknown field; expected one of: \(allowed.joined(separator: ", "))")
            }
            if entries[name] != nil {
                throw YAMLField(node: key, path: child(name), file: file, fallbackMark: fallbackMark).error("duplicate field")
            }
            entries[name] = (key, value)
            order.append(name)
        }
        return YAMLMapping(owner: self, entries: entries, order: order)
    }

    /// A scalar as text (numbers and booleans as written). Null is refused.
    func string() throws(PolicyError) -> String {
        guard case .scalar(let scalar) = node, !isNull else { throw error("expected a string, got \(isNull ? "null" : shown)") }
        return scalar.string
    }

    /// An integer scalar within `range`.
    func integer(in range: ClosedRange<Int>, what: String) throws(PolicyError) -> Int {
        guard case .scalar(let scalar) = node, let value = Int(scalar.string), range.contains(value) else {
            throw error("expected \(what) (\(range.lowerBound)-\(range.upperBound)), got \(shown)")
        }
        return value
    }

    func bool() throws(PolicyError) -> Bool {
        guard case .scalar(let scalar) = node else { throw error("expected true or false, got \(shown)") }
        switch scalar.string {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: throw error("expected true or false, got \(shown)")
        }
    }

    /// The node as a list (null counts as empty).
    func sequence() throws(PolicyError) -> [YAMLField] {
        if isNull { return [] }
        guard case .sequence(let sequence) = node else { throw error("expected a list, got \(shown)") }
        return sequence.enumerated().map { index, element in
            YAMLField(node: element, path: "\(path)[\(index)]", file: file, fallbackMark: element.mark ?? fallbackMark)
        }
    }

    func stringList() throws(PolicyError) -> [String] {
        var strings: [String] = []
        for element in try sequence() { strings.append(try element.string()) }
        return strings
    }
}

/// A mapping whose keys were checked, with typed accessors.
struct YAMLMapping {
    let owner: YAMLField
    let entries: [String: (key: Node, value: Node)]
    let order: [String]

    func has(_ name: String) -> Bool { entries[name] != nil }

    /// The field, or nil when absent or null.
    func optional(_ name: String) -> YAMLField? {
        guard let entry = entries[name] else { return nil }
        let field = YAMLField(node: entry.value, path: owner.child(name), file: owner.file,
                              fallbackMark: entry.value.mark ?? entry.key.mark ?? owner.fallbackMark)
        return field.isNull ? nil : field
    }

    /// The field, or nil when absent; null is returned as a field.
    func present(_ name: String) -> YAMLField? {
        guard let entry = entries[name] else { return nil }
        return YAMLField(node: entry.value, path: owner.child(name), file: owner.file,
                         fallbackMark: entry.value.mark ?? entry.key.mark ?? owner.fallbackMark)
    }

    func required(_ name: String, _ expected: String) throws(PolicyError) -> YAMLField {
        guard let field = optional(name) else {
            throw owner.error("missing required field \"\(name)\": expected \(expected)")
        }
        return field
    }

    /// A list field (absent or null = empty).
    func list(_ name: String) throws(PolicyError) -> [YAMLField] {
        try optional(name)?.sequence() ?? []
    }

    func string(_ name: String) throws(PolicyError) -> String? {
        try optional(name)?.string()
    }
}
