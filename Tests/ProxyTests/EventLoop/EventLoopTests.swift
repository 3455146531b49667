import Testing
import Synchronization
import Dispatch
@testable import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// Records what the loop delivered.
private final class Recorder: EventHandler {
    var readiness: [(Readiness, UInt32)] = []
    var timers: [UInt32] = []
    var onTimer: ((UInt32, EventLoop) -> Void)?
    var onReadiness: ((Readiness, UInt32, EventLoop) -> Void)?

    func handleReadiness(_ readiness: Readiness, tag: UInt32, loop: EventLoop) {
        self.readiness.append((readiness, tag))
        onReadiness?(readiness, tag, loop)
    }

    func handleTimer(tag: UInt32, loop: EventLoop) {
        timers.append(tag)
        onTimer?(tag, loop)
    }
}

private func socketPair() -> (Socket, Socket) {
    var fds: [Int32] = [0, 0]
    let result = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds)
    precondition(result == 0)
    return (Socket(descriptor: fds[0]), Socket(descriptor: fds[1]))
}

@Suite struct EventLoopTests {
    @Test func timersFireInOrderAndCancelledOnesDoNot() throws {
        let loop = try EventLoop()
        let recorder = Recorder()
        _ = loop.scheduleTimer(after: 30_000_000, handler: recorder, tag: 3)
        _ = loop.scheduleTimer(after: 10_000_000, handler: recorder, tag: 1)
        let cancelled = loop.scheduleTimer(after: 20_000_000, handler: recorder, tag: 2)
        loop.cancelTimer(cancelled)
        let start = MonotonicClock.now()
        recorder.onTimer = { tag, loop in if tag == 3 { loop.stop() } }
        try loop.run()
        #expect(recorder.timers == [1, 3])
        #expect(MonotonicClock.now() - start >= 30_000_000, "a timer must never fire early")
    }

    @Test func readinessIsDeliveredWithTheHandlersTag() throws {
        let loop = try EventLoop()
        let (left, right) = socketPair()
        defer { left.close(); right.close() }
        let recorder = Recorder()
        let token = try loop.register(left.descriptor, handler: recorder, tag: 7)
        recorder.onReadiness = { readiness, _, loop in
            if readiness.contains(.readable) { loop.stop() }
        }
        var byte: UInt8 = 42
        _ = withUnsafeBytes(of: &byte) { try? right.write(from: $0) }
        try loop.run()
        #expect(recorder.readiness.contains { $0.0.contains(.readable) && $0.1 == 7 })
        loop.deregister(token)
        #expect(loop.registeredCount == 0)
    }

    @Test func anotherThreadCanWakeTheLoopWithATask() throws {
        let loop = try EventLoop()
        let handle = loop.handle
        let ran = Atomic<Bool>(false)
        let thread = Thread {
            usleep(20_000)
            handle.execute { loop in
                ran.store(true, ordering: .relaxed)
                loop.stop()
            }
        }
        thread.start()
        try loop.run()
        thread.join()
        let didRun = ran.load(ordering: .relaxed)
        #expect(didRun)
    }

    @Test func deregisteredHandlersGetNoMoreEvents() throws {
        let loop = try EventLoop()
        let (left, right) = socketPair()
        defer { left.close(); right.close() }
        let recorder = Recorder()
        let token = try loop.register(left.descriptor, handler: recorder, tag: 1)
        loop.deregister(token)
        var byte: UInt8 = 1
        _ = withUnsafeBytes(of: &byte) { try? right.write(from: $0) }
        let stopper = Recorder()
        _ = loop.scheduleTimer(after: 20_000_000, handler: stopper, tag: 0)
        stopper.onTimer = { _, loop in loop.stop() }
        try loop.run()
        #expect(recorder.readiness.isEmpty)
    }
}

/// A plain joinable thread for tests.
final class Thread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func start() {
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { raw in
            Unmanaged<Thread>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box)
    }
    func join() { pthread_join(thread, nil) }
}
