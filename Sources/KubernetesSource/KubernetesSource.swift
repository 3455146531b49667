import Foundation
import PolicyEngine
import Synchronization

/// Policies and endpoints from the API server: one `ResourceWatcher` thread per resource
/// keeps a `ClusterState` current, and a notifier thread tells the owner (the policy
/// enforcement) that it changed, coalescing bursts into one reload. While the API server
/// cannot be reached the state does not change, so the last good state stays enforced.
public final class KubernetesSource: @unchecked Sendable {
    public let context: NodeContext
    public let limits: APILimits
    private let transport: any APITransport
    private let report: @Sendable (String) -> Void
    private let state = Mutex<ClusterState>(ClusterState())
    /// The first change not yet handed to `onChange`, and how many are pending (nil = none).
    private let pending = Mutex<(first: String, count: Int)?>(nil)
    private let synchronized = Mutex<Set<KubernetesResource>>([])
    private let stopping = Atomic<Bool>(false)
    /// Policy objects already reported as rejected (each is said once while it stays bad).
    private let reported = Mutex<[String: String]>([:])
    /// Rejections since start (a bad object counted again only when its error changes).
    private let rejectionCount = Atomic<UInt64>(0)
    /// Changes applied since start, per resource.
    private let changeCounts = Mutex<[KubernetesResource: UInt64]>([:])

    /// Called on the notifier thread after changes, with a short cause ("kubernetes:
    /// CiliumNetworkPolicy shop/a changed"). Changes wait until it is set.
    public var onChange: (@Sendable (String) -> Void)? {
        get { changeHandler.withLock { $0 } }
        set { changeHandler.withLock { $0 = newValue } }
    }
    private let changeHandler = Mutex<(@Sendable (String) -> Void)?>(nil)

    public init(context: NodeContext, transport: any APITransport, limits: APILimits = APILimits(),
                report: @escaping @Sendable (String) -> Void) {
        self.context = context
        self.transport = transport
        self.limits = limits
        self.report = report
    }

    /// Starts one watcher thread per resource and the notifier thread.
    public func start() {
        for resource in KubernetesResource.allCases {
            let watcher = ResourceWatcher(resource: resource, transport: transport, limits: limits,
                                          apply: { [self] change in self.apply(change) }, report: report,
                                          sleep: { [self] nanoseconds in self.sleep(nanoseconds) })
            Self.thread { [self] in
                while !stopping.load(ordering: .relaxed) {
                    watcher.step()
                    if watcher.machine.synchronized { _ = synchronized.withLock { $0.insert(resource) } }
                }
            }
        }
        Self.thread { [self] in
            while !stopping.load(ordering: .relaxed) {
                usleep(50_000)
                // Only once every resource was listed (a reload before that would enforce a
                // partial view: policies without their pods, or the other way round) and
                // the owner listens; until then changes wait, summed up.
                guard isSynchronized, let onChange else { continue }
                guard let (first, count) = pending.withLock({ pending -> (String, Int)? in defer { pending = nil }; return pending }) else { continue }
                onChange(count == 1 ? first : "\(first) and \(count - 1) more change(s)")
            }
        }
    }

    public func stop() { stopping.store(true, ordering: .relaxed) }

    /// True once every resource has been listed whole at least once.
    public var isSynchronized: Bool { synchronized.withLock { $0.count == KubernetesResource.allCases.count } }

    /// The resources not listed yet.
    public var unsynchronized: [KubernetesResource] {
        let done = synchronized.withLock { $0 }
        return KubernetesResource.allCases.filter { !done.contains($0) }
    }

    /// Waits until every resource was listed once, or `timeout` nanoseconds.
    public func waitUntilSynchronized(timeout: UInt64) -> Bool {
        let deadline = DispatchTime.now().uptimeNanoseconds + timeout
        while !isSynchronized {
            if DispatchTime.now().uptimeNanoseconds >= deadline { return false }
            usleep(20_000)
        }
        return true
    }

