#if canImport(Glibc)
import Glibc
#endif

/// A pool of equally sized byte blocks owned by one event loop (no locking).
///
/// Connections take a block only while they hold unsent bytes and give it back as soon as
/// it drains, so an idle connection holds no buffer memory at all. The pool keeps at most
/// `maxCached` free blocks; beyond that, returned blocks are freed.
///
/// Blocks of `mappingThreshold` bytes or more are mapped from the kernel one by one rather
/// than taken from the C heap, so a freed block gives its pages back. From the heap, a burst
/// of connections each holding a block for a moment left every page those blocks touched
/// resident for good: the heap cannot shrink past the small, long-lived objects allocated
/// between the blocks (3,000 connections opened at once: ~600 bytes per idle connection
/// afterwards, `bench/run --only memory`). Cached blocks are reused without a system call;
/// past the first `residentCached`, their pages are given back while they wait.
public final class BufferPool {
    public let blockSize: Int
    public let maxCached: Int
    private var free: [UnsafeMutableRawPointer] = []
    /// Blocks handed out and not yet returned.
    public private(set) var outstanding = 0
    /// Bytes mapped per block (the block size rounded up to pages), or 0 when blocks come
    /// from the heap.
    private let mappedLength: Int

    /// Blocks at least this large are mapped (`mmap`); smaller ones come from the heap.
    public static let mappingThreshold = 16 * 1024

    public init(blockSize: Int, maxCached: Int = 256) {
        precondition(blockSize > 0, "buffer blocks must hold at least one byte")
        self.blockSize = blockSize
        self.maxCached = maxCached
        if blockSize >= Self.mappingThreshold {
            let page = max(Int(sysconf(Int32(_SC_PAGESIZE))), 4096)
            mappedLength = (blockSize + page - 1) / page * page
        } else {
            mappedLength = 0
        }
    }

    deinit {
        for block in free { release(block) }
    }

    public var cachedCount: Int { free.count }

    public func take() -> UnsafeMutableRawPointer {
        outstanding += 1
        if let block = free.popLast() { return block }
        return allocate()
    }

    public func give(_ block: UnsafeMutableRawPointer) {
        outstanding -= 1
        guard free.count < maxCached else { return release(block) }
        if mappedLength > 0 && free.count >= Self.residentCached {
            // Past the hot set (the cache is LIFO, so these are the blocks a burst left
            // behind): keep the mapping for reuse, give its pages back.
            madvise(block, mappedLength, MADV_DONTNEED)
        }
        free.append(block)
    }

    /// Cached mapped blocks kept resident; those cached beyond them keep their mapping only
    /// (reusing one costs page faults, not a system call to map it).
    public static let residentCached = 64

    private func allocate() -> UnsafeMutableRawPointer {
        guard mappedLength > 0 else { return UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 16) }
        let mapped = mmap(nil, mappedLength, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            // As the heap allocator does when it has nothing left to give.
            fatalError("out of memory: cannot map a \(mappedLength)-byte buffer block (errno \(errno))")
        }
        return mapped
    }

    private func release(_ block: UnsafeMutableRawPointer) {
        if mappedLength > 0 {
            munmap(block, mappedLength)
        } else {
            block.deallocate()
        }
    }
}
