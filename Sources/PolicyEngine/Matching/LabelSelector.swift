/// A Kubernetes LabelSelector after loading: `matchLabels` and `matchExpressions`
/// as one list of requirements, all of which must hold ("The requirements are ANDed").
///
/// Keys may carry a Cilium source prefix (`k8s:app`, `reserved:host`); a key without
/// one matches a label of any source.
public struct LabelSelector: Hashable, Sendable, CustomStringConvertible {
    /// One requirement: Kubernetes `key operator values`.
    public struct Requirement: Hashable, Sendable, CustomStringConvertible {
        public enum Operator: String, Hashable, Sendable { case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist" }
        /// The source prefix (`k8s`, `reserved`, ...) or nil for any source.
        public let source: String?
        public let key: String
        public let `operator`: Operator
        public let values: [String]

        public init(source: String?, key: String, operator: Operator, values: [String]) {
            self.source = source
            self.key = key
            self.operator = `operator`
            self.values = values
        }

        /// Parses `[source:]key` into a requirement.
        public init(selectorKey: String, operator: Operator, values: [String]) {
            let (source, key) = Label.splitSource(selectorKey)
            self.init(source: source == "any" ? nil : source, key: key, operator: `operator`, values: values)
        }

        func matches(_ labels: LabelSet) -> Bool {
            // Evaluated for every peer of every flow: walk the labels, allocate nothing.
            var valueListed = false
            var present = false
            for label in labels.labels where label.key == key && (source == nil || source == "any" || source == label.source) {
                present = true
                if values.contains(label.value) {
                    valueListed = true
                    break
                }
            }
            switch self.operator {
            case .in: return valueListed
            case .notIn: return !valueListed
            case .exists: return present
            case .doesNotExist: return !present
            }
        }

        public var description: String {
            let name = source.map { "\($0):\(key)" } ?? key
            switch self.operator {
            case .in where values.count == 1: return "\(name)=\(values[0])"
            case .in, .notIn: return "\(name) \(self.operator.rawValue) (\(values.joined(separator: ",")))"
            case .exists: return name
            case .doesNotExist: return "!\(name)"
            }
        }
    }

    public let requirements: [Requirement]

    public init(requirements: [Requirement]) {
        self.requirements = requirements
    }

    /// The selector that matches every label set (`{}`).
    public static let everything = LabelSelector(requirements: [])

    public func matches(_ labels: LabelSet) -> Bool {
        requirements.allSatisfy { $0.matches(labels) }
    }

    /// True when a requirement names `reserved:` labels: such a selector can pick
    /// reserved identities (host, world, ...), others pick only cluster endpoints.
    public var namesReservedLabels: Bool {
        requirements.contains { $0.source == Label.reservedSource }
    }

    /// True when a requirement names the pod namespace label, which turns off
    /// the implicit scoping of a namespaced policy's selectors.
    public var namesNamespace: Bool {
        requirements.contains { $0.key == Label.podNamespaceKey && ($0.source == nil || $0.source == Label.kubernetesSource) }
    }

    /// This selector restricted to `namespace` (added as `k8s:io.kubernetes.pod.namespace=NS`).
    func scoped(to namespace: String) -> LabelSelector {
        LabelSelector(requirements: requirements + [Requirement(source: Label.kubernetesSource, key: Label.podNamespaceKey, operator: .in, values: [namespace])])
    }

    public var description: String {
        requirements.isEmpty ? "{}" : requirements.map(\.description).joined(separator: ",")
    }
}
