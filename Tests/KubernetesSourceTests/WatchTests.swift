import Foundation
import PolicyEngine
import Synchronization
import Testing
@testable import KubernetesSource

/// A transport that answers from a script, without sockets: each request takes the next
/// answer for its kind (list or watch) and is recorded.
final class ScriptedTransport: APITransport, @unchecked Sendable {
    enum ListAnswer { case body(String), failure(APIError) }
    enum WatchAnswer { case lines([String], end: APIError?) }
    var lists: [ListAnswer]
    var watches: [WatchAnswer]
    var requests: [String] = []

    init(lists: [ListAnswer], watches: [WatchAnswer] = []) {
        self.lists = lists
        self.watches = watches
    }

    func get(_ path: String) throws(APIError) -> [UInt8] {
        requests.append("GET \(path)")
        guard !lists.isEmpty else { throw APIError("script: no list answer left") }
        switch lists.removeFirst() {
        case .body(let text): return Array(text.utf8)
        case .failure(let error): throw error
        }
    }

    func stream(_ path: String, onLine: ([UInt8]) -> Bool) -> APIError? {
        requests.append("WATCH \(path)")
        guard !watches.isEmpty else { return APIError("script: no watch answer left") }
        switch watches.removeFirst() {
        case .lines(let lines, let end):
            for line in lines where !onLine(Array(line.utf8)) { return nil }
            return end
        }
    }
}

/// The real `ResourceWatcher` driven by a scripted transport, applying into a real state.
final class Harness {
    var state = ClusterState()
    var reports: [String] = []
    var sleeps: [UInt64] = []
    let watcher: ResourceWatcher
    let transport: ScriptedTransport
    var clock: UInt64 = 0

    init(_ resource: KubernetesResource = .ciliumNetworkPolicies, transport: ScriptedTransport) {
        self.transport = transport
        var harness: Harness!
        watcher = ResourceWatcher(resource: resource, transport: transport,
                                  apply: { change in
                                      switch change {
                                      case .replaced(let resource, let objects): harness.state.replace(resource, with: objects)
                                      case .upserted(let resource, let key, let object): harness.state.upsert(resource, key: key, object: object)
                                      case .removed(let resource, let key): harness.state.remove(resource, key: key)
                                      }
                                  },
                                  report: { harness.reports.append($0) },
                                  sleep: { harness.sleeps.append($0) },
                                  now: { harness.clock += 2_000_000_000; return harness.clock })
        harness = self
    }

    var names: [String] { (state.objects[.ciliumNetworkPolicies] ?? [:]).keys.map(\.description).sorted() }
}

func policyJSON(_ name: String, version: String = "1", path: String = "/a") -> String {
    """
    {"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"\(name)","namespace":"shop","resourceVersion":"\(version)"},\
    "spec":{"endpointSelector":{"matchLabels":{"app":"backend"}},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"path":"\(path)"}]}}]}]}}
    """
}

func listJSON(_ items: [String], version: String, continueToken: String? = nil) -> String {
    let next = continueToken.map { ",\"continue\":\"\($0)\"" } ?? ""
    return "{\"kind\":\"CiliumNetworkPolicyList\",\"metadata\":{\"resourceVersion\":\"\(version)\"\(next)},\"items\":[\(items.joined(separator: ","))]}"
}

func event(_ type: String, _ object: String) -> String { "{\"type\":\"\(type)\",\"object\":\(object)}" }

@Suite struct WatchMachineTests {
    @Test func listsThenWatchesFromTheListsVersion() {
        let harness = Harness(transport: ScriptedTransport(lists: [.body(listJSON([policyJSON("a")], version: "10"))],
                                                           watches: [.lines([event("ADDED", policyJSON("b", version: "11"))], end: nil)]))
        #expect(harness.watcher.step() == .list)
        #expect(harness.names == ["shop/a"])
        #expect(harness.watcher.step() == .watch(resourceVersion: "10"))
        #expect(harness.names == ["shop/a", "shop/b"])
        #expect(harness.watcher.machine.resourceVersion == "11")
        #expect(harness.transport.requests[1].contains("watch=true") && harness.transport.requests[1].contains("resourceVersion=10"))
    }

