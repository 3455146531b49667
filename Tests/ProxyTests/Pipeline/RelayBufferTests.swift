import Testing
@testable import Proxy
#if canImport(Glibc)
import Glibc
#endif

@Suite struct RelayBufferTests {
    @Test func borrowsABlockOnlyWhileHoldingBytes() {
        let pool = BufferPool(blockSize: 16, maxCached: 4)
        var buffer = RelayBuffer()
        #expect(!buffer.isAllocated)
        let space = buffer.writableSpace(pool: pool)
        #expect(space.count == 16)
        #expect(pool.outstanding == 1)
        space.copyBytes(from: Array("hello".utf8))
        buffer.didWrite(5)
        #expect(Array(buffer.readableBytes) == Array("hello".utf8))
        buffer.didRead(5, pool: pool)
        #expect(!buffer.isAllocated, "a drained buffer goes back to the pool")
        #expect(pool.outstanding == 0)
        #expect(pool.cachedCount == 1)
    }

    @Test func capacityIsBoundedAndCompactionKeepsOrder() {
        let pool = BufferPool(blockSize: 8)
        var buffer = RelayBuffer()
        buffer.writableSpace(pool: pool).copyBytes(from: Array("abcdefgh".utf8))
        buffer.didWrite(8)
        #expect(buffer.writableSpace(pool: pool).count == 0, "a full buffer offers no space: the reader must stop")
        buffer.didRead(3, pool: pool)
        let space = buffer.writableSpace(pool: pool)
        #expect(space.count == 3)
        space.copyBytes(from: Array("XYZ".utf8))
        buffer.didWrite(3)
        #expect(String(decoding: buffer.readableBytes, as: UTF8.self) == "defghXYZ")
    }

    @Test func poolKeepsAtMostMaxCachedBlocks() {
        let pool = BufferPool(blockSize: 32, maxCached: 2)
        let blocks = (0..<5).map { _ in pool.take() }
        for block in blocks { pool.give(block) }
        #expect(pool.cachedCount == 2)
        #expect(pool.outstanding == 0)
    }

    /// After a burst, only the hot set of cached blocks keeps its pages (asked of the kernel
    /// with mincore); the rest stay mapped for reuse, and are usable again at once.
    @Test func cachedBlocksPastTheHotSetGiveTheirPagesBack() {
        let pool = BufferPool(blockSize: 65536, maxCached: 256)
        let burst = BufferPool.residentCached + 40
        let blocks = (0..<burst).map { _ in pool.take() }
        for block in blocks { block.storeBytes(of: 0x5a, as: UInt8.self) }
        for block in blocks { pool.give(block) }
        #expect(pool.cachedCount == burst)
        func resident(_ block: UnsafeMutableRawPointer) -> Bool {
            var page: UInt8 = 0
            return mincore(block, 4096, &page) == 0 && page & 1 == 1
        }
        #expect(blocks.filter(resident).count == BufferPool.residentCached)
        let again = pool.take()
        again.storeBytes(of: 7, as: UInt8.self)
        #expect(again.load(as: UInt8.self) == 7)
        pool.give(again)
    }

    @Test func discardReturnsUnsentBytes() {
        let pool = BufferPool(blockSize: 8)
        var buffer = RelayBuffer()
        _ = buffer.writableSpace(pool: pool)
        buffer.didWrite(4)
        buffer.discard(pool: pool)
        #expect(!buffer.isAllocated)
        #expect(pool.outstanding == 0)
    }
}
