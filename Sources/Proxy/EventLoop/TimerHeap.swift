/// Identifies a scheduled timer so it can be cancelled; stale after it fires or is cancelled.
public struct TimerID: Hashable, Sendable {
    let slot: Int32
    let generation: UInt32
}

/// A binary min-heap of deadlines with O(log n) schedule, cancel and pop, and O(1) peek.
///
/// Each timer lives in a slot that remembers its position in the heap, so cancelling does
/// not leave a dead entry behind: a connection that closes takes its timers with it and
/// the heap never holds more entries than live timers. Timers with equal deadlines fire
/// in the order they were scheduled.
public struct TimerHeap<Payload> {
    /// Every connection keeps a few timers, so a slot's size counts: the 32-bit fields sit
    /// together before the payload (48 bytes with the event loop's payload, not 56).
    private struct Slot {
        var deadline: UInt64 = 0
        var sequence: UInt64 = 0
        /// Position in `heap`, -1 when not scheduled (slot numbers are 32-bit already).
        var heapIndex: Int32 = -1
        var generation: UInt32 = 0
        var payload: Payload?
    }

    private var slots: [Slot] = []
    private var freeSlots: [Int32] = []
    private var heap: [Int32] = []
    private var nextSequence: UInt64 = 0

    public init() {}

    public var count: Int { heap.count }
    public var isEmpty: Bool { heap.isEmpty }

    /// The earliest deadline, if any timer is scheduled.
    public var nextDeadline: UInt64? { heap.first.map { slots[Int($0)].deadline } }

    @discardableResult
    public mutating func schedule(at deadline: UInt64, _ payload: Payload) -> TimerID {
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = Int32(slots.count)
            slots.append(Slot())
        }
        nextSequence &+= 1
        slots[Int(slot)].deadline = deadline
        slots[Int(slot)].sequence = nextSequence
        slots[Int(slot)].payload = payload
        slots[Int(slot)].heapIndex = Int32(heap.count)
        heap.append(slot)
        siftUp(heap.count - 1)
        return TimerID(slot: slot, generation: slots[Int(slot)].generation)
    }

    /// Removes a timer that has not fired yet; returns false for a stale id.
    @discardableResult
    public mutating func cancel(_ id: TimerID) -> Bool {
        guard Int(id.slot) < slots.count, slots[Int(id.slot)].generation == id.generation,
              slots[Int(id.slot)].heapIndex >= 0 else { return false }
        remove(at: Int(slots[Int(id.slot)].heapIndex))
        return true
    }

    /// Whether `id` names a timer that is still scheduled.
    public func isScheduled(_ id: TimerID) -> Bool {
        Int(id.slot) < slots.count && slots[Int(id.slot)].generation == id.generation
            && slots[Int(id.slot)].heapIndex >= 0
    }

    /// Removes and returns the earliest timer whose deadline is at or before `now`.
    public mutating func popExpired(now: UInt64) -> Payload? {
        guard let first = heap.first, slots[Int(first)].deadline <= now else { return nil }
        return remove(at: 0)
    }

    @discardableResult
    private mutating func remove(at index: Int) -> Payload? {
        let slot = heap[index]
        let last = heap.removeLast()
        if index < heap.count {
            heap[index] = last
            slots[Int(last)].heapIndex = Int32(index)
            siftDown(index)
            siftUp(Int(slots[Int(last)].heapIndex))
        }
        let payload = slots[Int(slot)].payload
        slots[Int(slot)].payload = nil
        slots[Int(slot)].heapIndex = -1
        slots[Int(slot)].generation &+= 1
        freeSlots.append(slot)
        return payload
    }

    private func less(_ a: Int32, _ b: Int32) -> Bool {
        let left = slots[Int(a)], right = slots[Int(b)]
        return left.deadline != right.deadline ? left.deadline < right.deadline : left.sequence < right.sequence
    }

    private mutating func siftUp(_ start: Int) {
        var index = start
        while index > 0 {
            let parent = (index - 1) / 2
            guard less(heap[index], heap[parent]) else { break }
            swapAt(index, parent)
            index = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var index = start
        while true {
            let left = 2 * index + 1
            guard left < heap.count else { break }
            var smallest = left
            if left + 1 < heap.count, less(heap[left + 1], heap[left]) { smallest = left + 1 }
            guard less(heap[smallest], heap[index]) else { break }
            swapAt(index, smallest)
            index = smallest
        }
    }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        slots[Int(heap[a])].heapIndex = Int32(a)
        slots[Int(heap[b])].heapIndex = Int32(b)
    }
}