    @Test func aDroppedWatchResumesFromTheLastVersionSeen() {
        let harness = Harness(transport: ScriptedTransport(
            lists: [.body(listJSON([policyJSON("a")], version: "10"))],
            watches: [.lines([event("MODIFIED", policyJSON("a", version: "12", path: "/b"))], end: APIError("read: connection reset")),
                      .lines([event("DELETED", policyJSON("a", version: "13"))], end: nil)]))
        harness.watcher.step()
        harness.watcher.step()
        #expect(harness.watcher.machine.resourceVersion == "12")
        // A failure waits (backoff), then watches again from 12: no relist, nothing lost.
        #expect(harness.watcher.step() == .wait(nanoseconds: 200_000_000))
        #expect(harness.watcher.step() == .watch(resourceVersion: "12"))
        #expect(harness.names == [])
        #expect(!harness.transport.requests.dropFirst().contains { $0.hasPrefix("GET") })
    }

    @Test func bookmarksMoveTheVersionAndAServerTimeoutResumesAtOnce() {
        let bookmark = event("BOOKMARK", "{\"kind\":\"CiliumNetworkPolicy\",\"metadata\":{\"resourceVersion\":\"15\"}}")
        let harness = Harness(transport: ScriptedTransport(lists: [.body(listJSON([policyJSON("a")], version: "10"))],
                                                           watches: [.lines([bookmark], end: nil), .lines([], end: nil)]))
        harness.watcher.step()
        harness.watcher.step()
        #expect(harness.watcher.machine.resourceVersion == "15")
        #expect(harness.names == ["shop/a"])
        // The server ended the watch cleanly (its timeoutSeconds): watch again, no wait.
        #expect(harness.watcher.step() == .watch(resourceVersion: "15"))
        #expect(harness.sleeps.isEmpty)
    }

    @Test func goneRelistsAndTheRelistReplacesEverything() {
        // The watch answers 410 as an ERROR event (what API servers do mid-stream) and, the
        // second time, as the response status; both relist.
        let gone = event("ERROR", "{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\"}")
        let harness = Harness(transport: ScriptedTransport(
            lists: [.body(listJSON([policyJSON("a"), policyJSON("b")], version: "10")),
                    .body(listJSON([policyJSON("b", version: "20")], version: "20")),
                    .body(listJSON([], version: "30"))],
            watches: [.lines([gone], end: nil), .lines([], end: APIError(status: 410, "Gone"))]))
        harness.watcher.step()
        #expect(harness.names == ["shop/a", "shop/b"])
        harness.watcher.step()
        #expect(harness.watcher.machine.resourceVersion == nil)
        #expect(harness.watcher.step() == .list)
        // a was deleted while the version expired: the relist drops it.
        #expect(harness.names == ["shop/b"])
        #expect(harness.watcher.step() == .watch(resourceVersion: "20"))
        // A second 410 in a row backs off before listing again.
        #expect(harness.watcher.step() == .wait(nanoseconds: 200_000_000))
        #expect(harness.watcher.step() == .list)
        #expect(harness.names == [])
    }

