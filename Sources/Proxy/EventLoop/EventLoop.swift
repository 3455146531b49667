import CSluiceShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Something the event loop calls back: on readiness of a registered descriptor, when a
/// timer it scheduled fires, or when it asked to be resumed on the next iteration.
///
/// `tag` is the handler's own number for the descriptor or timer (a connection uses one
/// tag for its downstream socket and another for its upstream socket).
public protocol EventHandler: AnyObject {
    func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop)
    func handleTimer(tag: UInt32, loop: EventLoop)
    func handleResume(loop: EventLoop)
}

extension EventHandler {
    public func handleTimer(tag: UInt32, loop: EventLoop) {}
    public func handleResume(loop: EventLoop) {}
}

/// A descriptor's registration with the loop; stale after `deregister`.
public struct RegistrationToken: Hashable, Sendable {
    let rawValue: UInt64
    var slot: Int { Int(rawValue & 0xffff_ffff) }
    var generation: UInt32 { UInt32(rawValue >> 32) }
}

/// The thread-safe side of an event loop: other threads hand it work and wake it.
public final class EventLoopHandle: Sendable {
    private let wakeupDescriptor: Int32
    private let pending = Mutex<[@Sendable (EventLoop) -> Void]>([])

    init(wakeupDescriptor: Int32) { self.wakeupDescriptor = wakeupDescriptor }

    /// Runs `task` on the loop's thread at its next iteration.
    public func execute(_ task: @escaping @Sendable (EventLoop) -> Void) {
        pending.withLock { $0.append(task) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeupDescriptor, &one, 8)
    }

    func takePending() -> [@Sendable (EventLoop) -> Void] {
        pending.withLock { tasks in
            defer { tasks.removeAll(keepingCapacity: true) }
            return tasks
        }
    }
}

/// One epoll event loop, run by exactly one thread.
///
/// Descriptors are registered edge-triggered for reading and writing at once, so the loop
/// never has to change interest as buffers fill and drain: handlers remember readiness
/// themselves and stop reading when their buffer is full (backpressure). This replaces
/// the "batch interest changes per iteration" habit with "never change interest", which
/// costs no `epoll_ctl` per I/O at all.
///
/// Timers are kept in a `TimerHeap` (O(log n)); the loop samples the monotonic clock once
/// per iteration (`now`).
public final class EventLoop {
    private struct Registration {
        var handler: EventHandler?
        var tag: UInt32 = 0
        var generation: UInt32 = 0
        var descriptor: Int32 = -1
    }

    private struct TimerEntry {
        unowned(unsafe) let handler: EventHandler
        let tag: UInt32
    }

    private let epoll: Epoll
    private let wakeupDescriptor: Int32
    public let handle: EventLoopHandle
    private var registrations: [Registration] = [Registration()] // slot 0: the wakeup eventfd
    private var freeSlots: [Int] = []
    private var timers = TimerHeap<TimerEntry>()
    private var resumeQueue: [EventHandler] = []
    private var running = false
    /// The object this loop serves (a worker, which owns the loop and so outlives it), for
    /// tasks handed in through `handle`. Not `weak`: a weak reference gives the worker a side
    /// table, and every retain of it would take the slow path.
    public unowned(unsafe) var owner: AnyObject?

    /// Monotonic nanoseconds, sampled once per iteration.
    public private(set) var now: UInt64 = MonotonicClock.now()

    public static let maxEventsPerWait: Int32 = 256

    public init() throws {
        epoll = try Epoll()
        wakeupDescriptor = try retryingInterrupts("eventfd") {
            eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        }.get()
        handle = EventLoopHandle(wakeupDescriptor: wakeupDescriptor)
        try epoll.add(wakeupDescriptor, events: EPOLLIN.rawValue | EPOLLET.rawValue, token: 0)
    }

    deinit {
        epoll.close()
        _ = Glibc.close(wakeupDescriptor)
    }

    // MARK: Descriptors

    /// Registers `descriptor` edge-triggered for reading, writing and peer close.
    /// The handler is retained until `deregister`.
    public func register(_ descriptor: Int32, handler: EventHandler, tag: UInt32) throws -> RegistrationToken {
        try register(descriptor, handler: handler, tag: tag,
                     events: EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue)
    }

    /// Registers `descriptor` edge-triggered for reading only (listeners, datagram sockets).
    public func registerForReading(_ descriptor: Int32, handler: EventHandler, tag: UInt32) throws -> RegistrationToken {
        try register(descriptor, handler: handler, tag: tag, events: EPOLLIN.rawValue)
    }

