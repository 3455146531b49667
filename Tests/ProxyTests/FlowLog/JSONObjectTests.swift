import Testing
import Foundation
@testable import Proxy

@Suite struct FlowRecordTests {
    @Test func serializesValidJSONWithEscapes() throws {
        var object = JSONObject()
        object["text"] = .string("quote \" backslash \\ newline \n control \u{01} é")
        object["n"] = .integer(-5)
        object["list"] = .array([.bool(true), .unsigned(7)])
        let parsed = try JSONSerialization.jsonObject(with: Data(object.serialized().utf8)) as? [String: Any]
        #expect(parsed?["text"] as? String == "quote \" backslash \\ newline \n control \u{01} é")
        #expect(parsed?["n"] as? Int == -5)
        #expect(object.serialized().hasPrefix("{\"text\":"), "fields keep their order")
    }

    @Test func connectionRecordsUseTheReferenceFieldNames() throws {
        let record = FlowRecords.connection(ConnectionSummary(
            listener: "web", client: SocketAddress("10.0.0.1:40000")!, destination: SocketAddress("10.0.0.2:80")!,
            bytesFromClient: 10, bytesFromServer: 20, durationNanoseconds: 5, outcome: .closed))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(record.serialized().utf8)) as? [String: Any])
        #expect(json["verdict"] as? String == "FORWARDED")
        #expect((json["IP"] as? [String: Any])?["destination"] as? String == "10.0.0.2")
        let tcp = (json["l4"] as? [String: Any])?["TCP"] as? [String: Any]
        #expect(tcp?["source_port"] as? Int == 40000)
        #expect(tcp?["destination_port"] as? Int == 80)
        #expect((json["proxy"] as? [String: Any])?["bytes_from_server"] as? Int == 20)
    }

    @Test func prebuiltPartsAreWrittenAsTheirTextAndReadAsObjects() {
        var inner = JSONObject()
        inner["source"] = .string("10.0.0.1")
        var record = JSONObject()
        record.add("IP", inner.prebuilt)
        record.add("n", .unsigned(1))
        #expect(record.serialized() == #"{"IP":{"source":"10.0.0.1"},"n":1}"#)
        guard case .object(let read)? = record["IP"], case .string(let source)? = read["source"] else {
            Issue.record("a prebuilt part must read as an object")
            return
        }
        #expect(source == "10.0.0.1")
    }

    /// The writer's buffer and an array get the same text, whatever the values (escapes,
    /// numbers at their limits, nesting, shared parts), and the buffer grows past its start.
    @Test func outputBufferAndArrayGetTheSameText() throws {
        var object = JSONObject()
        object["text"] = .string("quote \" backslash \\ newline \n tab \t cr \r control \u{01}\u{1F} é ∑ \u{7F}")
        object["clean"] = .string("a plain string longer than eight bytes")
        object["empty"] = .string("")
        object["numbers"] = .array([.integer(0), .integer(-1), .integer(Int64.min), .integer(Int64.max),
                                    .unsigned(0), .unsigned(UInt64.max), .unsigned(1_000_000_007)])
        object["flags"] = .array([.bool(true), .bool(false)])
        var inner = JSONObject()
        inner["k\"ey"] = .string("v")
        object["nested"] = .object(inner)
        object["shared"] = inner.prebuilt
        var expected: [UInt8] = []
        object.serialize(into: &expected)
        let buffer = JSONOutputBuffer(capacity: 8)
        for _ in 0..<50 { object.serialize(into: buffer) }
        #expect(Array(buffer.bytes) == Array([[UInt8]](repeating: expected, count: 50).joined()))
        let parsed = try JSONSerialization.jsonObject(with: Data(expected)) as? [String: Any]
        #expect(parsed?["text"] as? String == "quote \" backslash \\ newline \n tab \t cr \r control \u{01}\u{1F} é ∑ \u{7F}")
        #expect((parsed?["numbers"] as? [Any])?.count == 7)
        #expect(String(decoding: expected, as: UTF8.self).contains(#"-9223372036854775808,9223372036854775807,0,18446744073709551615"#))
        buffer.removeAll()
        #expect(buffer.count == 0 && buffer.bytes.isEmpty)
    }

    @Test func recordTimesAreRFC3339WithNanoseconds() {
        #expect(WallClock.rfc3339(0) == "1970-01-01T00:00:00.000000000Z")
        #expect(WallClock.rfc3339(1_790_000_000_123_456_789) == "2026-09-21T14:13:20.123456789Z")
        #expect(WallClock.rfc3339(951_782_400_000_000_001) == "2000-02-29T00:00:00.000000001Z")
    }

    /// The date is computed without `gmtime`: it must agree with libc's on every day from
    /// 1970 to 2400 (leap years, centuries, 2100 not a leap year) and at any second of a day.
    @Test func recordTimesAgreeWithLibcGmtime() {
        var mismatches: [String] = []
        var generator = SystemRandomNumberGenerator()
        for day in stride(from: UInt64(0), to: 157_000, by: 1) {
            let second = day * 86_400 + UInt64.random(in: 0..<86_400, using: &generator)
            let nanoseconds = second * 1_000_000_000 + UInt64.random(in: 0..<1_000_000_000, using: &generator)
            var time = time_t(second)
            var parts = tm()
            gmtime_r(&time, &parts)
            let expected = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ", Int(parts.tm_year) + 1900,
                                  Int(parts.tm_mon) + 1, Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min),
                                  Int(parts.tm_sec), Int(nanoseconds % 1_000_000_000))
            let made = WallClock.rfc3339(nanoseconds)
            if made != expected && mismatches.count < 5 { mismatches.append("\(made) != \(expected)") }
        }
        #expect(mismatches.isEmpty, "\(mismatches)")
    }
}
