import L7Parsers

/// Fuzz harness for the DNS codec: arbitrary bytes as a UDP message and as a TCP stream must
/// give messages or `DNSParseError`s, never a trap or a read out of bounds (AddressSanitizer
/// watches). What it accepts must hold together: every name reads as text, every range lies
/// inside the message, and the answer Sluice would give (REFUSED) parses back with the same
/// ID and questions.
public enum DNSMessageFuzzer {
    public static func run(_ input: UnsafeRawBufferPointer) {
        check(input)
        // The same bytes as a TCP stream: every complete frame is a message to check.
        var offset = 0
        while offset < input.count {
            let rest = UnsafeRawBufferPointer(rebasing: input[offset...])
            guard case .message(let range) = DNSStreamFraming.next(rest) else { break }
            precondition(range.upperBound <= rest.count, "a frame past the stream's end")
            check(UnsafeRawBufferPointer(rebasing: rest[range]))
            offset += range.upperBound
        }
    }

    static func check(_ bytes: UnsafeRawBufferPointer) {
        guard let message = try? DNSMessage.parse(bytes) else {
            _ = DNSAnswers.formatError(forHeaderOf: bytes)
            return
        }
        for question in message.questions {
            precondition(question.wire.upperBound <= bytes.count)
            precondition((try? DNSWireName.text(bytes, at: question.name)) != nil, "an accepted question name does not read")
        }
        for record in message.answers + message.authority + message.additional {
            precondition(record.data.upperBound <= bytes.count)
            precondition((try? DNSWireName.text(bytes, at: record.name)) != nil, "an accepted owner name does not read")
        }
        let refusal = DNSAnswers.response(to: message, in: bytes, rcode: DNSAnswers.refused)
        refusal.withUnsafeBytes { answer in
            guard let parsed = try? DNSMessage.parse(answer) else { preconditionFailure("Sluice's own answer does not parse") }
            precondition(parsed.header.id == message.header.id && parsed.questions.count == message.questions.count)
            for (asked, answered) in zip(message.questions, parsed.questions) {
                precondition(asked.type == answered.type && asked.recordClass == answered.recordClass)
                precondition((try? DNSWireName.text(bytes, at: asked.name)) == (try? DNSWireName.text(answer, at: answered.name)),
                             "the answer's question differs from the query's")
            }
        }
    }
}
