import Foundation
import KubernetesSource
import PolicyEngine
import Proxy

extension PolicyEnforcement {
    /// The Kubernetes source `settings` describe: the API server's address and
    /// credentials (kubeconfig, else in-cluster), this node's name, the limits.
    static func kubernetesSource(_ settings: KubernetesSourceConfiguration, configFile: String,
                                 report: @escaping @Sendable (String) -> Void) throws -> KubernetesSource {
        let access: APIServerAccess
        if let kubeconfig = settings.kubeconfig {
            access = try APIServerAccess.kubeconfig(file: resolve(configFile: configFile)(kubeconfig), context: settings.context)
        } else {
            access = try APIServerAccess.inCluster()
        }
        guard let nodeName = settings.nodeName ?? ProcessInfo.processInfo.environment["NODE_NAME"], !nodeName.isEmpty else {
            throw PolicyFiles.InputError(description: "kubernetes: no node name: set policy.kubernetes.nodeName, or NODE_NAME "
                                         + "(deploy/kubernetes sets it from the downward API's spec.nodeName)")
        }
        var limits = APILimits()
        limits.maximumObjects = settings.maxObjects
        limits.maximumListBytes = settings.maxResponseBytes
        limits.maximumEventBytes = min(settings.maxResponseBytes, limits.maximumEventBytes)
        let client = try APIClient(access: access, limits: limits)
        report("kubernetes: API server \(access.serverURL) (\(access.origin))")
        return KubernetesSource(context: NodeContext(nodeName: nodeName, clusterName: settings.clusterName),
                                transport: client, limits: limits, report: report)
    }

    /// `sluice run --kubernetes --check`: connects, lists every resource once, compiles
    /// what it found, and says so; throws on the first failure. Rejected policy objects
    /// are listed (and make the check fail).
    public static func checkKubernetes(configuration: ProxyConfiguration, configFile: String) throws -> String {
        guard let settings = configuration.policy?.kubernetes else {
            throw PolicyFiles.InputError(description: "--kubernetes needs 'policy: {source: kubernetes}' in the configuration")
        }
        let source = try kubernetesSource(settings, configFile: configFile, report: { _ in })
        try source.listOnce()
        let (policies, endpoints, rejected) = source.current()
        let snapshot = PolicySnapshot(policies: policies, endpoints: endpoints)
        let counts = source.objectCounts
        let local = endpoints.entries.filter { $0.identity.isClusterEndpoint && !$0.identity.isOnAnotherNode }.count
        var lines = ["kubernetes: listed "
                     + KubernetesResource.allCases.map { "\(counts[$0] ?? 0) \($0.rawValue)" }.joined(separator: ", "),
                     "node \(source.context.nodeName): \(local) local endpoint address(es), "
                     + "\(endpoints.entries.count - local) other address(es); \(policies.count) policies compiled "
                     + "(\(snapshot.compiledEndpointCount) endpoint policies)"]
        if !rejected.isEmpty {
            lines += rejected.map(\.description)
            throw PolicyFiles.InputError(description: (lines + ["\(rejected.count) policy object(s) rejected"]).joined(separator: "\n"))
        }
        return lines.joined(separator: "\n")
    }

    /// The Kubernetes part of `sluice status`.
    func kubernetesStatus() -> JSONObject? {
        guard let kubernetes else { return nil }
        var status = JSONObject()
        status["node"] = .string(kubernetes.context.nodeName)
        status["synchronized"] = .bool(kubernetes.isSynchronized)
        let counts = kubernetes.objectCounts
        var objects = JSONObject()
        for resource in KubernetesResource.allCases { objects[resource.rawValue] = .unsigned(UInt64(counts[resource] ?? 0)) }
        status["objects"] = .object(objects)
        status["rejected"] = .array(kubernetes.rejected().map { rejected in
            var entry = JSONObject()
            entry["kind"] = .string(rejected.kind)
            entry["namespace"] = .string(rejected.key.namespace)
            entry["name"] = .string(rejected.key.name)
            entry["error"] = .string(rejected.error.description)
            return .object(entry)
        })
        return status
    }

    /// Sluice's Kubernetes series: objects held, changes seen, and every rejected policy
    /// object with its namespace, name and located error.
    func kubernetesMetricFamilies() -> [MetricFamily] {
        guard let kubernetes else { return [] }
        var objects = MetricFamily("sluice_kubernetes_objects", .gauge, "Objects held from the API server, per resource")
        var changes = MetricFamily("sluice_kubernetes_changes_total", .counter, "Lists and watch events applied, per resource")
        let counts = kubernetes.objectCounts
        let changeCounts = kubernetes.changes
        for resource in KubernetesResource.allCases {
            objects.add([("resource", resource.rawValue)], Double(counts[resource] ?? 0))
            changes.add([("resource", resource.rawValue)], Double(changeCounts[resource] ?? 0))
        }
        var synchronized = MetricFamily("sluice_kubernetes_synchronized", .gauge, "1 once every resource was listed, else 0")
        synchronized.add([], kubernetes.isSynchronized ? 1.0 : 0.0)
        var rejected = MetricFamily("sluice_kubernetes_rejected_policy", .gauge,
                                    "Policy objects rejected (they add no rule; the others stay in force), with the located error")
        for object in kubernetes.rejected() {
            let error = object.error.fieldPath.isEmpty ? object.error.message : "\(object.error.fieldPath): \(object.error.message)"
            rejected.add([("kind", object.kind), ("namespace", object.key.namespace), ("name", object.key.name),
                          ("error", String(error.prefix(300)))], 1.0)
        }
        var rejections = MetricFamily("sluice_kubernetes_policy_rejections_total", .counter,
                                      "Policy objects (versions) rejected since start")
        rejections.add([], Double(kubernetes.rejections))
        return [objects, changes, synchronized, rejected, rejections]
    }
}
