/// One label of an identity: `source:key=value`, e.g. `k8s:app=frontend`,
/// `reserved:world=`. Sources follow Cilium: `k8s`, `reserved`, `cidr`, `fqdn`, ...
public struct Label: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let source: String
    public let key: String
    public let value: String

    public init(source: String, key: String, value: String) {
        self.source = source
        self.key = key
        self.value = value
    }

    /// Parses `[source:]key[=value]`; the source defaults to `defaultSource`.
    public init(parsing text: String, defaultSource: String = Label.kubernetesSource) {
        let keyPart: Substring
        let value: Substring
        if let equals = text.firstIndex(of: "=") {
            keyPart = text[..<equals]
            value = text[text.index(after: equals)...]
        } else {
            keyPart = text[...]
            value = ""
        }
        let (source, key) = Label.splitSource(String(keyPart))
        self.init(source: source ?? defaultSource, key: key, value: String(value))
    }

    /// Splits `source:key` at the first colon; nil source when there is none.
    static func splitSource(_ text: String) -> (source: String?, key: String) {
        guard let colon = text.firstIndex(of: ":") else { return (nil, text) }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    public var description: String { value.isEmpty ? "\(source):\(key)" : "\(source):\(key)=\(value)" }

    public static func < (lhs: Label, rhs: Label) -> Bool {
        (lhs.source, lhs.key, lhs.value) < (rhs.source, rhs.key, rhs.value)
    }

    public static let kubernetesSource = "k8s"
    public static let reservedSource = "reserved"
    /// The label Kubernetes pods carry for their namespace (Cilium's `k8s:io.kubernetes.pod.namespace`).
    public static let podNamespaceKey = "io.kubernetes.pod.namespace"
    /// Prefix under which Cilium exposes namespace labels on pods.
    public static let namespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
    /// The label key Kubernetes sets on every namespace to its own name.
    public static let namespaceNameLabel = "kubernetes.io/metadata.name"
}

/// An ordered set of labels with lookups by key.
///
/// The hash is computed once: a snapshot finds an endpoint's compiled policy by its
/// labels, and hashing every label string on each lookup dominated small evaluations.
public struct LabelSet: Hashable, Sendable, CustomStringConvertible {
    public let labels: [Label]
    private let hashCode: Int

    public init(_ labels: [Label]) {
        self.labels = Array(Set(labels)).sorted()
        var hasher = Hasher()
        hasher.combine(self.labels)
        hashCode = hasher.finalize()
    }

    public static func == (lhs: LabelSet, rhs: LabelSet) -> Bool {
        lhs.hashCode == rhs.hashCode && lhs.labels == rhs.labels
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(hashCode)
    }

    /// Labels whose key equals `key` and whose source is `source` (any source when nil or "any").
    func values(source: String?, key: String) -> [String] {
        labels.compactMap { label in
            guard label.key == key else { return nil }
            if let source, source != "any", source != label.source { return nil }
            return label.value
        }
    }

    /// True when some label has this source (any when nil or "any") and key.
    func contains(source: String?, key: String) -> Bool {
        labels.contains { $0.key == key && (source == nil || source == "any" || source == $0.source) }
    }

    public var description: String { labels.map(\.description).joined(separator: ",") }
}
