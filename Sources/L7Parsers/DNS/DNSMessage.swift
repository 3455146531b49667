/// What makes bytes not a DNS message Sluice will judge (each maps to a short kind for
/// flow records and the differential test).
public enum DNSParseError: Error, Equatable, Sendable {
    /// Fewer than the 12 bytes of a header.
    case truncatedHeader
    /// A question, record or name runs past the end of the message.
    case truncated
    /// Bytes left after the last record the header counts.
    case trailingBytes
    /// A compression pointer that does not point before the name it continues (and before
    /// the previous pointer's target), which rules out loops, or a chain of more than
    /// `DNSWireName.maximumPointers`, which bounds the work one name can cost.
    case badPointer
    /// A name longer than 255 bytes in wire form (RFC 1035 §3.1).
    case nameTooLong
    /// A label type other than a plain label or a pointer (0b01, 0b10: RFC 6891 §5).
    case badLabelType
    /// An Internet-class A record whose data is not 4 bytes, AAAA not 16, a name-valued
    /// record (CNAME, NS, PTR) whose data is not exactly one name.
    case badRecordData
    /// More than one OPT record, one outside the additional section, one whose owner is not
    /// the root, or options that do not fill its data exactly (RFC 6891 §6.1.1).
    case badEDNS

    public var kind: String {
        switch self {
        case .truncatedHeader: return "truncated_header"
        case .truncated: return "truncated"
        case .trailingBytes: return "trailing_bytes"
        case .badPointer: return "bad_pointer"
        case .nameTooLong: return "name_too_long"
        case .badLabelType: return "bad_label_type"
        case .badRecordData: return "bad_record_data"
        case .badEDNS: return "bad_edns"
        }
    }
}

/// The fixed header of a DNS message (RFC 1035 §4.1.1).
public struct DNSHeader: Equatable, Sendable {
    public var id: UInt16
    public var flags: UInt16
    public var questionCount: UInt16
    public var answerCount: UInt16
    public var authorityCount: UInt16
    public var additionalCount: UInt16

    /// A response (QR set).
    public var isResponse: Bool { flags & 0x8000 != 0 }
    public var opcode: UInt8 { UInt8((flags >> 11) & 0xf) }
    /// TC: the answer did not fit (the client retries over TCP).
    public var isTruncated: Bool { flags & 0x0200 != 0 }
    public var recursionDesired: Bool { flags & 0x0100 != 0 }
    /// The low four bits of the response code (EDNS adds the high eight).
    public var rcode: UInt8 { UInt8(flags & 0xf) }
}

/// A question: the name is an offset into the message's bytes (read it with `DNSWireName`).
public struct DNSQuestion: Equatable, Sendable {
    public var name: Int
    public var type: UInt16
    public var recordClass: UInt16
    /// Where the question's wire form lies in the message (name as written, type, class).
    public var wire: Range<Int>
}

/// A resource record: owner name (an offset), type, class, TTL and where its data lies.
public struct DNSRecord: Equatable, Sendable {
    public var name: Int
    public var type: UInt16
    public var recordClass: UInt16
    public var ttl: UInt32
    public var data: Range<Int>
}

/// The OPT pseudo-record's meaning (RFC 6891 §6.1.2-3).
public struct DNSEDNS: Equatable, Sendable {
    public var payloadSize: UInt16
    public var extendedRCode: UInt8
    public var version: UInt8
    public var flags: UInt16
    /// The options, as (code, data range) pairs over the message bytes.
    public var options: [(code: UInt16, data: Range<Int>)]

    public static func == (lhs: DNSEDNS, rhs: DNSEDNS) -> Bool {
        lhs.payloadSize == rhs.payloadSize && lhs.extendedRCode == rhs.extendedRCode && lhs.version == rhs.version
            && lhs.flags == rhs.flags && lhs.options.elementsEqual(rhs.options) { $0.code == $1.code && $0.data == $1.data }
    }
}

/// Record types the codec reads the data of; every other type is carried through as bytes.
public enum DNSRecordType {
    public static let a: UInt16 = 1
    public static let ns: UInt16 = 2
    public static let cname: UInt16 = 5
    public static let ptr: UInt16 = 12
    public static let aaaa: UInt16 = 28
    public static let opt: UInt16 = 41
    /// IN: the class A and AAAA data are addresses in (in CH, type 1 is Chaosnet's).
    public static let internetClass: UInt16 = 1
}

