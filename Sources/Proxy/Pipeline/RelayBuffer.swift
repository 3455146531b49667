/// The bytes in flight in one direction of one connection: a window `[readIndex, writeIndex)`
/// over a block borrowed from a `BufferPool`.
///
/// Its capacity is the pool's block size: when it is full, the connection stops reading that
/// side (backpressure), so memory per connection is bounded. Only an L7 session waiting for
/// a message larger than one block makes it `grow` (to at most the session's declared
/// message limit); that larger allocation is freed as soon as the buffer drains, and the
/// next bytes borrow a pool block again.
public struct RelayBuffer {
    private var block: UnsafeMutableRawPointer?
    private var readIndex: UInt32 = 0
    private var writeIndex: UInt32 = 0
    /// The size of an allocation of our own (not the pool's) after `grow`; 0 for a pool block.
    private var ownCapacity: UInt32 = 0

    public init() {}

    /// Whether a block is currently borrowed.
    public var isAllocated: Bool { block != nil }
    public var readableCount: Int { Int(writeIndex - readIndex) }
    public var isEmpty: Bool { writeIndex == readIndex }

    /// How many bytes the buffer can hold now.
    public func capacity(pool: BufferPool) -> Int { ownCapacity > 0 ? Int(ownCapacity) : pool.blockSize }

    /// Free space at the tail, compacting first when the head has been consumed.
    public mutating func writableSpace(pool: BufferPool) -> UnsafeMutableRawBufferPointer {
        if block == nil { block = pool.take() }
        let capacity = capacity(pool: pool)
        if readIndex > 0, Int(writeIndex) == capacity {
            let count = Int(writeIndex - readIndex)
            block!.copyMemory(from: block! + Int(readIndex), byteCount: count)
            readIndex = 0
            writeIndex = UInt32(count)
        }
        return UnsafeMutableRawBufferPointer(start: block! + Int(writeIndex), count: capacity - Int(writeIndex))
    }

    public mutating func didWrite(_ count: Int) { writeIndex += UInt32(count) }

    /// The bytes waiting to be sent.
    public var readableBytes: UnsafeRawBufferPointer {
        guard let block else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: block + Int(readIndex), count: Int(writeIndex - readIndex))
    }

    /// Marks `count` bytes as sent; returns the block to the pool once nothing is left.
    public mutating func didRead(_ count: Int, pool: BufferPool) {
        readIndex += UInt32(count)
        if readIndex == writeIndex { releaseIfEmpty(pool: pool) }
    }

    /// Makes room for at least `capacity` bytes in one piece (a message larger than a pool
    /// block that its session must see whole), keeping what is held. `capacity` must fit in
    /// 32 bits; sessions bound it by their message limit.
    public mutating func grow(toCapacity capacity: Int, pool: BufferPool) {
        guard capacity > self.capacity(pool: pool) else { return }
        precondition(capacity <= Int(UInt32.max), "a relay buffer holds at most 4 GiB")
        let larger = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        let count = readableCount
        if let block {
            larger.copyMemory(from: block + Int(readIndex), byteCount: count)
            free(block, pool: pool)
        }
        block = larger
        readIndex = 0
        writeIndex = UInt32(count)
        ownCapacity = UInt32(capacity)
    }

    public mutating func releaseIfEmpty(pool: BufferPool) {
        guard let block, readIndex == writeIndex else { return }
        free(block, pool: pool)
        self.block = nil
        readIndex = 0
        writeIndex = 0
        ownCapacity = 0
    }

    private func free(_ block: UnsafeMutableRawPointer, pool: BufferPool) {
        if ownCapacity > 0 { block.deallocate() } else { pool.give(block) }
    }

    /// Drops whatever is held (on abort) and returns the block.
    public mutating func discard(pool: BufferPool) {
        readIndex = writeIndex
        releaseIfEmpty(pool: pool)
    }
}
