import Foundation
import PolicyEngine

/// One API object, converted once at the edge (from Foundation's JSON values) into what
/// the source keeps: nothing downstream reads JSON.
public enum ClusterObject: Sendable {
    case policy(PolicyObject)
    case pod(PodRecord)
    case namespace(NamespaceRecord)
    case node(NodeRecord)
}

/// A CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy object: its
/// rules, or the located reason it was rejected (whole: a bad object adds no rule).
public struct PolicyObject: Sendable {
    public var resource: KubernetesResource
    public var key: ObjectKey
    public var policies: Result<[Policy], PolicyError>
}

/// What of a Pod makes an endpoint.
public struct PodRecord: Sendable, Equatable {
    public var key: ObjectKey
    public var labels: [String: String]
    /// `spec.nodeName`: nil while the pod is not scheduled.
    public var nodeName: String?
    /// `spec.serviceAccountName` ("default" when absent, as the API server fills it in).
    public var serviceAccount: String
    /// `status.podIPs` (else `status.podIP`).
    public var addresses: [IPAddress]
    /// `spec.containers[].ports[]` with a name.
    public var namedPorts: [NamedPort]
    /// `spec.hostNetwork`: such a pod has the node's address and identity.
    public var hostNetwork: Bool
    /// `status.phase`: a Succeeded or Failed pod no longer owns its address.
    public var phase: String
}

public struct NamespaceRecord: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
}

public struct NodeRecord: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    /// `status.addresses[]` of type InternalIP or ExternalIP.
    public var addresses: [IPAddress]
}

/// Why an object could not be taken at all (no name, not an object): it is skipped and
/// reported; the other objects of the list or stream are taken.
public struct ObjectError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

extension ClusterObject {
    /// Converts one decoded JSON object of `resource`; the key and its resourceVersion.
    /// A policy whose spec does not load is returned with its error (it is reported and
    /// counted while it exists); an object without metadata.name throws.
    public static func convert(_ json: [String: Any], resource: KubernetesResource) throws(ObjectError) -> (ObjectKey, ClusterObject, String?) {
        guard let metadata = json["metadata"] as? [String: Any], let name = metadata["name"] as? String, !name.isEmpty else {
            throw ObjectError(description: "\(resource.kind) without metadata.name")
        }
        let namespace = metadata["namespace"] as? String ?? ""
        let key = ObjectKey(namespace: namespace, name: name)
        let version = metadata["resourceVersion"] as? String
        let labels = stringMap(metadata["labels"])
        switch resource {
        case .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies, .networkPolicies:
            return (key, .policy(policy(json, resource: resource, key: key)), version)
        case .pods:
            let spec = json["spec"] as? [String: Any] ?? [:]
            let status = json["status"] as? [String: Any] ?? [:]
            var addresses: [IPAddress] = []
            for entry in status["podIPs"] as? [[String: Any]] ?? [] {
                if let text = entry["ip"] as? String, let address = IPAddress(text) { addresses.append(address) }
            }
            if addresses.isEmpty, let text = status["podIP"] as? String, let address = IPAddress(text) { addresses.append(address) }
            var namedPorts: [NamedPort] = []
            for container in spec["containers"] as? [[String: Any]] ?? [] {
                for port in container["ports"] as? [[String: Any]] ?? [] {
                    guard let portName = port["name"] as? String, let number = port["containerPort"] as? Int,
                          (1...65535).contains(number) else { continue }
                    let transport = TransportProtocol(rawValue: (port["protocol"] as? String ?? "TCP").uppercased()) ?? .tcp
                    namedPorts.append(NamedPort(name: portName, port: UInt16(number), transport: transport))
                }
            }
            return (key, .pod(PodRecord(key: key, labels: labels, nodeName: spec["nodeName"] as? String,
                                        serviceAccount: spec["serviceAccountName"] as? String ?? spec["serviceAccount"] as? String ?? "default",
                                        addresses: addresses, namedPorts: namedPorts,
                                        hostNetwork: spec["hostNetwork"] as? Bool ?? false,
                                        phase: status["phase"] as? String ?? "")), version)
        case .namespaces:
            return (key, .namespace(NamespaceRecord(name: name, labels: labels)), version)
        case .nodes:
            let status = json["status"] as? [String: Any] ?? [:]
            var addresses: [IPAddress] = []
            for entry in status["addresses"] as? [[String: Any]] ?? [] {
                guard let type = entry["type"] as? String, type == "InternalIP" || type == "ExternalIP",
                      let text = entry["address"] as? String, let address = IPAddress(text) else { continue }
                addresses.append(address)
            }
            return (key, .node(NodeRecord(name: name, labels: labels, addresses: addresses)), version)
        }
    }

    /// The policy loader reads the object as the JSON text it came as (JSON is YAML), so
    /// the API and policy files share one conversion and one validation. `kind` and
    /// `apiVersion` are set from the resource: list items of built-in kinds omit them.
    static func policy(_ json: [String: Any], resource: KubernetesResource, key: ObjectKey) -> PolicyObject {
        var object = json
        object["kind"] = resource.kind
        object["apiVersion"] = resource.apiVersion
        // Server-side bookkeeping the policy does not need (and that only makes the text long).
        if var metadata = object["metadata"] as? [String: Any] {
            metadata["managedFields"] = nil
            metadata["annotations"] = nil
            object["metadata"] = metadata
        }
        let place = "\(resource.kind) \(key)"
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]),
              let text = String(data: data, encoding: .utf8) else {
            return PolicyObject(resource: resource, key: key, policies: .failure(
                PolicyError(file: place, line: 0, column: 0, fieldPath: "", message: "cannot be written as JSON")))
        }
        let loaded = PolicyLoader.load(text: text, file: place)
        if let error = loaded.errors.first {
            // Lines and columns would point into the text written here, not into anything the
            // user wrote: the object and the field path locate the problem.
            let located = PolicyError(file: place, line: 0, column: 0, fieldPath: error.fieldPath, message: error.message)
            return PolicyObject(resource: resource, key: key, policies: .failure(located))
        }
        return PolicyObject(resource: resource, key: key, policies: .success(loaded.policies))
    }

    static func stringMap(_ value: Any?) -> [String: String] {
        guard let map = value as? [String: Any] else { return [:] }
        var result: [String: String] = [:]
        for (key, value) in map { if let text = value as? String { result[key] = text } }
        return result
    }
}

