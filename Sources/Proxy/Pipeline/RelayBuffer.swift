/// The bytes in flight in one direction of one connection: a bounded window
/// `[readIndex, writeIndex)` over a block borrowed from a `BufferPool`.
///
/// Its capacity is the pool's block size and never grows: when it is full, the connection
/// stops reading that side (backpressure), so memory per connection is bounded.
public struct RelayBuffer {
    private var block: UnsafeMutableRawPointer?
    private var readIndex = 0
    private var writeIndex = 0

    public init() {}

    /// Whether a block is currently borrowed.
    public var isAllocated: Bool { block != nil }
    public var readableCount: Int { writeIndex - readIndex }
    public var isEmpty: Bool { writeIndex == readIndex }

    /// Free space at the tail, compacting first when the head has been consumed.
    public mutating func writableSpace(pool: BufferPool) -> UnsafeMutableRawBufferPointer {
        if block == nil { block = pool.take() }
        if readIndex > 0, writeIndex == pool.blockSize {
            let count = writeIndex - readIndex
            block!.copyMemory(from: block! + readIndex, byteCount: count)
            readIndex = 0
            writeIndex = count
        }
        return UnsafeMutableRawBufferPointer(start: block! + writeIndex, count: pool.blockSize - writeIndex)
    }

    public mutating func didWrite(_ count: Int) { writeIndex += count }

    /// The bytes waiting to be sent.
    public var readableBytes: UnsafeRawBufferPointer {
        guard let block else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: block + readIndex, count: writeIndex - readIndex)
    }

    /// Marks `count` bytes as sent; returns the block to the pool once nothing is left.
    public mutating func didRead(_ count: Int, pool: BufferPool) {
        readIndex += count
        if readIndex == writeIndex { releaseIfEmpty(pool: pool) }
    }

    public mutating func releaseIfEmpty(pool: BufferPool) {
        guard let block, readIndex == writeIndex else { return }
        pool.give(block)
        self.block = nil
        readIndex = 0
        writeIndex = 0
    }

    /// Drops whatever is held (on abort) and returns the block.
    public mutating func discard(pool: BufferPool) {
        readIndex = writeIndex
        releaseIfEmpty(pool: pool)
    }
}