/// A DNS message (RFC 1035 §4.1) read in place: names, record data and options are offsets
/// into the caller's bytes, which the reader keeps for as long as it uses them. Every name is
/// checked as it is met (compression pointers must point strictly backward, each before the
/// last, so no pointer chain loops or runs forward; names stay within 255 bytes), and nothing
/// is allocated per label: only the section arrays are.
public struct DNSMessage: Equatable, Sendable {
    public var header: DNSHeader
    public var questions: [DNSQuestion]
    public var answers: [DNSRecord]
    public var authority: [DNSRecord]
    /// The additional section without its OPT record (see `edns`).
    public var additional: [DNSRecord]
    public var edns: DNSEDNS?
    /// The message's length in bytes.
    public var length: Int

    public static let headerLength = 12

    /// Reads one whole message; `bytes` must hold exactly it (a UDP payload, or one TCP frame
    /// without its length prefix).
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(DNSParseError) -> DNSMessage {
        guard bytes.count >= headerLength else { throw .truncatedHeader }
        let header = DNSHeader(id: bytes.uint16(at: 0), flags: bytes.uint16(at: 2), questionCount: bytes.uint16(at: 4),
                               answerCount: bytes.uint16(at: 6), authorityCount: bytes.uint16(at: 8),
                               additionalCount: bytes.uint16(at: 10))
        var message = DNSMessage(header: header, questions: [], answers: [], authority: [], additional: [], edns: nil,
                                 length: bytes.count)
        var position = headerLength
        if header.questionCount > 0 { message.questions.reserveCapacity(Int(header.questionCount)) }
        for _ in 0..<header.questionCount {
            let start = position
            position = try DNSWireName.skip(bytes, at: position)
            guard position + 4 <= bytes.count else { throw .truncated }
            message.questions.append(DNSQuestion(name: start, type: bytes.uint16(at: position),
                                                 recordClass: bytes.uint16(at: position + 2), wire: start..<(position + 4)))
            position += 4
        }
        for section in 0..<3 {
            let count = section == 0 ? header.answerCount : section == 1 ? header.authorityCount : header.additionalCount
            for _ in 0..<count {
                let record = try readRecord(bytes, at: &position)
                if record.type == DNSRecordType.opt {
                    guard section == 2, message.edns == nil else { throw .badEDNS }
                    message.edns = try edns(record, in: bytes)
                    continue
                }
                switch section {
                case 0: message.answers.append(record)
                case 1: message.authority.append(record)
                default: message.additional.append(record)
                }
            }
        }
        guard position == bytes.count else { throw .trailingBytes }
        return message
    }

    private static func readRecord(_ bytes: UnsafeRawBufferPointer, at position: inout Int) throws(DNSParseError) -> DNSRecord {
        let name = position
        position = try DNSWireName.skip(bytes, at: position)
        guard position + 10 <= bytes.count else { throw .truncated }
        let type = bytes.uint16(at: position)
        let recordClass = bytes.uint16(at: position + 2)
        let ttl = UInt32(bytes.uint16(at: position + 4)) << 16 | UInt32(bytes.uint16(at: position + 6))
        let dataLength = Int(bytes.uint16(at: position + 8))
        let dataStart = position + 10
        guard dataStart + dataLength <= bytes.count else { throw .truncated }
        position = dataStart + dataLength
        let record = DNSRecord(name: name, type: type, recordClass: recordClass, ttl: ttl, data: dataStart..<position)
        switch type {
        case DNSRecordType.a where recordClass == DNSRecordType.internetClass:
            guard dataLength == 4 else { throw .badRecordData }
        case DNSRecordType.aaaa where recordClass == DNSRecordType.internetClass:
            guard dataLength == 16 else { throw .badRecordData }
        case DNSRecordType.cname, DNSRecordType.ns, DNSRecordType.ptr:
            // Exactly one name, which may point back into the message.
            let end: Int
            do {
                end = try DNSWireName.skip(UnsafeRawBufferPointer(rebasing: bytes[0..<position]), at: dataStart)
            } catch .truncated {
                throw .badRecordData
            }
            guard end == position else { throw .badRecordData }
        default:
            break
        }
        return record
    }

