import Synchronization

/// Holds the current `PolicySnapshot` and replaces it atomically.
///
/// Readers take a reference under a mutex held for one pointer copy (no allocation,
/// no evaluation under the lock), then evaluate on their own reference; a snapshot is
/// fully built before `replace` publishes it, so no reader ever sees a half-built one,
/// and an old snapshot lives until its last reader drops it.
public final class PolicySnapshotHolder: Sendable {
    private let current: Mutex<PolicySnapshot>
    private let generations = Atomic<UInt64>(0)

    public init(_ initial: PolicySnapshot = PolicySnapshot(policies: [])) {
        current = Mutex(initial)
    }

    /// The snapshot to evaluate with.
    public var snapshot: PolicySnapshot {
        current.withLock { $0 }
    }

    /// Compiles `policies` for `endpoints` outside the lock, then publishes the result.
    @discardableResult
    public func replace(policies: [Policy], endpoints: EndpointDirectory) -> PolicySnapshot {
        let generation = generations.add(1, ordering: .relaxed).newValue
        let snapshot = PolicySnapshot(policies: policies, endpoints: endpoints, generation: generation)
        replace(with: snapshot)
        return snapshot
    }

    /// Publishes an already built snapshot and returns the one it replaced.
    @discardableResult
    public func replace(with snapshot: PolicySnapshot) -> PolicySnapshot {
        current.withLock { held in
            let previous = held
            held = snapshot
            return previous
        }
    }
}
