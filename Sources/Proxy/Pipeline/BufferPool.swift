/// A pool of equally sized byte blocks owned by one event loop (no locking).
///
/// Connections take a block only while they hold unsent bytes and give it back as soon as
/// it drains, so an idle connection holds no buffer memory at all. The pool keeps at most
/// `maxCached` free blocks; beyond that, returned blocks are freed.
public final class BufferPool {
    public let blockSize: Int
    public let maxCached: Int
    private var free: [UnsafeMutableRawPointer] = []
    /// Blocks handed out and not yet returned.
    public private(set) var outstanding = 0

    public init(blockSize: Int, maxCached: Int = 256) {
        precondition(blockSize > 0, "buffer blocks must hold at least one byte")
        self.blockSize = blockSize
        self.maxCached = maxCached
    }

    deinit {
        for block in free { block.deallocate() }
    }

    public var cachedCount: Int { free.count }

    public func take() -> UnsafeMutableRawPointer {
        outstanding += 1
        if let block = free.popLast() { return block }
        return UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 16)
    }

    public func give(_ block: UnsafeMutableRawPointer) {
        outstanding -= 1
        if free.count < maxCached {
            free.append(block)
        } else {
            block.deallocate()
        }
    }
}