    /// Forgets the changes not yet handed to `onChange`: the caller is about to read the
    /// whole state (the first load), which includes them.
    public func discardPendingChanges() {
        pending.withLock { $0 = nil }
    }

    /// Lists every resource once, on the caller's thread (for `--check`): the state, or
    /// the first failure.
    public func listOnce() throws(APIError) {
        for resource in KubernetesResource.allCases {
            let watcher = ResourceWatcher(resource: resource, transport: transport, limits: limits,
                                          apply: { [self] change in self.apply(change) }, report: report)
            watcher.step()
            if let failure = watcher.lastListFailure {
                throw APIError("cannot list \(resource.collectionPath): \(failure)")
            }
            _ = synchronized.withLock { $0.insert(resource) }
        }
        _ = pending.withLock { $0 = nil }
    }

    func apply(_ change: ClusterChange) {
        let cause: String
        switch change {
        case .replaced(let resource, let objects): cause = "kubernetes: \(objects.count) \(resource.kind) object(s) listed"
        case .upserted(let resource, let key, _): cause = "kubernetes: \(resource.kind) \(key) changed"
        case .removed(let resource, let key): cause = "kubernetes: \(resource.kind) \(key) deleted"
        }
        let refused = state.withLock { state -> Bool in
            switch change {
            case .replaced(let resource, let objects): state.replace(resource, with: objects)
            case .upserted(let resource, let key, let object):
                // The list limit holds for objects that arrive one by one, too.
                let held = state.objects[resource] ?? [:]
                if held[key] == nil && held.count >= limits.maximumObjects { return true }
                state.upsert(resource, key: key, object: object)
            case .removed(let resource, let key): state.remove(resource, key: key)
            }
            return false
        }
        if refused {
            report("kubernetes: \(change.resource.kind) object not taken: more than \(limits.maximumObjects) \(change.resource.kind) objects (kubernetes limits)")
            return
        }
        changeCounts.withLock { $0[change.resource, default: 0] += 1 }
        pending.withLock { $0 = ($0?.first ?? cause, ($0?.count ?? 0) + 1) }
    }

    /// What to enforce now: the valid policies, the endpoints, and the rejected objects.
    /// Newly rejected objects are reported here (once each while they stay rejected).
    public func current() -> (policies: [Policy], endpoints: EndpointDirectory, rejected: [RejectedObject]) {
        let state = state.withLock { $0 }
        let (policies, rejected) = state.policies()
        let endpoints = state.endpoints(context: context)
        reported.withLock { reported in
            var now: [String: String] = [:]
            for object in rejected {
                let name = "\(object.kind) \(object.key)"
                now[name] = object.error.description
                if reported[name] != object.error.description {
                    rejectionCount.add(1, ordering: .relaxed)
                    report("kubernetes: \(object) (the object adds no rule; the other policies stay in force)")
                }
            }
            reported = now
        }
        return (policies, endpoints, rejected)
    }

    /// The policy objects rejected now (cheaper than `current()`: no endpoints are built).
    public func rejected() -> [RejectedObject] {
        state.withLock { $0 }.policies().rejected
    }

    /// Rejections since start.
    public var rejections: UInt64 { rejectionCount.load(ordering: .relaxed) }

    /// Objects currently held, per resource.
    public var objectCounts: [KubernetesResource: Int] {
        state.withLock { state in state.objects.mapValues(\.count) }
    }

    /// Changes applied since start, per resource.
    public var changes: [KubernetesResource: UInt64] { changeCounts.withLock { $0 } }

    /// Sleeps in short slices so that `stop()` is honoured.
    private func sleep(_ nanoseconds: UInt64) {
        var left = nanoseconds
        while left > 0, !stopping.load(ordering: .relaxed) {
            let slice = min(left, 100_000_000)
            usleep(useconds_t(slice / 1000))
            left -= slice
        }
    }

    private static func thread(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { body() }
        thread.stackSize = 1 << 20
        thread.start()
    }
}
