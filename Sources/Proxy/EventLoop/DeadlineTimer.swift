/// One timer kept no later than the earliest deadline asked of it, and moved only when a
/// deadline comes earlier than the one it is armed for: a later deadline leaves it be (it
/// fires early, the owner checks its clocks and asks again), so busy I/O never touches the
/// timer heap.
struct DeadlineTimer {
    private var id: TimerID?
    /// The instant it is armed for (meaningful while `id` is set).
    private var at: UInt64 = 0

    /// Makes sure the timer fires no later than `deadline` (`loop.now` nanoseconds).
    mutating func arm(noLaterThan deadline: UInt64, handler: EventHandler, tag: UInt32, loop: EventLoop) {
        if let id {
            guard deadline < at else { return }
            loop.cancelTimer(id)
        }
        let now = loop.now
        at = max(deadline, now)
        id = loop.scheduleTimer(after: at &- now, handler: handler, tag: tag)
    }

    /// The timer fired: it is no longer armed.
    mutating func fired() { id = nil }

    mutating func cancel(loop: EventLoop) {
        if let id { loop.cancelTimer(id) }
        id = nil
    }
}