    @Test func aHalfReadListIsNeverApplied() {
        let harness = Harness(transport: ScriptedTransport(lists: [
            .body(listJSON([policyJSON("a")], version: "10")),
            // The relist: a first page arrives, the second fails: the first is not applied.
            .body(listJSON([policyJSON("x")], version: "", continueToken: "page2")),
            .failure(APIError("read: connection reset")),
            // A truncated body (not JSON) is not applied either.
            .body(String(listJSON([policyJSON("y")], version: "30").dropLast(20))),
            .body(listJSON([policyJSON("z")], version: "40")),
        ], watches: [.lines([], end: APIError(status: 410, "Gone"))]))
        harness.watcher.step()
        harness.watcher.step()  // 410: relist
        #expect(harness.watcher.step() == .list)
        #expect(harness.names == ["shop/a"])
        #expect(harness.transport.requests.last?.contains("continue=page2") == true)
        #expect(harness.watcher.step() == .wait(nanoseconds: 200_000_000))
        #expect(harness.watcher.step() == .list)
        #expect(harness.names == ["shop/a"])
        #expect(harness.watcher.step() == .wait(nanoseconds: 400_000_000))
        #expect(harness.watcher.step() == .list)
        #expect(harness.names == ["shop/z"])
        // Two failed lists and the 410, each said once.
        #expect(harness.reports.count == 3)
    }

    @Test func errorsBackOffExponentiallyUpToTheMaximumAndSuccessResets() {
        var machine = WatchMachine(initialBackoff: 100, maximumBackoff: 1_000)
        var waits: [UInt64] = []
        for _ in 0..<6 {
            machine.listFailed()
            if case .wait(let nanoseconds) = machine.next() { waits.append(nanoseconds) }
            #expect(machine.next() == .list)
        }
        #expect(waits == [100, 200, 400, 800, 1_000, 1_000])
        machine.listed(resourceVersion: "5")
        machine.watchEnded(.failed)
        #expect(machine.next() == .wait(nanoseconds: 100))
        #expect(machine.next() == .watch(resourceVersion: "5"))
        // A clean end after a healthy watch resumes at once; an immediate close backs off.
        machine.watchEnded(.closed(lasted: 300_000_000_000))
        #expect(machine.next() == .watch(resourceVersion: "5"))
        machine.watchEnded(.closed(lasted: 1_000))
        if case .wait = machine.next() {} else { Issue.record("an immediate close must back off") }
    }

    @Test func anInvalidPolicyObjectIsKeptAsRejectedAndTheOthersLoad() {
        let bad = policyJSON("bad").replacingOccurrences(of: "\"80\"", with: "\"99999\"")
        let harness = Harness(transport: ScriptedTransport(lists: [.body(listJSON([policyJSON("good"), bad], version: "1"))]))
        harness.watcher.step()
        let (policies, rejected) = harness.state.policies()
        #expect(policies.map(\.name) == ["good"])
        #expect(rejected.count == 1)
        #expect(rejected.first?.key == ObjectKey(namespace: "shop", name: "bad"))
        #expect(rejected.first?.error.fieldPath == "spec.ingress[0].toPorts[0].ports[0].port")
    }

    @Test func aWatchEventThatIsNotJSONEndsTheWatchAndItResumes() {
        let harness = Harness(transport: ScriptedTransport(
            lists: [.body(listJSON([], version: "1"))],
            watches: [.lines(["not json"], end: nil)]))
        harness.watcher.step()
        harness.watcher.step()
        #expect(harness.reports.contains { $0.contains("not a JSON object") })
        #expect(harness.watcher.step() == .wait(nanoseconds: 200_000_000))
        #expect(harness.watcher.machine.resourceVersion == "1")
    }
}

@Suite struct ListLimitsAndKindsTests {
    @Test func moreObjectsThanTheLimitFailTheListAndKeepTheLastGoodState() {
        var limits = APILimits()
        limits.maximumObjects = 2
        let transport = ScriptedTransport(lists: [.body(listJSON([policyJSON("a")], version: "1"))],
                                          watches: [.lines([], end: APIError(status: 410, "Gone"))])
        transport.lists.append(.body(listJSON([policyJSON("a"), policyJSON("b"), policyJSON("c")], version: "2")))
        var state = ClusterState()
        var reports: [String] = []
        let watcher = ResourceWatcher(resource: .ciliumNetworkPolicies, transport: transport, limits: limits,
                                      apply: { change in if case .replaced(let resource, let objects) = change { state.replace(resource, with: objects) } },
                                      report: { reports.append($0) }, sleep: { _ in })
        watcher.step()
        watcher.step()
        watcher.step()
        #expect(state.objects[.ciliumNetworkPolicies]?.count == 1)
        #expect(reports.contains { $0.contains("more than 2 CiliumNetworkPolicy objects") })
    }

