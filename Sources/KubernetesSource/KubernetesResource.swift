/// The API resources the Kubernetes source lists and watches (and nothing else: the RBAC
/// role in deploy/kubernetes grants get/list/watch on exactly these).
public enum KubernetesResource: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    case ciliumNetworkPolicies = "ciliumnetworkpolicies"
    case ciliumClusterwideNetworkPolicies = "ciliumclusterwidenetworkpolicies"
    case networkPolicies = "networkpolicies"
    case pods
    case namespaces
    case nodes

    /// The collection's path across all namespaces (`/api/v1/pods`, `/apis/cilium.io/v2/...`).
    public var collectionPath: String {
        switch self {
        case .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies: return "/apis/cilium.io/v2/\(rawValue)"
        case .networkPolicies: return "/apis/networking.k8s.io/v1/\(rawValue)"
        case .pods, .namespaces, .nodes: return "/api/v1/\(rawValue)"
        }
    }

    /// `kind` of the objects (list items of built-in kinds omit it on the wire).
    public var kind: String {
        switch self {
        case .ciliumNetworkPolicies: return "CiliumNetworkPolicy"
        case .ciliumClusterwideNetworkPolicies: return "CiliumClusterwideNetworkPolicy"
        case .networkPolicies: return "NetworkPolicy"
        case .pods: return "Pod"
        case .namespaces: return "Namespace"
        case .nodes: return "Node"
        }
    }

    /// `apiVersion` of the objects.
    public var apiVersion: String {
        switch self {
        case .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies: return "cilium.io/v2"
        case .networkPolicies: return "networking.k8s.io/v1"
        case .pods, .namespaces, .nodes: return "v1"
        }
    }

    public var isPolicy: Bool {
        self == .ciliumNetworkPolicies || self == .ciliumClusterwideNetworkPolicies || self == .networkPolicies
    }

    public var description: String { kind }
}

/// An object's place: namespace (empty for cluster-scoped kinds) and name.
public struct ObjectKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var namespace: String
    public var name: String
    public init(namespace: String, name: String) { self.namespace = namespace; self.name = name }
    public var description: String { namespace.isEmpty ? name : "\(namespace)/\(name)" }
    public static func < (lhs: ObjectKey, rhs: ObjectKey) -> Bool { (lhs.namespace, lhs.name) < (rhs.namespace, rhs.name) }
}
