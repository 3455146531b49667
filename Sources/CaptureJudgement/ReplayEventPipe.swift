import Dispatch
import Replay
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Batches of replay events from the thread that reads and reassembles a capture to the
/// thread that judges them. At most `depth` batches exist: the reader waits for an emptied
/// one when all are full or being judged, so memory stays bounded whatever the capture's
/// size, and batches are reused rather than made anew.
final class ReplayEventPipe: Sendable {
    private let full = Mutex<[ReplayEventBatch?]>([])
    private let empty: Mutex<[ReplayEventBatch]>
    /// Counts the entries of `full` (a nil entry ends the stream).
    private let filled = DispatchSemaphore(value: 0)
    /// Counts the entries of `empty`. Made at 0 and raised to `depth`: libdispatch traps when
    /// a semaphore is freed below the value it was made with, which a reader that stopped
    /// early (a file that is no capture) would leave.
    private let available = DispatchSemaphore(value: 0)

    init(depth: Int = 4) {
        empty = Mutex((0..<depth).map { _ in ReplayEventBatch() })
        for _ in 0..<depth { available.signal() }
    }

    // MARK: The reading side

    /// An empty batch to fill (waiting while every batch is full or being judged).
    func take() -> ReplayEventBatch {
        available.wait()
        return empty.withLock { $0.removeLast() }
    }

    /// Hands `batch` to the judging side.
    func send(_ batch: ReplayEventBatch) {
        full.withLock { $0.append(batch) }
        filled.signal()
    }

    /// Ends the stream: after the batches sent, `receive` answers nil.
    func close() {
        full.withLock { $0.append(nil) }
        filled.signal()
    }

    // MARK: The judging side

    /// The next batch, in the order sent; nil once the stream has ended.
    func receive() -> ReplayEventBatch? {
        filled.wait()
        return full.withLock { $0.removeFirst() }
    }

    /// Gives a judged batch back to be filled again.
    func giveBack(_ batch: ReplayEventBatch) {
        var batch = batch
        batch.removeAll()
        empty.withLock { $0.append(batch) }
        available.signal()
    }
}

/// A thread that runs `body` and can be waited for.
final class JoinableThread {
    private var thread = pthread_t()

    /// Nil when no thread can be had (resource limits); `body` has not run then.
    init?(_ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        guard pthread_create(&thread, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box) == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            return nil
        }
    }

    /// Waits for `body` to return.
    func join() {
        pthread_join(thread, nil)
    }
}
