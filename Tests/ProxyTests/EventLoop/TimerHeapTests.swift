import Testing
@testable import Proxy
import PolicyEngine

@Suite struct TimerHeapTests {
    @Test func popsInDeadlineOrder() {
        var heap = TimerHeap<Int>()
        for (deadline, value) in [(50, 5), (10, 1), (30, 3), (20, 2), (40, 4)] {
            heap.schedule(at: UInt64(deadline), value)
        }
        #expect(heap.nextDeadline == 10)
        #expect(heap.popExpired(now: 5) == nil)
        var fired: [Int] = []
        while let value = heap.popExpired(now: 100) { fired.append(value) }
        #expect(fired == [1, 2, 3, 4, 5])
        #expect(heap.isEmpty)
    }

    @Test func equalDeadlinesFireInSchedulingOrder() {
        var heap = TimerHeap<Int>()
        for value in 0..<20 { heap.schedule(at: 7, value) }
        var fired: [Int] = []
        while let value = heap.popExpired(now: 7) { fired.append(value) }
        #expect(fired == Array(0..<20))
    }

    @Test func cancelRemovesTheEntryAndStaleIdsAreIgnored() {
        var heap = TimerHeap<String>()
        let a = heap.schedule(at: 10, "a")
        let b = heap.schedule(at: 20, "b")
        let c = heap.schedule(at: 30, "c")
        let cancelled = heap.cancel(b)
        let cancelledTwice = heap.cancel(b)
        #expect(cancelled)
        #expect(!cancelledTwice, "cancelling twice must be a no-op")
        #expect(heap.count == 2)
        #expect(heap.popExpired(now: 100) == "a")
        let cancelledFired = heap.cancel(a)
        #expect(!cancelledFired, "a fired timer's id is stale")
        // The slot of `b` is reused; its old id must not cancel the new timer.
        let d = heap.schedule(at: 5, "d")
        let cancelledReused = heap.cancel(b)
        #expect(!cancelledReused)
        #expect(heap.isScheduled(d))
        #expect(heap.popExpired(now: 100) == "d")
        #expect(heap.popExpired(now: 100) == "c")
        #expect(!heap.isScheduled(c))
    }

    /// Random schedules and cancels against a plain sorted list.
    @Test func agreesWithAReferenceUnderRandomOperations() {
        var generator = SplitMix64(seed: 42)
        var heap = TimerHeap<Int>()
        var reference: [(deadline: UInt64, sequence: Int, id: TimerID)] = []
        var sequence = 0
        for _ in 0..<20_000 {
            switch generator.next() % 3 {
            case 0, 1:
                let deadline = generator.next() % 1_000
                let id = heap.schedule(at: deadline, sequence)
                reference.append((deadline, sequence, id))
                sequence += 1
            default:
                guard !reference.isEmpty else { continue }
                let index = Int(generator.next() % UInt64(reference.count))
                let cancelled = heap.cancel(reference[index].id)
                #expect(cancelled)
                reference.remove(at: index)
            }
            #expect(heap.count == reference.count)
        }
        reference.sort { ($0.deadline, $0.sequence) < ($1.deadline, $1.sequence) }
        var fired: [Int] = []
        while let value = heap.popExpired(now: .max) { fired.append(value) }
        #expect(fired == reference.map(\.sequence))
    }
}
