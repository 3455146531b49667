import Testing
@testable import L7Parsers

/// Builds wire-format messages by hand, so hostile shapes can be written exactly.
enum DNSWire {
    static func header(id: UInt16 = 0x1234, flags: UInt16 = 0x0100, questions: UInt16 = 1, answers: UInt16 = 0,
                       authority: UInt16 = 0, additional: UInt16 = 0) -> [UInt8] {
        [id, flags, questions, answers, authority, additional].flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
    }

    static func name(_ text: String) -> [UInt8] {
        text.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
    }

    static func u16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }

    static func record(_ owner: [UInt8], type: UInt16, ttl: UInt32 = 60, data: [UInt8], recordClass: UInt16 = 1) -> [UInt8] {
        owner + u16(type) + u16(recordClass) + u16(UInt16(ttl >> 16)) + u16(UInt16(ttl & 0xffff)) + u16(UInt16(data.count)) + data
    }

    static let query = header() + name("www.example.com") + u16(1) + u16(1)
}

@Suite struct DNSMessageTests {
    func parse(_ bytes: [UInt8]) -> Result<DNSMessage, DNSParseError> {
        bytes.withUnsafeBytes { raw in
            do throws(DNSParseError) {
                return .success(try DNSMessage.parse(raw))
            } catch {
                return .failure(error)
            }
        }
    }

    func text(_ bytes: [UInt8], _ offset: Int) -> String? {
        bytes.withUnsafeBytes { try? DNSWireName.text($0, at: offset) }
    }

    @Test func aQueryReadsItsQuestion() throws {
        let message = try parse(DNSWire.query).get()
        #expect(message.header.id == 0x1234 && message.header.recursionDesired && !message.header.isResponse)
        #expect(message.questions.count == 1)
        #expect(message.questions[0].type == 1 && message.questions[0].recordClass == 1)
        #expect(text(DNSWire.query, message.questions[0].name) == "www.example.com.")
    }

    /// An answer with a CNAME chain, compressed as resolvers write it.
    @Test func compressedAnswersReadThroughTheirPointers() throws {
        var bytes = DNSWire.header(flags: 0x8180, answers: 2) + DNSWire.name("www.example.com") + DNSWire.u16(1) + DNSWire.u16(1)
        let ownerPointer: [UInt8] = [0xc0, 12]
        // CNAME www.example.com -> web + pointer to "example.com" (offset 16)
        bytes += DNSWire.record(ownerPointer, type: DNSRecordType.cname, data: [3] + Array("web".utf8) + [0xc0, 16])
        let webOffset = bytes.count - 6
        bytes += DNSWire.record([0xc0, UInt8(webOffset)], type: DNSRecordType.a, ttl: 30, data: [192, 0, 2, 7])
        let message = try parse(bytes).get()
        #expect(message.answers.count == 2)
        #expect(text(bytes, message.answers[0].name) == "www.example.com.")
        #expect(text(bytes, message.answers[0].data.lowerBound) == "web.example.com.")
        #expect(text(bytes, message.answers[1].name) == "web.example.com.")
        #expect(Array(bytes[message.answers[1].data]) == [192, 0, 2, 7] && message.answers[1].ttl == 30)
    }