    @Test func listItemsWithoutKindLoadAsTheirResourcesKind() throws {
        // The API server leaves kind and apiVersion out of list items of built-in kinds.
        let item = """
            {"metadata":{"name":"deny-all","namespace":"shop","managedFields":[{"manager":"kubectl"}]},\
            "spec":{"podSelector":{},"policyTypes":["Ingress"]}}
            """
        let json = try #require(try JSONSerialization.jsonObject(with: Data(item.utf8)) as? [String: Any])
        let (key, object, _) = try ClusterObject.convert(json, resource: .networkPolicies)
        guard case .policy(let policy) = object, case .success(let policies) = policy.policies else {
            Issue.record("not loaded: \(object)")
            return
        }
        #expect(key == ObjectKey(namespace: "shop", name: "deny-all"))
        #expect(policies.first?.kind == .networkPolicy)
        let clusterwide = try #require(try JSONSerialization.jsonObject(with: Data(
            #"{"metadata":{"name":"all"},"spec":{"endpointSelector":{},"egress":[{"toEntities":["world"]}]}}"#.utf8)) as? [String: Any])
        let (_, converted, _) = try ClusterObject.convert(clusterwide, resource: .ciliumClusterwideNetworkPolicies)
        guard case .policy(let second) = converted, case .success(let loaded) = second.policies else {
            Issue.record("not loaded: \(converted)")
            return
        }
        #expect(loaded.first?.kind == .ciliumClusterwideNetworkPolicy && loaded.first?.namespace == nil)
    }
}

@Suite struct LabelDerivationTests {
    @Test func aPodsIdentityCarriesCiliumsDerivedLabels() {
        let pod = PodRecord(key: ObjectKey(namespace: "shop", name: "web-1"), labels: ["app": "web", "app.kubernetes.io/part-of": "shop"],
                            nodeName: "node-a", serviceAccount: "web-sa", addresses: [IPAddress("10.0.0.5")!], namedPorts: [],
                            hostNetwork: false, phase: "Running")
        let identity = ClusterState.identity(of: pod, namespaceLabels: ["team": "payments"],
                                             context: NodeContext(nodeName: "node-a", clusterName: "east"))
        let labels = Set(identity.labels.labels.map(\.description))
        #expect(labels == [
            "k8s:app=web", "k8s:app.kubernetes.io/part-of=shop",
            "k8s:io.kubernetes.pod.namespace=shop",
            "k8s:io.cilium.k8s.namespace.labels.team=payments",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
            "k8s:io.cilium.k8s.policy.cluster=east",
        ])
        #expect(identity.podName == "web-1")
    }

    @Test func podsOnThisNodeAreLocalOthersRemoteAndNodesAreHostOrRemoteNode() throws {
        var state = ClusterState()
        func pod(_ name: String, _ address: String, node: String?, hostNetwork: Bool = false, phase: String = "Running") -> String {
            let spec = "\"spec\":{\(node.map { "\"nodeName\":\"\($0)\"," } ?? "")\"hostNetwork\":\(hostNetwork)}"
            return "{\"metadata\":{\"name\":\"\(name)\",\"namespace\":\"shop\",\"labels\":{\"app\":\"\(name)\"}},\(spec),\"status\":{\"phase\":\"\(phase)\",\"podIP\":\"\(address)\"}}"
        }
        for (resource, text) in [(KubernetesResource.pods, pod("here", "10.0.0.1", node: "a")), (.pods, pod("there", "10.0.1.1", node: "b")),
                                 (.pods, pod("hostnet", "192.168.0.1", node: "a", hostNetwork: true)),
                                 (.pods, pod("done", "10.0.0.9", node: "a", phase: "Succeeded")),
                                 (.nodes, "{\"metadata\":{\"name\":\"a\"},\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"192.168.0.1\"},{\"type\":\"Hostname\",\"address\":\"a\"}]}}"),
                                 (.nodes, "{\"metadata\":{\"name\":\"b\",\"labels\":{\"zone\":\"z2\"}},\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"192.168.0.2\"}]}}")] {
            let json = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            let (key, object, _) = try ClusterObject.convert(json, resource: resource)
            state.upsert(resource, key: key, object: object)
        }
        let directory = state.endpoints(context: NodeContext(nodeName: "a"))
        let here = try #require(directory.entries.first { $0.identity.podName == "here" })
        let there = try #require(directory.entries.first { $0.identity.podName == "there" })
        #expect(!here.identity.isOnAnotherNode)
        #expect(there.identity.isOnAnotherNode)
        #expect(!directory.entries.contains { $0.identity.podName == "hostnet" || $0.identity.podName == "done" })
        #expect(directory.identity(for: IPAddress("192.168.0.1")!).reservedKind == .host)
        let other = directory.identity(for: IPAddress("192.168.0.2")!)
        #expect(other.reservedKind == .remoteNode)
        #expect(other.labels.labels.contains(Label(source: "k8s", key: "zone", value: "z2")))
    }
}

