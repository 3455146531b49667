import Testing
@testable import L7Parsers

@Suite struct HTTP2HeaderBlockTests {
    @Test func keepsFieldsInOrderWithEmptyValuesAndRepeats() {
        let headers = [HTTP2Header(":method", "GET"), HTTP2Header("x-empty", ""), HTTP2Header("cookie", "a=1"),
                       HTTP2Header("cookie", "b=2")]
        let block = HTTP2HeaderBlock(headers)
        #expect(block.count == 4 && block.byteCount == 7 + 3 + 7 + 0 + 6 + 3 + 6 + 3)
        #expect(block.headers == headers)
        #expect(block.firstValue(named: Array("cookie".utf8)) == Array("a=1".utf8))
        #expect(block.firstValue(named: Array("x-empty".utf8)) == [])
        #expect(block.firstValue(named: Array("missing".utf8)) == nil)
        var visited = 0
        block.forEachField { _, _ in
            visited += 1
            return visited < 2
        }
        #expect(visited == 2, "forEachField stops when the body says so")
    }

    @Test func fieldsAreBytesNotText() {
        // obs-text in a value (RFC 9110 §5.5) stays as it came.
        var block = HTTP2HeaderBlock()
        let value: [UInt8] = [0x61, 0xFF, 0x80]
        block.append(name: Array("x-raw".utf8), value: value)
        #expect(block.headers == [HTTP2Header(name: Array("x-raw".utf8), value: value)])
    }

    @Test func growsPastItsFirstBuffersAndCopiesBeforeAChangeToASharedBlock() {
        var block = HTTP2HeaderBlock()
        block.reserveCapacity(fields: 1, bytes: 1)
        let big = [UInt8](repeating: 0x78, count: 10_000)
        for index in 0..<100 { block.append(name: Array("x-\(index)".utf8), value: index == 50 ? big : [UInt8(index)]) }
        #expect(block.count == 100 && block.firstValue(named: Array("x-50".utf8)) == big)
        #expect(block.firstValue(named: Array("x-99".utf8)) == [99])
        let before = block
        var changed = block
        changed.append(name: Array("x-new".utf8), value: Array("1".utf8))
        #expect(before.count == 100 && block.count == 100 && changed.count == 101)
        #expect(block == before && changed != block)
        #expect(block.firstValue(named: Array("x-new".utf8)) == nil)
        #expect(HTTP2HeaderBlock() == HTTP2HeaderBlock([]) && HTTP2HeaderBlock().headers.isEmpty)
    }

    @Test func statusIsThreeDigitsOrNothing() {
        #expect(HTTP2HeaderBlock([HTTP2Header(":status", "200"), HTTP2Header(":status", "404")]).status == 200)
        #expect(HTTP2HeaderBlock([HTTP2Header("server", "x"), HTTP2Header(":status", "103")]).status == 103)
        #expect(HTTP2HeaderBlock([HTTP2Header("server", "x")]).status == nil)
        for bad in ["20", "2000", "2x0", "", "-20"] {
            #expect(HTTP2HeaderBlock([HTTP2Header(":status", bad)]).status == nil, "\(bad)")
        }
    }

    @Test func equalAndStartsCompareLengthsAndBytes() {
        let text = Array("application/grpc+proto".utf8)
        text.withUnsafeBufferPointer { bytes in
            #expect(HTTP2HeaderBlock.starts(bytes, with: Array("application/grpc".utf8)))
            #expect(!HTTP2HeaderBlock.equal(bytes, Array("application/grpc".utf8)))
            #expect(HTTP2HeaderBlock.equal(bytes, text))
            #expect(!HTTP2HeaderBlock.starts(bytes, with: Array("application/grpc+proto+more".utf8)))
            #expect(!HTTP2HeaderBlock.equal(bytes, Array("application/grpc+protO".utf8)))
        }
        let empty = UnsafeBufferPointer<UInt8>(start: nil, count: 0)
        #expect(HTTP2HeaderBlock.equal(empty, []) && !HTTP2HeaderBlock.equal(empty, [0]))
        #expect(HTTP2HeaderBlock.starts(empty, with: []))
    }

    @Test func literalComparisonsAgreeWithArrayOnes() {
        let text = Array("application/grpc+proto".utf8)
        text.withUnsafeBufferPointer { bytes in
            #expect(HTTP2HeaderBlock.starts(bytes, with: "application/grpc"))
            #expect(!HTTP2HeaderBlock.equal(bytes, "application/grpc"))
            #expect(HTTP2HeaderBlock.equal(bytes, "application/grpc+proto"))
            #expect(!HTTP2HeaderBlock.starts(bytes, with: "application/grpc+proto+more"))
            #expect(!HTTP2HeaderBlock.equal(bytes, "application/grpc+protO"))
        }
        let empty = UnsafeBufferPointer<UInt8>(start: nil, count: 0)
        #expect(HTTP2HeaderBlock.equal(empty, "") && !HTTP2HeaderBlock.equal(empty, ":"))
        #expect(HTTP2HeaderBlock.starts(empty, with: ""))
        #expect(HTTP2HeaderBlock([HTTP2Header(":status", "204")]).status == 204)
        #expect(HTTP2HeaderBlock([HTTP2Header("x-status", "204"), HTTP2Header(":status", "2x4")]).status == nil)
    }

    @Test(arguments: [
        ("/api/items?x=1&y=%2F", false, true), ("/", false, true), ("*", true, true),
        ("*", false, false), ("", false, false), ("api/items", false, false), ("/api/\u{FF}", false, false),
        ("/api/a b", false, false), ("/api/\"q\"", false, false), ("/api\\x", false, false),
        ("/api/%zz", false, false), ("/api/%4", false, false), ("/api/<x>", false, false), ("/a#f", false, false),
        ("http://h/api", false, false), ("/api/~!$&'()*+,;=:@", false, true),
    ])
    func pathsAreHeldToTheTargetGrammar(path: String, isOptions: Bool, valid: Bool) {
        // "\u{FF}" is written as the single byte 0xFF, not its UTF-8 encoding.
        let bytes = path.unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) }
        bytes.withUnsafeBufferPointer { value in
            #expect(HTTP2HeaderBlock.isValidPath(value, isOptions: isOptions) == valid, "\(path)")
        }
    }
}
