/// DNS over TCP (RFC 1035 §4.2.2, RFC 7766 §8): each message behind a two-byte length, any
/// number of messages per segment and a message across any number of segments.
public enum DNSStreamFraming {
    public enum Frame: Equatable, Sendable {
        /// A whole message lies at this range (after its length prefix); the frame, prefix
        /// included, ends at `upperBound`.
        case message(Range<Int>)
        /// The next frame needs at least this many more bytes.
        case needMore(minimumBytes: Int)
    }

    /// The frame at the front of `bytes`.
    public static func next(_ bytes: UnsafeRawBufferPointer) -> Frame {
        guard bytes.count >= 2 else { return .needMore(minimumBytes: 2 - bytes.count) }
        let end = 2 + Int(bytes.uint16(at: 0))
        guard bytes.count >= end else { return .needMore(minimumBytes: end - bytes.count) }
        return .message(2..<end)
    }

    /// `message` behind its two-byte length (at most 65535 bytes: a DNS message's limit).
    public static func framed(_ message: [UInt8]) -> [UInt8] {
        precondition(message.count <= Int(UInt16.max), "a DNS message of more than 65535 bytes")
        return [UInt8(message.count >> 8), UInt8(message.count & 0xff)] + message
    }
}

/// Answers Sluice gives in the resolver's place.
public enum DNSAnswers {
    public static let formatError: UInt8 = 1
    public static let serverFailure: UInt8 = 2
    public static let nameError: UInt8 = 3
    public static let refused: UInt8 = 5

    /// A response to `query` carrying no records: the same ID, opcode and RD, QR set, the
    /// question copied as asked, and `rcode` (REFUSED for a denied name, SERVFAIL when the
    /// resolver stayed silent, NXDOMAIN when so configured).
    public static func response(to query: DNSMessage, in bytes: UnsafeRawBufferPointer, rcode: UInt8) -> [UInt8] {
        var length = 12
        for question in query.questions {
            try? DNSWireName.forEachLabel(bytes, at: question.name) { length += $0.count + 1 }
            length += 5
        }
        var answer: [UInt8] = []
        answer.reserveCapacity(length)  // one allocation
        appendHeader(to: &answer, id: query.header.id, requestFlags: query.header.flags, rcode: rcode,
                     questionCount: UInt16(query.questions.count))
        for question in query.questions {
            // The name written out label by label: a pointer in the query could point at
            // bytes this answer does not repeat (its header).
            try? DNSWireName.forEachLabel(bytes, at: question.name) { label in
                answer.append(UInt8(label.count))
                answer.append(contentsOf: label)
            }
            answer.append(0)
            answer.append(UInt8(question.type >> 8))
            answer.append(UInt8(question.type & 0xff))
            answer.append(UInt8(question.recordClass >> 8))
            answer.append(UInt8(question.recordClass & 0xff))
        }
        return answer
    }

    /// FORMERR for bytes of which only the header can be read (nil with less than a header).
    public static func formatError(forHeaderOf bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        guard bytes.count >= DNSMessage.headerLength else { return nil }
        return header(id: bytes.uint16(at: 0), requestFlags: bytes.uint16(at: 2), rcode: formatError, questionCount: 0)
    }

    private static func header(id: UInt16, requestFlags: UInt16, rcode: UInt8, questionCount: UInt16) -> [UInt8] {
        var header: [UInt8] = []
        appendHeader(to: &header, id: id, requestFlags: requestFlags, rcode: rcode, questionCount: questionCount)
        return header
    }

    private static func appendHeader(to answer: inout [UInt8], id: UInt16, requestFlags: UInt16, rcode: UInt8,
                                     questionCount: UInt16) {
        // QR, the request's opcode and RD; RA clear (Sluice recurses for no one); the rcode.
        let flags = 0x8000 | (requestFlags & 0x7900) | UInt16(rcode & 0xf)
        answer.append(UInt8(id >> 8))
        answer.append(UInt8(id & 0xff))
        answer.append(UInt8(flags >> 8))
        answer.append(UInt8(flags & 0xff))
        answer.append(UInt8(questionCount >> 8))
        answer.append(UInt8(questionCount & 0xff))
        for _ in 0..<6 { answer.append(0) }
    }
}