    private func register(_ descriptor: Int32, handler: EventHandler, tag: UInt32, events: UInt32) throws -> RegistrationToken {
        let slot: Int
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = registrations.count
            registrations.append(Registration())
        }
        registrations[slot].handler = handler
        registrations[slot].tag = tag
        registrations[slot].descriptor = descriptor
        let token = RegistrationToken(rawValue: UInt64(registrations[slot].generation) << 32 | UInt64(slot))
        do {
            try epoll.add(descriptor, events: events | EPOLLET.rawValue, token: token.rawValue)
        } catch {
            release(slot)
            throw error
        }
        return token
    }

    /// Removes the descriptor from epoll and drops the handler reference. Call before closing
    /// the descriptor. Events already collected for it in this iteration are ignored.
    public func deregister(_ token: RegistrationToken) {
        guard token.slot < registrations.count, registrations[token.slot].generation == token.generation,
              registrations[token.slot].handler != nil else { return }
        epoll.remove(registrations[token.slot].descriptor)
        release(token.slot)
    }

    /// Drops the handler reference of a descriptor that is about to be closed, without the
    /// `epoll_ctl` call: closing a descriptor nobody duplicated removes it from epoll. Events
    /// already collected for it in this iteration are ignored.
    public func forgetClosing(_ token: RegistrationToken) {
        guard token.slot < registrations.count, registrations[token.slot].generation == token.generation,
              registrations[token.slot].handler != nil else { return }
        release(token.slot)
    }

    private func release(_ slot: Int) {
        registrations[slot].handler = nil
        registrations[slot].descriptor = -1
        registrations[slot].generation &+= 1
        freeSlots.append(slot)
    }

    /// Number of registered descriptors (excluding the loop's own wakeup descriptor).
    public var registeredCount: Int { registrations.count - 1 - freeSlots.count }

    // MARK: Timers

    /// Calls `handler.handleTimer(tag:)` once, `delay` nanoseconds from now. The handler is
    /// not retained: it must cancel its timers before it goes away.
    public func scheduleTimer(after delay: UInt64, handler: EventHandler, tag: UInt32) -> TimerID {
        timers.schedule(at: now &+ delay, TimerEntry(handler: handler, tag: tag))
    }

    public func cancelTimer(_ id: TimerID) { timers.cancel(id) }

    public var scheduledTimerCount: Int { timers.count }

    // MARK: Resuming

    /// Calls `handler.handleResume` at the start of the next iteration, without waiting for
    /// an event. A handler that stopped early to be fair to others uses this to continue.
    public func resumeSoon(_ handler: EventHandler) { resumeQueue.append(handler) }

    // MARK: Running

    /// Runs until `stop()` is called from a handler or a task.
    public func run() throws {
        running = true
        let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(Self.maxEventsPerWait))
        let events = UnsafeMutablePointer<UInt32>.allocate(capacity: Int(Self.maxEventsPerWait))
        defer { tokens.deallocate(); events.deallocate() }
        while running {
            now = MonotonicClock.now()
            runExpiredTimers()
            if !resumeQueue.isEmpty {
                let queue = resumeQueue
                resumeQueue.removeAll(keepingCapacity: true)
                for handler in queue { handler.handleResume(loop: self) }
            }
            guard running else { break }
            let count = try epoll.wait(tokens: tokens, events: events, capacity: Self.maxEventsPerWait,
                                       timeoutMilliseconds: waitTimeout())
            now = MonotonicClock.now()
            for index in 0..<count {
                let token = RegistrationToken(rawValue: tokens[index])
                if token.slot == 0 {
                    drainWakeups()
                    continue
                }
                let registration = registrations[token.slot]
                guard registration.generation == token.generation, let handler = registration.handler else { continue }
                handler.handleReadiness(Readiness(rawValue: events[index]), tag: registration.tag, loop: self)
            }
        }
    }

    /// Makes `run()` return after the current iteration.
    public func stop() { running = false }

    private func runExpiredTimers() {
        while let entry = timers.popExpired(now: now) {
            entry.handler.handleTimer(tag: entry.tag, loop: self)
        }
    }

    private func waitTimeout() -> Int32 {
        if !resumeQueue.isEmpty { return 0 }
        guard let deadline = timers.nextDeadline else { return -1 }
        let current = MonotonicClock.now()
        if deadline <= current { return 0 }
        // Round up so a timer never fires early and the loop never spins on a 0 ms wait.
        let milliseconds = (deadline - current + 999_999) / 1_000_000
        return Int32(min(milliseconds, UInt64(Int32.max)))
    }

    private func drainWakeups() {
        var value: UInt64 = 0
        while Glibc.read(wakeupDescriptor, &value, 8) == 8 {}
        for task in handle.takePending() { task(self) }
    }
}
