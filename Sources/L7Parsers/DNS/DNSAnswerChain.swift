/// What an answer says about its question's name, for `toFQDNs`: the CNAME chain from the
/// question's name, the addresses (A, AAAA) given for a name on that chain, and the smallest
/// TTL among the records used. Records for names off the chain are ignored: a resolver
/// cannot make Sluice learn an address for a name nobody asked about by adding records.
public struct DNSAnswerChain: Equatable, Sendable {
    /// The question's name, then each CNAME target in order, as `DNSWireName.text` gives them.
    public var names: [String]
    /// The data ranges (4 bytes for A, 16 for AAAA) of the address records on the chain.
    public var addresses: [Range<Int>]
    /// The smallest TTL of the CNAME and address records used; nil when none were.
    public var ttl: UInt32?

    /// Longest CNAME chain followed; a longer one (or a loop) stops there.
    public static let maximumLinks = 16

    /// The chain of `message` (parsed from `bytes`) for its first question, or nil when the
    /// answer is not NOERROR, has no question, or its names cannot be read.
    /// `questionName`: the question's name when the caller already read it (saves reading it again).
    public init?(_ message: DNSMessage, in bytes: UnsafeRawBufferPointer, questionName: String? = nil) {
        guard message.header.rcode == 0, message.header.isResponse,
              let question = message.questions.first, question.recordClass == DNSRecordType.internetClass else { return nil }
        guard let first = questionName ?? (try? DNSWireName.text(bytes, at: question.name)) else { return nil }
        // The common answer: no CNAME, address records named by a pointer to the question.
        // Those need no name read at all.
        if !message.answers.contains(where: { $0.type == DNSRecordType.cname }) {
            var firstKey: String?
            var addresses: [Range<Int>] = []
            var ttl: UInt32?
            for record in message.answers where record.recordClass == DNSRecordType.internetClass {
                let expected = record.type == DNSRecordType.a ? 4 : record.type == DNSRecordType.aaaa ? 16 : 0
                guard expected != 0, record.data.count == expected else { continue }
                if !Self.pointsAt(question.name, from: record.name, in: bytes) {
                    firstKey = firstKey ?? Self.key(first)
                    guard let owner = try? DNSWireName.text(bytes, at: record.name), Self.key(owner) == firstKey else { continue }
                }
                addresses.append(record.data)
                ttl = min(ttl ?? record.ttl, record.ttl)
            }
            self.names = [first]
            self.addresses = addresses
            self.ttl = ttl
            return
        }
        var names = [first]
        var keys = [Self.key(first)]
        var ttl: UInt32?
        let records = message.answers.map { record in (record, (try? DNSWireName.text(bytes, at: record.name)).map(Self.key)) }
        // Follow CNAMEs from the question's name, in any record order, without revisiting.
        var links = 0
        while links < Self.maximumLinks,
              let (record, _) = records.first(where: { $0.0.type == DNSRecordType.cname && $0.1 == keys.last }),
              let target = try? DNSWireName.text(bytes, at: record.data.lowerBound),
              !keys.contains(Self.key(target)) {
            names.append(target)
            keys.append(Self.key(target))
            ttl = min(ttl ?? record.ttl, record.ttl)
            links += 1
        }
        var addresses: [Range<Int>] = []
        for (record, owner) in records where record.recordClass == DNSRecordType.internetClass {
            guard let owner, keys.contains(owner) else { continue }
            let expected = record.type == DNSRecordType.a ? 4 : record.type == DNSRecordType.aaaa ? 16 : 0
            guard expected != 0, record.data.count == expected else { continue }
            addresses.append(record.data)
            ttl = min(ttl ?? record.ttl, record.ttl)
        }
        self.names = names
        self.addresses = addresses
        self.ttl = ttl
    }

    /// Whether the name at `offset` is the name at `target` itself or a bare compression
    /// pointer to it (the parser has already checked every name of the message).
    private static func pointsAt(_ target: Int, from offset: Int, in bytes: UnsafeRawBufferPointer) -> Bool {
        if offset == target { return true }
        guard offset + 1 < bytes.count, bytes[offset] & 0xC0 == 0xC0 else { return false }
        return (Int(bytes[offset] & 0x3F) << 8 | Int(bytes[offset + 1])) == target
    }

    /// Names compare case-insensitively and without the trailing dot.
    private static func key(_ name: String) -> String {
        var lowered = name.lowercased()
        if lowered.count > 1, lowered.hasSuffix(".") { lowered.removeLast() }
        return lowered
    }
}
