#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import L7Parsers

/// The spares behind received header blocks and body chunks. Each case runs on a thread of
/// its own, so its recycler starts empty whatever other tests did on theirs.
@Suite struct HTTP2RecyclerTests {
    /// A proxy's path on one thread: a head received by one endpoint is submitted by another,
    /// whose sent HEADERS frame gives the storage back; the next head received reuses it. The
    /// next head must arrive exactly, with nothing of the earlier one's bytes, and the frame
    /// that left before the reuse must reach its peer intact.
    @Test func aForwardedHeadsStorageComesBackForTheNextHeadWithNothingOfTheFormerLeft() {
        onNewThread {
            let recycler = HTTP2Recycler.forThisThread()
            let (client, proxyServer) = HTTP2TestConnection.connected()
            let (proxyClient, server) = HTTP2TestConnection.connected()
            let first = Self.head(path: "/first/a/rather/long/path?with=query",
                                  extra: HTTP2Header("x-one", String(repeating: "1", count: 100)))
            let second = Self.head(path: "/2", extra: HTTP2Header("x-two", ""))

            _ = client.submitRequest(first, hasBody: false)
            HTTP2TestConnection.pump(client, proxyServer)
            var forwarded = Self.heads(proxyServer.takeEvents())
            #expect(forwarded.map(\.headers) == [first])
            let storage = forwarded.first?.storage.map(ObjectIdentifier.init)
            #expect(recycler.keptBlocks == 0)
            _ = proxyClient.submitRequest(forwarded.removeFirst(), hasBody: false)
            // The HEADERS frame is written (held here, not delivered yet): the storage comes back.
            guard case .success(let written) = proxyClient.takeOutput(limit: 1 << 20) else {
                Issue.record("no output")
                return
            }
            #expect(recycler.keptBlocks == 1)

            _ = client.submitRequest(second, hasBody: false)
            HTTP2TestConnection.pump(client, proxyServer)
            let next = Self.heads(proxyServer.takeEvents())
            #expect(next.map(\.headers) == [second], "nothing of the first head's bytes")
            #expect(next.first?.storage.map(ObjectIdentifier.init) == storage, "the storage was reused")
            #expect(next.first?.byteCount == second.reduce(0) { $0 + $1.name.count + $1.value.count },
                    "the reused storage holds this head's bytes only")
            #expect(recycler.keptBlocks == 0)

            written.withUnsafeBytes { _ = server.receive($0) }
            #expect(Self.heads(server.takeEvents()).map(\.headers) == [first], "what left before the reuse is intact")
        }
    }

    @Test func bodyChunksComeInKeptBuffersAndLeaveThemBack() {
        onNewThread {
            let recycler = HTTP2Recycler.forThisThread()
            let (client, server) = HTTP2TestConnection.connected()
            for (index, body) in [Array("ok\n".utf8), Array(repeating: 0x42, count: 1_000), Array("z".utf8)].enumerated() {
                let stream = client.submitRequest(Self.head(path: "/\(index)", extra: nil), hasBody: true)!
                client.appendBody(stream: stream, body)
                client.endBody(stream: stream)
                HTTP2TestConnection.pump(client, server)
                var received: [UInt8] = []
                for event in server.takeEvents() {
                    guard case .data(_, let bytes) = event else { continue }
                    received += bytes
                }
                #expect(received == body, "chunk \(index) arrived whole, nothing of an earlier one")
                // Both sides are on this thread: the client's queue, emptied when the stream's
                // last DATA left, is the buffer the server's chunk then arrived in.
                #expect(recycler.keptBuffers == 0)
            }
        }
    }

    @Test func aBlockSharedWithAnotherOwnerOrGrownPastTheStandardSizeIsNotKept() {
        onNewThread {
            let recycler = HTTP2Recycler.forThisThread()
            var shared = recycler.takeBlock()
            shared.append(name: Array("a".utf8), value: Array("b".utf8))
            let copy = shared
            recycler.give(shared)
            #expect(recycler.keptBlocks == 0, "another owner still reads it")
            #expect(copy.headers == [HTTP2Header("a", "b")])

            var grown = recycler.takeBlock()
            for index in 0..<40 { grown.append(name: Array("x-field-\(index)".utf8), value: Array(repeating: 0x61, count: 30)) }
            recycler.give(grown)
            #expect(recycler.keptBlocks == 0, "past the standard size: let go, so spares stay small")

            recycler.give(recycler.takeBlock())
            #expect(recycler.keptBlocks == 1)
            #expect(recycler.takeBlock().isEmpty, "a kept storage comes back empty")
        }
    }

    @Test func keptSparesAreBounded() {
        onNewThread {
            let recycler = HTTP2Recycler.forThisThread()
            for _ in 0..<100 { recycler.give(HTTP2HeaderBlock(standardCapacity: ())) }
            #expect(recycler.keptBlocks == HTTP2Recycler.maximumBlocks)

            for _ in 0..<100 {
                var buffer = Array(repeating: UInt8(7), count: 100)
                recycler.give(&buffer)
                #expect(buffer.isEmpty, "the caller's buffer is left empty")
            }
            #expect(recycler.keptBuffers == HTTP2Recycler.maximumBuffers)
            let taken = recycler.takeBuffer()
            #expect(taken.isEmpty && taken.capacity >= 100, "kept memory, no bytes")

            var large = [UInt8](repeating: 1, count: HTTP2Recycler.maximumBufferCapacity + 1)
            var none: [UInt8] = []
            let before = recycler.keptBuffers
            recycler.give(&large)
            recycler.give(&none)
            #expect(recycler.keptBuffers == before, "neither a large buffer nor one without memory is kept")
            #expect(large.isEmpty && large.capacity == 0, "a buffer not kept is let go")
        }
    }

    @Test func aRecyclerUsedFromAnotherThreadKeepsNothing() {
        var recycler: HTTP2Recycler?
        onNewThread { recycler = HTTP2Recycler.forThisThread() }
        // Its thread ended: it is ownerless, and this thread is not its owner anyway.
        onNewThread {
            let foreign = recycler!
            foreign.give(HTTP2HeaderBlock(standardCapacity: ()))
            var buffer = Array(repeating: UInt8(1), count: 10)
            foreign.give(&buffer)
            #expect(foreign.keptBlocks == 0 && foreign.keptBuffers == 0)
            var block = foreign.takeBlock()
            block.append(name: Array("k".utf8), value: Array("v".utf8))
            #expect(block.headers == [HTTP2Header("k", "v")], "a new storage, usable as any")
            #expect(HTTP2Recycler.forThisThread() !== foreign)
        }
    }

    /// `appendReceived` copies short names and values with word moves: every length around
    /// the cases' edges (0-3, 4-7, 8-16, past 16), and the fall back to `append` once full.
    @Test func receivedFieldsOfEveryLengthAreCopiedExactly() {
        var block = HTTP2HeaderBlock(standardCapacity: ())
        var expected: [HTTP2Header] = []
        for length in 0...40 {
            let name = (0..<length).map { UInt8(97 + ($0 * 7 + length) % 26) }
            let value = (0..<(40 - length)).map { UInt8(33 + ($0 * 11 + length) % 90) }
            name.withUnsafeBufferPointer { name in
                value.withUnsafeBufferPointer { value in
                    block.appendReceived(name: name.baseAddress, nameCount: name.count,
                                         value: value.baseAddress, valueCount: value.count)
                }
            }
            expected.append(HTTP2Header(name: name, value: value))
        }
        #expect(block.count == 41, "past the standard 12 fields: grown through append")
        #expect(block.headers == expected)
        block.appendReceived(name: nil, nameCount: 0, value: nil, valueCount: 0)
        #expect(block.headers.last == HTTP2Header(name: [UInt8](), value: [UInt8]()))
    }

    // MARK: Helpers

    private static func head(path: String, extra: HTTP2Header?) -> [HTTP2Header] {
        [HTTP2Header(":method", "POST"), HTTP2Header(":scheme", "http"), HTTP2Header(":authority", "example"),
         HTTP2Header(":path", path)] + (extra.map { [$0] } ?? [])
    }

    private static func heads(_ events: [HTTP2Event]) -> [HTTP2HeaderBlock] {
        events.compactMap { event in
            if case .head(_, let block, _) = event { return block }
            return nil
        }
    }
}