/// Where this node stands in the cluster, for turning objects into endpoints.
public struct NodeContext: Sendable, Equatable {
    /// This node's name (`spec.nodeName` of its pods).
    public var nodeName: String
    /// The cluster's name, as the `io.cilium.k8s.policy.cluster` label.
    public var clusterName: String
    public init(nodeName: String, clusterName: String = "default") {
        self.nodeName = nodeName
        self.clusterName = clusterName
    }
}

/// A policy object that was rejected, for the log and the metrics.
public struct RejectedObject: Sendable, Equatable, CustomStringConvertible {
    public var kind: String
    public var key: ObjectKey
    public var error: PolicyError
    public var description: String { "\(kind) \(key) rejected: \(error)" }
}

/// Every object of the watched resources as last listed or watched, by resource and key.
public struct ClusterState: Sendable {
    public private(set) var objects: [KubernetesResource: [ObjectKey: ClusterObject]] = [:]

    public init() {}

    /// Replaces everything of `resource` with a complete list (a relist: objects not in it are gone).
    public mutating func replace(_ resource: KubernetesResource, with listed: [ObjectKey: ClusterObject]) {
        objects[resource] = listed
    }

    public mutating func upsert(_ resource: KubernetesResource, key: ObjectKey, object: ClusterObject) {
        objects[resource, default: [:]][key] = object
    }

    public mutating func remove(_ resource: KubernetesResource, key: ObjectKey) {
        objects[resource]?[key] = nil
    }

    /// The rules of every valid policy object, and every rejected one with its error.
    public func policies() -> (policies: [Policy], rejected: [RejectedObject]) {
        var policies: [Policy] = []
        var rejected: [RejectedObject] = []
        for resource in KubernetesResource.allCases where resource.isPolicy {
            for (key, object) in (objects[resource] ?? [:]).sorted(by: { $0.key < $1.key }) {
                guard case .policy(let policy) = object else { continue }
                switch policy.policies {
                case .success(let loaded): policies += loaded
                case .failure(let error): rejected.append(RejectedObject(kind: resource.kind, key: key, error: error))
                }
            }
        }
        return (policies, rejected)
    }

    /// The endpoint directory: every pod with an address (local when on `context.nodeName`,
    /// else remote), this node's addresses as `host`, other nodes' as `remote-node`.
    public func endpoints(context: NodeContext) -> EndpointDirectory {
        var namespaceLabels: [String: [String: String]] = [:]
        for case .namespace(let namespace) in (objects[.namespaces] ?? [:]).values { namespaceLabels[namespace.name] = namespace.labels }
        var directory = EndpointDirectory()
        for case .node(let node) in (objects[.nodes] ?? [:]).sorted(by: { $0.key < $1.key }).map(\.value) {
            let labels = node.labels.sorted { $0.key < $1.key }.map { Label(source: Label.kubernetesSource, key: $0.key, value: $0.value) }
            let kind: ReservedIdentity = node.name == context.nodeName ? .host : .remoteNode
            for address in node.addresses {
                directory.add(.reserved(kind, labels: labels), prefix: CIDR(network: address, prefixLength: address.bitWidth))
            }
        }
        for case .pod(let pod) in (objects[.pods] ?? [:]).sorted(by: { $0.key < $1.key }).map(\.value) {
            guard !pod.hostNetwork, pod.phase != "Succeeded", pod.phase != "Failed", !pod.addresses.isEmpty else { continue }
            let identity = Self.identity(of: pod, namespaceLabels: namespaceLabels[pod.key.namespace] ?? [:], context: context)
            for address in pod.addresses {
                directory.add(identity, prefix: CIDR(network: address, prefixLength: address.bitWidth))
            }
        }
        return directory
    }

    /// A pod's identity: its labels plus the labels Cilium derives (all with source `k8s`):
    /// `io.kubernetes.pod.namespace`, `io.cilium.k8s.namespace.labels.<key>` per namespace
    /// label, `io.cilium.k8s.policy.serviceaccount` and `io.cilium.k8s.policy.cluster`.
    public static func identity(of pod: PodRecord, namespaceLabels: [String: String], context: NodeContext) -> Identity {
        var labels = pod.labels.map { Label(source: Label.kubernetesSource, key: $0.key, value: $0.value) }
        labels += namespaceLabels.map {
            Label(source: Label.kubernetesSource, key: Label.namespaceLabelPrefix + $0.key, value: $0.value)
        }
        labels.append(Label(source: Label.kubernetesSource, key: serviceAccountKey, value: pod.serviceAccount))
        labels.append(Label(source: Label.kubernetesSource, key: clusterKey, value: context.clusterName))
        return Identity(labels: labels, namespace: pod.key.namespace, podName: pod.key.name, namedPorts: pod.namedPorts,
                        isOnAnotherNode: pod.nodeName != context.nodeName)
    }

    /// Cilium's label for a pod's service account.
    public static let serviceAccountKey = "io.cilium.k8s.policy.serviceaccount"
    /// Cilium's label for the cluster a pod belongs to.
    public static let clusterKey = "io.cilium.k8s.policy.cluster"
}