    @Test(arguments: [
        // A pointer to itself, two pointers to each other, a forward pointer, one past the end.
        ("self", DNSWire.header() + [0xc0, 12] + DNSWire.u16(1) + DNSWire.u16(1), DNSParseError.badPointer),
        ("loop", DNSWire.header(questions: 2) + [1, 0x61, 0xc0, 18] + DNSWire.u16(1) + DNSWire.u16(1)
            + [0xc0, 12] + DNSWire.u16(1) + DNSWire.u16(1), .badPointer),
        ("forward", DNSWire.header() + [0xc0, 20] + DNSWire.u16(1) + DNSWire.u16(1) + DNSWire.name("a"), .badPointer),
        ("out of range", DNSWire.header() + [0xff, 0xff] + DNSWire.u16(1) + DNSWire.u16(1), .badPointer),
        ("label type 01", DNSWire.header() + [0x41, 0] + DNSWire.u16(1) + DNSWire.u16(1), .badLabelType),
        ("label type 10", DNSWire.header() + [0x81, 0] + DNSWire.u16(1) + DNSWire.u16(1), .badLabelType),
        ("256-byte name", DNSWire.header() + Array(repeating: [63] + Array(repeating: UInt8(0x61), count: 63), count: 4).flatMap { $0 }
            + [0] + DNSWire.u16(1) + DNSWire.u16(1), .nameTooLong),
        ("trailing bytes", DNSWire.query + [0], .trailingBytes),
        ("count past the end", DNSWire.header(questions: 2) + DNSWire.name("a") + DNSWire.u16(1) + DNSWire.u16(1), .truncated),
        ("short header", Array(DNSWire.query[0..<11]), .truncatedHeader),
        ("A of 5 bytes", DNSWire.header(questions: 0, answers: 1) + DNSWire.record(DNSWire.name("a"), type: 1, data: [1, 2, 3, 4, 5]),
         .badRecordData),
        ("CNAME with bytes after its name", DNSWire.header(questions: 0, answers: 1)
            + DNSWire.record(DNSWire.name("a"), type: 5, data: DNSWire.name("b") + [7]), .badRecordData),
        ("two OPT", DNSWire.query.withCounts(additional: 2) + DNSWire.record([0], type: 41, data: [], recordClass: 1232)
            + DNSWire.record([0], type: 41, data: [], recordClass: 1232), .badEDNS),
        ("OPT not at the root", DNSWire.query.withCounts(additional: 1) + DNSWire.record(DNSWire.name("a"), type: 41, data: []),
         .badEDNS),
        ("OPT in the answers", DNSWire.query.withCounts(answers: 1) + DNSWire.record([0], type: 41, data: []), .badEDNS),
        ("OPT option past its data", DNSWire.query.withCounts(additional: 1)
            + DNSWire.record([0], type: 41, data: DNSWire.u16(10) + DNSWire.u16(8) + [1, 2]), .badEDNS),
    ])
    func hostileMessagesAreRejected(_ name: String, _ bytes: [UInt8], _ error: DNSParseError) {
        switch parse(bytes) {
        case .success: Issue.record("\(name): accepted")
        case .failure(let thrown): #expect(thrown == error, "\(name)")
        }
    }

    /// A chain of pointers (each to the one before) is followed up to 127 hops, not further:
    /// strictly decreasing targets end every chain, the cap bounds what one name can cost.
    @Test(arguments: [(127, true), (128, false)])
    func pointerChainsAreCapped(_ hops: Int, _ accepted: Bool) {
        // Answer 1 (a private type) carries "a." and then `hops - 1` pointers, each to the
        // one before; answer 2's owner enters at the last, so reading it takes `hops` pointers.
        var bytes = DNSWire.header(flags: 0x8180, questions: 0, answers: 2)
        let dataStart = bytes.count + 1 + 10
        var data: [UInt8] = [1, 0x61, 0]
        var previous = dataStart
        for _ in 0..<(hops - 1) {
            let here = dataStart + data.count
            data += [0xc0 | UInt8(previous >> 8), UInt8(previous & 0xff)]
            previous = here
        }
        bytes += DNSWire.record([0], type: 65280, data: data)
        bytes += DNSWire.record([0xc0 | UInt8(previous >> 8), UInt8(previous & 0xff)], type: 1, data: [0, 0, 0, 0])
        switch parse(bytes) {
        case .success(let message): #expect(accepted && text(bytes, message.answers[1].name) == "a.")
        case .failure(let error): #expect(!accepted && error == .badPointer)
        }
    }

    /// Every prefix of a valid message is rejected, never read past its end.
    @Test func everyTruncationIsRejected() {
        let whole = DNSWire.query.withCounts(additional: 1)
            + DNSWire.record([0], type: 41, data: DNSWire.u16(10) + DNSWire.u16(2) + [0xab, 0xcd], recordClass: 1232)
        #expect((try? parse(whole).get()) != nil)
        for end in 0..<whole.count {
            #expect((try? parse(Array(whole[0..<end])).get()) == nil, "prefix of \(end) bytes")
        }
    }