@Suite struct KubernetesSourceTests {
    @Test func objectsArrivingOneByOneRespectTheLimitToo() throws {
        var limits = APILimits()
        limits.maximumObjects = 1
        let reports = Mutex<[String]>([])
        let source = KubernetesSource(context: NodeContext(nodeName: "a"), transport: ScriptedTransport(lists: []), limits: limits,
                                      report: { line in reports.withLock { $0.append(line) } })
        func pod(_ name: String) throws -> (ObjectKey, ClusterObject) {
            let json = try #require(try JSONSerialization.jsonObject(with: Data(
                "{\"metadata\":{\"name\":\"\(name)\",\"namespace\":\"shop\"}}".utf8)) as? [String: Any])
            let (key, object, _) = try ClusterObject.convert(json, resource: .pods)
            return (key, object)
        }
        let (first, firstObject) = try pod("one")
        let (second, secondObject) = try pod("two")
        source.apply(.upserted(.pods, first, firstObject))
        source.apply(.upserted(.pods, second, secondObject))
        source.apply(.upserted(.pods, first, firstObject))  // a change to a held object is taken
        #expect(source.objectCounts[.pods] == 1)
        #expect(reports.withLock { $0 }.count == 1)
        #expect(reports.withLock { $0 }.first?.contains("more than 1 Pod objects") == true)
    }

    @Test func aRejectedPolicyIsLocatedByObjectAndFieldAndSaidOnce() throws {
        let reports = Mutex<[String]>([])
        let source = KubernetesSource(context: NodeContext(nodeName: "a"), transport: ScriptedTransport(lists: []),
                                      report: { line in reports.withLock { $0.append(line) } })
        let bad = policyJSON("bad").replacingOccurrences(of: "\"80\"", with: "\"99999\"")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(bad.utf8)) as? [String: Any])
        let (key, object, _) = try ClusterObject.convert(json, resource: .ciliumNetworkPolicies)
        source.apply(.upserted(.ciliumNetworkPolicies, key, object))
        _ = source.current()
        _ = source.current()
        let said = reports.withLock { $0 }
        #expect(said.count == 1)
        #expect(said.first?.hasPrefix("kubernetes: CiliumNetworkPolicy shop/bad rejected: CiliumNetworkPolicy shop/bad: "
                                      + "spec.ingress[0].toPorts[0].ports[0].port: expected a port number") == true, "\(said)")
        #expect(source.rejections == 1)
    }
}
