import Foundation

/// A change to the cluster state, decoded and converted, ready to apply.
public enum ClusterChange: Sendable {
    /// A complete list: every object of the resource (the ones not in it are gone).
    case replaced(KubernetesResource, [ObjectKey: ClusterObject])
    case upserted(KubernetesResource, ObjectKey, ClusterObject)
    case removed(KubernetesResource, ObjectKey)

    public var resource: KubernetesResource {
        switch self {
        case .replaced(let resource, _), .upserted(let resource, _, _), .removed(let resource, _): return resource
        }
    }
}

/// Lists and watches one resource by `WatchMachine`'s decisions, through an
/// `APITransport`: each `step()` performs one decision (a list, one whole watch request,
/// or a wait) and hands complete changes to `apply`. Nothing here knows sockets, so tests
/// drive the real loop with a scripted transport.
public final class ResourceWatcher: @unchecked Sendable {
    public let resource: KubernetesResource
    public private(set) var machine: WatchMachine
    /// Why the last list failed (nil after a successful one).
    public private(set) var lastListFailure: APIError?
    private let transport: any APITransport
    private let limits: APILimits
    private let apply: (ClusterChange) -> Void
    private let report: (String) -> Void
    private let sleep: (UInt64) -> Void
    private let now: () -> UInt64

    public init(resource: KubernetesResource, transport: any APITransport, limits: APILimits = APILimits(),
                machine: WatchMachine = WatchMachine(),
                apply: @escaping (ClusterChange) -> Void, report: @escaping (String) -> Void,
                sleep: @escaping (UInt64) -> Void = { usleep(useconds_t(min($0 / 1000, 4_000_000_000))) },
                now: @escaping () -> UInt64 = { DispatchTime.now().uptimeNanoseconds }) {
        self.resource = resource
        self.transport = transport
        self.limits = limits
        self.machine = machine
        self.apply = apply
        self.report = report
        self.sleep = sleep
        self.now = now
    }

    /// Performs the next decision; returns it (for tests and logs).
    @discardableResult
    public func step() -> WatchMachine.Step {
        let step = machine.next()
        switch step {
        case .wait(let nanoseconds):
            sleep(nanoseconds)
        case .list:
            do throws(APIError) {
                let (objects, version) = try listAll()
                apply(.replaced(resource, objects))
                machine.listed(resourceVersion: version)
                lastListFailure = nil
            } catch {
                lastListFailure = error
                report("kubernetes: listing \(resource.collectionPath) failed (the last good state stays in force): \(error)")
                machine.listFailed()
            }
        case .watch(let version):
            let began = now()
            var end: WatchMachine.WatchEnd?
            let path = "\(resource.collectionPath)?watch=true&allowWatchBookmarks=true&timeoutSeconds=\(limits.watchTimeoutSeconds)"
                + "&resourceVersion=\(Self.escape(version))"
            let failure = transport.stream(path) { line in
                switch handle(line) {
                case .applied(let version):
                    machine.eventApplied(resourceVersion: version)
                    return true
                case .ignored:
                    return true
                case .gone:
                    end = .gone
                    return false
                case .failed(let message):
                    report("kubernetes: watch \(resource.collectionPath): \(message)")
                    end = .failed
                    return false
                }
            }
            if let failure {
                if failure.status == 410 {
                    end = .gone
                } else {
                    report("kubernetes: watch \(resource.collectionPath) ended: \(failure) (resuming from \(machine.resourceVersion ?? "a new list"))")
                    end = .failed
                }
            }
            if end == .gone { report("kubernetes: watch \(resource.collectionPath): 410 Gone (version \(version) expired): listing again") }
            machine.watchEnded(end ?? .closed(lasted: now() &- began))
        }
        return step
    }

    private enum EventOutcome { case applied(String?), ignored, gone, failed(String) }

    /// Decodes one watch event line and applies it.
    private func handle(_ line: [UInt8]) -> EventOutcome {
        guard let event = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
              let type = event["type"] as? String, let object = event["object"] as? [String: Any] else {
            return .failed("a watch event is not a JSON object with type and object: \(String(decoding: line.prefix(120), as: UTF8.self))")
        }
        switch type {
        case "ADDED", "MODIFIED", "DELETED":
            let key: ObjectKey
            let converted: ClusterObject
            let version: String?
            do throws(ObjectError) {
                (key, converted, version) = try ClusterObject.convert(object, resource: resource)
            } catch {
                report("kubernetes: \(type) event skipped: \(error)")
                return .ignored
            }
            apply(type == "DELETED" ? .removed(resource, key) : .upserted(resource, key, converted))
            return .applied(version)
        case "BOOKMARK":
            return .applied((object["metadata"] as? [String: Any])?["resourceVersion"] as? String)
        case "ERROR":
            let code = object["code"] as? Int ?? 0
            if code == 410 { return .gone }
            return .failed("ERROR event: \(object["code"] ?? "?") \(object["reason"] ?? "") \(object["message"] ?? "")")
        default:
            return .failed("unknown watch event type '\(type)'")
        }
    }

    /// Reads every page of the list before anything is applied; any failure (connection,
    /// status, size, JSON, an expired continue token) throws and applies nothing.
    private func listAll() throws(APIError) -> ([ObjectKey: ClusterObject], String) {
        var objects: [ObjectKey: ClusterObject] = [:]
        var continueToken: String?
        while true {
            var path = "\(resource.collectionPath)?limit=\(limits.pageSize)"
            if let continueToken { path += "&continue=\(Self.escape(continueToken))" }
            let body = try transport.get(path)
            guard let list = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
                throw APIError("the list response is not a JSON object")
            }
            let items = list["items"] as? [[String: Any]] ?? []
            for item in items {
                do throws(ObjectError) {
                    let (key, object, _) = try ClusterObject.convert(item, resource: resource)
                    objects[key] = object
                } catch {
                    report("kubernetes: list item skipped: \(error)")
                }
            }
            guard objects.count <= limits.maximumObjects else {
                throw APIError("more than \(limits.maximumObjects) \(resource.kind) objects (kubernetes limits)")
            }
            let metadata = list["metadata"] as? [String: Any] ?? [:]
            if let next = metadata["continue"] as? String, !next.isEmpty {
                continueToken = next
                continue
            }
            return (objects, metadata["resourceVersion"] as? String ?? "")
        }
    }

    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}
