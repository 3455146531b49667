import Synchronization

/// Holds the current `PolicySnapshot` and replaces it atomically.
///
/// Readers take a reference under a mutex held for one pointer copy (no allocation,
/// no evaluation under the lock), then evaluate on their own reference; a snapshot is
/// fully built before `replace` publishes it, so no reader ever sees a half-built one,
/// and an old snapshot lives until its last reader drops it.
///
/// `version` counts publications (every `replace`, whatever the snapshot's own
/// `generation`): a reader that cached anything derived from a snapshot compares the
/// version it cached under with this one, an atomic load, before each use. Read the
/// version first, then the snapshot: the snapshot is then at least as new as the version
/// says, so a cache can be stale for at most one extra refresh, never for a request.
public final class PolicySnapshotHolder: Sendable {
    private let current: Mutex<PolicySnapshot>
    private let generations = Atomic<UInt64>(0)
    @usableFromInline let publications = Atomic<UInt64>(0)

    public init(_ initial: PolicySnapshot = PolicySnapshot(policies: [])) {
        current = Mutex(initial)
    }

    /// Incremented after each `replace` has published its snapshot. Inlined into callers:
    /// read before every request, it is then one load, with no call and no reference counted.
    @inlinable public var version: UInt64 {
        publications.load(ordering: .acquiring)
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
        let previous = current.withLock { held in
            let previous = held
            held = snapshot
            return previous
        }
        publications.add(1, ordering: .releasing)
        return previous
    }
}
