import Testing
@testable import L7Parsers
import PolicyEngine

/// `HTTP2StreamTable` against `Dictionary` as the oracle: every operation sequence must leave
/// the same contents, whatever runs of colliding IDs the deletions shift back.
@Suite struct HTTP2StreamTableTests {
    @Test func insertsFindsUpdatesAndRemoves() {
        var table = HTTP2StreamTable<String>()
        #expect(table.isEmpty && table[1] == nil && table.removeValue(forKey: 1) == nil)
        table[1] = "one"
        table[3] = "three"
        table[1] = "uno"
        #expect(table.count == 2 && table[1] == "uno" && table[3] == "three" && table.contains(3))
        #expect(table.update(3) { $0 += "!" } && table[3] == "three!")
        #expect(!table.update(5) { $0 = "never" } && table[5] == nil)
        #expect(table.removeValue(forKey: 1) == "uno" && table[1] == nil && table.count == 1)
        table[3] = nil
        #expect(table.isEmpty && table.entries.isEmpty)
        #expect(table[0] == nil && table[-7] == nil, "IDs that are not streams are never found")
    }

    @Test func matchesADictionaryUnderRandomOperations() {
        var generator = SplitMix64(seed: 0x5EED)
        for round in 0..<20 {
            var table = HTTP2StreamTable<Int>()
            var oracle: [Int32: Int] = [:]
            // Small key ranges make long probe runs and many backward shifts; large ones spread.
            let range: Int32 = round % 2 == 0 ? 64 : 1 << 30
            for step in 0..<4000 {
                let key = Int32(generator.next() % UInt64(range)) + 1
                switch generator.next() % 4 {
                case 0, 1:
                    table[key] = step
                    oracle[key] = step
                case 2:
                    #expect(table.removeValue(forKey: key) == oracle.removeValue(forKey: key))
                default:
                    #expect(table.update(key) { $0 += 1 } == (oracle[key] != nil))
                    oracle[key]? += 1
                }
                #expect(table.count == oracle.count)
            }
            for (key, value) in oracle { #expect(table[key] == value) }
            let entries = Dictionary(uniqueKeysWithValues: table.entries.map { ($0.stream, $0.value) })
            #expect(entries == oracle)
        }
    }

    @Test func growsWithOpenStreamsAndShrinksWhenTheyClose() {
        var table = HTTP2StreamTable<Int>()
        let streams = (0..<10_000).map { Int32($0 * 2 + 1) }  // client-initiated IDs, as they come
        for stream in streams { table[stream] = Int(stream) }
        #expect(table.count == 10_000)
        for stream in streams { #expect(table[stream] == Int(stream)) }
        for stream in streams.dropLast(3) { table[stream] = nil }
        #expect(table.count == 3)
        #expect(table.slotCount <= 64, "a table whose streams closed gives its slots back")
        for stream in streams.suffix(3) { #expect(table[stream] == Int(stream)) }
    }
}