    @Test func ednsIsReadFromTheOPTRecord() throws {
        let bytes = DNSWire.query.withCounts(additional: 1)
            + DNSWire.record([0], type: 41, ttl: 0x0000_8000, data: DNSWire.u16(10) + DNSWire.u16(2) + [0xab, 0xcd],
                             recordClass: 1232)
        let message = try parse(bytes).get()
        let edns = try #require(message.edns)
        #expect(edns.payloadSize == 1232 && edns.version == 0 && edns.flags == 0x8000)
        #expect(edns.options.count == 1 && edns.options[0].code == 10 && Array(bytes[edns.options[0].data]) == [0xab, 0xcd])
        #expect(message.additional.isEmpty, "the OPT record is EDNS, not an additional record")
    }

    @Test func namesAreWrittenAsDnspythonWritesThem() {
        let bytes = DNSWire.header() + [3, 0x61, 0x2e, 0x20, 2, 0x40, 0xff, 0] + DNSWire.u16(1) + DNSWire.u16(1)
        #expect(text(bytes, 12) == #"a\.\032.\@\255."#)
        #expect(text(DNSWire.header() + [0], 12) == ".")
    }

    @Test func aRefusalCarriesTheQueryIDAndQuestion() throws {
        let query = try parse(DNSWire.query).get()
        let answer = DNSWire.query.withUnsafeBytes { DNSAnswers.response(to: query, in: $0, rcode: DNSAnswers.refused) }
        let parsed = try parse(answer).get()
        #expect(parsed.header.id == 0x1234 && parsed.header.isResponse && parsed.header.rcode == 5)
        #expect(parsed.header.recursionDesired, "RD is copied")
        #expect(text(answer, parsed.questions[0].name) == "www.example.com." && parsed.answers.isEmpty)
        let formerr = [0xab, 0xcd, 0x01, 0x00] + [UInt8](repeating: 0, count: 8) + [0xff]
        let reply = try #require(formerr.withUnsafeBytes { DNSAnswers.formatError(forHeaderOf: $0) })
        #expect(reply[0] == 0xab && reply[1] == 0xcd && reply[3] & 0xf == 1)
        #expect([UInt8](repeating: 0, count: 5).withUnsafeBytes { DNSAnswers.formatError(forHeaderOf: $0) } == nil)
    }

    /// TCP: several messages in one segment and one message across segments, fed byte by byte.
    @Test func tcpFramingFindsEveryMessageWhateverTheSplit() {
        let first = DNSWire.u16(UInt16(DNSWire.query.count)) + DNSWire.query
        let stream = first + first + [0, 0]
        for split in [1, 2, 5, stream.count] {
            var held: [UInt8] = []
            var messages = 0
            var empty = 0
            for start in stride(from: 0, to: stream.count, by: split) {
                held += stream[start..<min(start + split, stream.count)]
                while case .message(let range) = held.withUnsafeBytes({ DNSStreamFraming.next($0) }) {
                    if range.isEmpty { empty += 1 } else { messages += 1 }
                    #expect((try? parse(Array(held[range])).get()) != nil || range.isEmpty)
                    held.removeFirst(range.upperBound)
                }
            }
            #expect(messages == 2 && empty == 1 && held.isEmpty, "split \(split)")
        }
        #expect(([0x01] as [UInt8]).withUnsafeBytes { DNSStreamFraming.next($0) } == .needMore(minimumBytes: 1))
        #expect(([0, 5, 1] as [UInt8]).withUnsafeBytes { DNSStreamFraming.next($0) } == .needMore(minimumBytes: 4))
    }
}

extension Array where Element == UInt8 {
    /// The message with its header's answer, authority and additional counts replaced.
    func withCounts(answers: UInt16 = 0, authority: UInt16 = 0, additional: UInt16 = 0) -> [UInt8] {
        var copy = self
        copy.replaceSubrange(6..<12, with: DNSWire.u16(answers) + DNSWire.u16(authority) + DNSWire.u16(additional))
        return copy
    }
}
