#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import L7Parsers

/// The free lists behind nghttp2's allocations. Each case runs on a thread of its own, so
/// its pool starts empty whatever other tests did on theirs.
@Suite struct HTTP2MemoryTests {
    @Test func aFreedBlockIsReusedForTheNextAllocationOfItsClass() {
        onNewThread {
            let pool = HTTP2Memory.threadPool()
            let first = pool.allocate(100)!
            pool.release(first)
            #expect(pool.keptBlocks == [0, 1, 0, 0], "100 bytes + 16 of header: the 128-byte class")
            let second = pool.allocate(112)!
            #expect(second == first, "the kept block comes back")
            #expect(pool.keptBlocks.allSatisfy { $0 == 0 })
            let other = pool.allocate(113)!
            #expect(other != first, "113 + 16 bytes need the next class")
            pool.release(second)
            pool.release(other)
            #expect(pool.keptBlocks == [0, 1, 1, 0])
        }
    }

    @Test func classesCoverEverySizeAndLargerRequestsAreNotKept() {
        #expect(HTTP2Memory.sizeClass(for: 0) == 0)
        #expect(HTTP2Memory.sizeClass(for: 48) == 0)
        #expect(HTTP2Memory.sizeClass(for: 49) == 1)
        #expect(HTTP2Memory.sizeClass(for: 496) == 3)
        #expect(HTTP2Memory.sizeClass(for: 497) == nil)
        #expect(HTTP2Memory.sizeClass(for: -1) == nil)
        for bytes in 0...496 {
            let sizeClass = HTTP2Memory.sizeClass(for: bytes)!
            #expect(HTTP2Memory.payloadBytes(of: sizeClass) >= bytes)
            if sizeClass > 0 { #expect(HTTP2Memory.payloadBytes(of: sizeClass - 1) < bytes, "the smallest class that fits") }
        }
        onNewThread {
            let pool = HTTP2Memory.threadPool()
            let large = pool.allocate(100_000)!
            memset(large, 0xAB, 100_000)
            pool.release(large)
            #expect(pool.keptBlocks.allSatisfy { $0 == 0 }, "a large block goes back to free")
            #expect(pool.allocate(Int.max) == nil, "a size that cannot be had is refused, not wrapped")
        }
    }

    @Test func keptBlocksAreBoundedPerClass() {
        onNewThread {
            let pool = HTTP2Memory.threadPool()
            for sizeClass in 0..<HTTP2Memory.classCount {
                let blocks = (0..<2_000).map { _ in pool.allocate(HTTP2Memory.payloadBytes(of: sizeClass))! }
                for block in blocks { pool.release(block) }
            }
            let limits = (0..<HTTP2Memory.classCount).map { HTTP2Memory.bytesPerClass >> (6 + $0) }
            #expect(pool.keptBlocks == limits)
            #expect(zip(pool.keptBlocks, 0...).map { $0 * (64 << $1) }.reduce(0, +) == HTTP2Memory.classCount * 32_768)
        }
    }

    @Test func reallocationKeepsTheBytesAcrossClassesAndIntoLargeBlocks() {
        onNewThread {
            let pool = HTTP2Memory.threadPool()
            var payload = pool.allocate(10)!
            for index in 0..<10 { payload.storeBytes(of: UInt8(index), toByteOffset: index, as: UInt8.self) }
            #expect(pool.reallocate(payload, to: 40) == payload, "still fits its block")
            var size = 10
            for grown in [200, 3_000, 50_000, 70_000, 20] {
                payload = pool.reallocate(payload, to: grown)!
                for index in 0..<min(10, grown) {
                    #expect(payload.load(fromByteOffset: index, as: UInt8.self) == UInt8(index), "after \(size) -> \(grown)")
                }
                size = grown
            }
            pool.release(payload)
            #expect(pool.reallocate(nil, to: 8) != nil, "nil reallocates as a new block")
        }
    }

    @Test func aPoolUsedFromAnotherThreadFallsBackToMallocAndFree() {
        // An endpoint made on one thread and used on another (a task that moved) must not
        // touch the first thread's lists from the second: they are not locked.
        var owner: HTTP2Memory.Pool?
        var kept: UnsafeMutableRawPointer?
        onNewThread {
            owner = HTTP2Memory.threadPool()
            let block = owner!.allocate(32)!
            owner!.release(block)
            #expect(owner!.keptBlocks[0] == 1)
            onNewThread {
                let foreign = owner!
                #expect(!foreign.isOwnedHere)
                let fresh = foreign.allocate(32)!
                #expect(fresh != block, "the owner's kept block is not taken from another thread")
                foreign.release(fresh)
                kept = foreign.allocate(32)
            }
            #expect(owner!.keptBlocks[0] == 1, "nothing was taken from or added to the owner's lists")
            owner!.release(kept)
            #expect(owner!.keptBlocks[0] == 2, "a block made elsewhere joins the owner's lists when freed here")
        }
        // The owner thread ended: its pool kept nothing and belongs to no thread any more.
        #expect(owner!.keptBlocks.allSatisfy { $0 == 0 })
        #expect(!owner!.isOwnedHere)
        let late = owner!.allocate(32)!
        owner!.release(late)
        #expect(owner!.keptBlocks.allSatisfy { $0 == 0 }, "an ownerless pool keeps nothing")
    }

    @Test func nghttp2SessionsRunOnThePoolsFreeLists() {
        onNewThread {
            let pool = HTTP2Memory.threadPool()
            do {
                let server = HTTP2Endpoint(role: .server)
                let client = HTTP2Endpoint(role: .client)
                for round in 0..<50 {
                    let id = client.submitRequest(HTTP2HeaderBlock([
                        HTTP2Header(":method", "GET"), HTTP2Header(":scheme", "http"),
                        HTTP2Header(":authority", "example"), HTTP2Header(":path", "/r/\(round)"),
                    ]), hasBody: false)!
                    HTTP2TestConnection.pump(client, server)
                    var heads = 0
                    for event in server.takeEvents() {
                        if case .head(let stream, _, _) = event {
                            heads += 1
                            _ = server.submitResponse(stream: stream, HTTP2HeaderBlock([HTTP2Header(":status", "204")]),
                                                      hasBody: false)
                        }
                    }
                    #expect(heads == 1)
                    HTTP2TestConnection.pump(server, client)
                    #expect(client.takeEvents().contains(.closed(stream: id, errorCode: 0)))
                }
                #expect(pool.keptBlocks.reduce(0, +) > 0, "stream allocations came back to the lists")
            }
        }
    }
}