    private static func edns(_ record: DNSRecord, in bytes: UnsafeRawBufferPointer) throws(DNSParseError) -> DNSEDNS {
        guard DNSWireName.isRoot(bytes, at: record.name) else { throw .badEDNS }
        var options: [(code: UInt16, data: Range<Int>)] = []
        var position = record.data.lowerBound
        while position < record.data.upperBound {
            guard position + 4 <= record.data.upperBound else { throw .badEDNS }
            let length = Int(bytes.uint16(at: position + 2))
            guard position + 4 + length <= record.data.upperBound else { throw .badEDNS }
            options.append((bytes.uint16(at: position), (position + 4)..<(position + 4 + length)))
            position += 4 + length
        }
        return DNSEDNS(payloadSize: record.recordClass, extendedRCode: UInt8(record.ttl >> 24),
                       version: UInt8((record.ttl >> 16) & 0xff), flags: UInt16(record.ttl & 0xffff), options: options)
    }
}

/// Names inside a message, read where they lie.
public enum DNSWireName {
    /// The longest name in wire form (RFC 1035 §3.1), length bytes and the root included.
    public static let maximumLength = 255
    /// The most compression pointers one name may follow. Strictly decreasing targets end
    /// every chain, but a 64 KiB message could still chain thousands and make each of
    /// thousands of names walk them all; real names need a handful (dnspython allows 16).
    public static let maximumPointers = 127

    /// Checks the name at `start` (following compression pointers) and returns where its
    /// in-place part ends: the byte after its root label or after its first pointer.
    public static func skip(_ bytes: UnsafeRawBufferPointer, at start: Int) throws(DNSParseError) -> Int {
        var end: Int?
        try walk(bytes, at: start) { _, position in
            if end == nil && position >= 0 { end = position }
        } onPointer: { position in
            if end == nil { end = position }
        }
        return end!
    }

    /// Calls `label` with each label (its bytes, without the length) in order, following
    /// pointers; the name must have been checked (`skip`) or this throws as `skip` does.
    public static func forEachLabel(_ bytes: UnsafeRawBufferPointer, at start: Int,
                                    _ label: (UnsafeRawBufferPointer) -> Void) throws(DNSParseError) {
        try walk(bytes, at: start, label: { labelBytes, _ in if !labelBytes.isEmpty { label(labelBytes) } },
                 onPointer: { _ in })
    }

    /// True when the name at `start` is the root (possibly through pointers).
    public static func isRoot(_ bytes: UnsafeRawBufferPointer, at start: Int) -> Bool {
        var labels = 0
        do {
            try forEachLabel(bytes, at: start) { _ in labels += 1 }
        } catch {
            return false
        }
        return labels == 0
    }

    /// Walks the labels. `label` gets each label's bytes (empty for the root) and, once the
    /// root is read, the position after it; `onPointer` gets the position after each pointer.
    private static func walk(_ bytes: UnsafeRawBufferPointer, at start: Int,
                             label: (UnsafeRawBufferPointer, Int) -> Void,
                             onPointer: (Int) -> Void) throws(DNSParseError) {
        var position = start
        // dnspython's rule, and the reference's: each pointer targets a byte before the name
        // started and before the previous pointer's target, so a chain always ends.
        var pointerLimit = start
        var pointers = 0
        var length = 0
        while true {
            guard position < bytes.count else { throw .truncated }
            let count = Int(bytes[position])
            switch count & 0xc0 {
            case 0:
                length += count + 1
                guard length <= maximumLength else { throw .nameTooLong }
                guard position + 1 + count <= bytes.count else { throw .truncated }
                let labelBytes = UnsafeRawBufferPointer(rebasing: bytes[(position + 1)..<(position + 1 + count)])
                position += 1 + count
                if count == 0 {
                    label(labelBytes, position)
                    return
                }
                label(labelBytes, -1)
            case 0xc0:
                guard position + 2 <= bytes.count else { throw .truncated }
                let target = (count & 0x3f) << 8 | Int(bytes[position + 1])
                pointers += 1
                guard target < pointerLimit, pointers <= maximumPointers else { throw .badPointer }
                onPointer(position + 2)
                pointerLimit = target
                position = target
            default:
                throw .badLabelType
            }
        }
    }

    /// The name lower-cased (ASCII), its labels joined by dots, without the trailing dot
    /// ("." for the root), when every label byte is printable and needs no escape
    /// (0x21...0x7e but `. \\ " ( ) ; @ $`); nil otherwise, or when the name cannot be read.
    /// It is then what `text` gives, lower-cased, without its trailing dot, built in one
    /// allocation at most (none for 15 bytes or fewer).
    public static func plainLowercasedText(_ bytes: UnsafeRawBufferPointer, at start: Int) -> String? {
        var length = 0
        var plain = true
        do {
            try forEachLabel(bytes, at: start) { label in
                length += label.count + 1
                for byte in label where !isPlain(byte) { plain = false }
            }
        } catch {
            return nil
        }
        guard plain else { return nil }
        if length == 0 { return "." }
        return String(unsafeUninitializedCapacity: length - 1) { text in
            var written = 0
            try? forEachLabel(bytes, at: start) { label in
                if written > 0 {
                    text[written] = UInt8(ascii: ".")
                    written += 1
                }
                for byte in label {
                    text[written] = byte >= 0x41 && byte <= 0x5a ? byte | 0x20 : byte
                    written += 1
                }
            }
            return written
        }
    }

