/// The list-then-watch protocol of one resource, as decisions without I/O: what to do next
/// (list, watch from a resourceVersion, wait), and what each outcome changes.
///
/// - A list is applied only whole: the caller replaces the resource's objects with a list
///   it read completely and then calls `listed`; a list that fails part way changes nothing
///   (`listFailed`), and the previous objects stay in force.
/// - A watch resumes from the last resourceVersion seen (the list's, then each event's), so
///   a dropped connection loses nothing the server still has.
/// - `410 Gone` (the server no longer has that version: "too old resource version") forgets
///   the version: the next step is a fresh list.
/// - Errors back off exponentially (`initialBackoff` doubling up to `maximumBackoff`); any
///   success resets the backoff.
public struct WatchMachine: Sendable, Equatable {
    public enum Step: Sendable, Equatable {
        case list
        case watch(resourceVersion: String)
        case wait(nanoseconds: UInt64)
    }

    /// How a watch request ended.
    public enum WatchEnd: Sendable, Equatable {
        /// The server ended the stream cleanly (its timeout); `lasted` nanoseconds after it began.
        case closed(lasted: UInt64)
        /// 410 Gone, as the response status or as an ERROR event.
        case gone
        /// Connection, TLS, HTTP status, framing or size failure.
        case failed
    }

    public let initialBackoff: UInt64
    public let maximumBackoff: UInt64
    /// Where the next watch starts; nil = list first.
    public private(set) var resourceVersion: String?
    /// Consecutive failures (for the backoff).
    public private(set) var failures = 0
    /// 410s since the last watch event: a server that expires every version at once
    /// (list, watch, 410, list, ...) is asked again only after a backoff.
    public private(set) var consecutiveGone = 0
    /// True once a list was applied (the resource's state is known).
    public private(set) var synchronized = false
    private var pendingWait: UInt64?

    /// A clean close sooner than this after the watch began counts as a failure (a server
    /// that closes at once must not be asked again in a tight loop).
    public static let shortestHealthyWatch: UInt64 = 1_000_000_000

    public init(initialBackoff: UInt64 = 200_000_000, maximumBackoff: UInt64 = 30_000_000_000) {
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
    }

    /// What to do next.
    public mutating func next() -> Step {
        if let wait = pendingWait {
            pendingWait = nil
            return .wait(nanoseconds: wait)
        }
        guard let resourceVersion else { return .list }
        return .watch(resourceVersion: resourceVersion)
    }

    /// A complete list was applied; watching starts from its version.
    public mutating func listed(resourceVersion version: String) {
        resourceVersion = version
        failures = 0
        synchronized = true
    }

    /// The list failed before it was complete: nothing was applied; list again after a wait.
    public mutating func listFailed() {
        fail()
    }

    /// A watch event was applied (ADDED, MODIFIED, DELETED or BOOKMARK).
    public mutating func eventApplied(resourceVersion version: String?) {
        if let version, !version.isEmpty { resourceVersion = version }
        failures = 0
        consecutiveGone = 0
    }

    public mutating func watchEnded(_ end: WatchEnd) {
        switch end {
        case .closed(let lasted):
            if lasted < Self.shortestHealthyWatch { fail() }
        case .gone:
            resourceVersion = nil
            // A first 410 relists at once; repeated ones (with no event between) back off.
            consecutiveGone += 1
            if consecutiveGone > 1 { pendingWait = backoff(after: consecutiveGone - 1) }
        case .failed:
            fail()
        }
    }

    private mutating func fail() {
        failures += 1
        pendingWait = backoff(after: failures)
    }

    /// initial × 2^(n-1), at most `maximumBackoff`.
    public func backoff(after failures: Int) -> UInt64 {
        let shift = UInt64(min(max(failures - 1, 0), 40))
        let (value, overflow) = initialBackoff.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? maximumBackoff : min(value, maximumBackoff)
    }
}