    /// Whether `text` writes `byte` as it is (no escape).
    @inline(__always)
    private static func isPlain(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "."), UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: "("), UInt8(ascii: ")"),
             UInt8(ascii: ";"), UInt8(ascii: "@"), UInt8(ascii: "$"):
            return false
        default:
            return byte >= 0x21 && byte <= 0x7e
        }
    }

    /// Whether the name at `start` in `bytes` and the one at `otherStart` in `other` are the
    /// same name, ASCII case aside (RFC 4343), following compression pointers in both. Names
    /// that cannot be read are equal to nothing.
    public static func equalIgnoringCase(_ bytes: UnsafeRawBufferPointer, at start: Int,
                                         _ other: UnsafeRawBufferPointer, at otherStart: Int) -> Bool {
        var left = LabelCursor(bytes, at: start)
        var right = LabelCursor(other, at: otherStart)
        while true {
            guard let leftLabel = left.next(), let rightLabel = right.next() else { return false }
            guard leftLabel.count == rightLabel.count else { return false }
            if leftLabel.isEmpty { return true }  // both at the root
            for index in 0..<leftLabel.count {
                let a = leftLabel[index], b = rightLabel[index]
                guard a == b || (a | 0x20 == b | 0x20 && (a | 0x20) >= 0x61 && (a | 0x20) <= 0x7a) else { return false }
            }
        }
    }

    /// Walks a name's labels one at a time, with `walk`'s checks (pointers strictly backward,
    /// at most `maximumPointers`, at most `maximumLength` bytes).
    private struct LabelCursor {
        let bytes: UnsafeRawBufferPointer
        var position: Int
        var pointerLimit: Int
        var pointers = 0
        var length = 0

        init(_ bytes: UnsafeRawBufferPointer, at start: Int) {
            self.bytes = bytes
            position = start
            pointerLimit = start
        }

        /// The next label (empty: the root, the end), or nil when the name cannot be read (or
        /// was read to its end).
        mutating func next() -> UnsafeRawBufferPointer? {
            while true {
                guard position >= 0, position < bytes.count else { return nil }
                let count = Int(bytes[position])
                switch count & 0xc0 {
                case 0:
                    length += count + 1
                    guard length <= maximumLength, position + 1 + count <= bytes.count else { return nil }
                    let label = UnsafeRawBufferPointer(rebasing: bytes[(position + 1)..<(position + 1 + count)])
                    position = count == 0 ? -1 : position + 1 + count
                    return label
                case 0xc0:
                    guard position + 2 <= bytes.count else { return nil }
                    let target = (count & 0x3f) << 8 | Int(bytes[position + 1])
                    pointers += 1
                    guard target < pointerLimit, pointers <= maximumPointers else { return nil }
                    pointerLimit = target
                    position = target
                default:
                    return nil
                }
            }
        }
    }

    /// The name as text, as dnspython writes it: absolute (a trailing dot; the root is "."),
    /// case as on the wire, `. \ " ( ) ; @ $` escaped with a backslash and bytes outside
    /// 0x21...0x7e as `\DDD`.
    public static func text(_ bytes: UnsafeRawBufferPointer, at start: Int) throws(DNSParseError) -> String {
        var text = ""
        try forEachLabel(bytes, at: start) { label in
            for byte in label {
                switch byte {
                case UInt8(ascii: "."), UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: "("), UInt8(ascii: ")"),
                     UInt8(ascii: ";"), UInt8(ascii: "@"), UInt8(ascii: "$"):
                    text.append("\\")
                    text.append(Character(Unicode.Scalar(byte)))
                case 0x21...0x7e:
                    text.append(Character(Unicode.Scalar(byte)))
                default:
                    let digits = String(byte)
                    text.append("\\" + String(repeating: "0", count: 3 - digits.count) + digits)
                }
            }
            text.append(".")
        }
        return text.isEmpty ? "." : text
    }
}

extension UnsafeRawBufferPointer {
    /// The big-endian 16-bit number at `offset` (the caller has checked the bounds).
    @inline(__always)
    func uint16(at offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }
}
