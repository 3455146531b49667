import ArgumentParser
import L7Parsers
import Proxy

/// `sluice debug dns-parse [--tcp] [FILE]`: what Sluice's DNS codec reads in raw bytes, as
/// JSON, for the differential test against dnspython and for troubleshooting.
struct DebugDNSParseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dns-parse",
        abstract: "Parse a raw DNS message (or a TCP stream of them) and print what the codec reads as JSON.",
        discussion: """
        Without --tcp the bytes are one message (a UDP payload). With --tcp they are a stream \
        of messages each behind a two-byte length. A message prints as {"ok": true, "id", \
        "flags", "questions", "answers", "authority", "additional", "edns"} or {"ok": false, \
        "error": KIND}; names as dnspython writes them.
        """)

    @Argument(help: ArgumentHelp("File to read (default: standard input).", valueName: "file"))
    var file: String?

    @Flag(name: .long, help: "Read a TCP stream of length-prefixed messages.")
    var tcp = false

    func run() throws {
        let input = try readDebugInput(file)
        let report: String = input.withUnsafeBytes { bytes in
            guard tcp else { return Self.describe(bytes) }
            var messages: [String] = []
            var offset = 0
            while true {
                let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
                guard case .message(let range) = DNSStreamFraming.next(rest) else { break }
                messages.append(Self.describe(UnsafeRawBufferPointer(rebasing: rest[range])))
                offset += range.upperBound
            }
            return #"{"messages":[\#(messages.joined(separator: ","))],"incompleteBytes":\#(bytes.count - offset)}"#
        }
        print(report)
    }

    static func describe(_ bytes: UnsafeRawBufferPointer) -> String {
        do throws(DNSParseError) {
            let message = try DNSMessage.parse(bytes)
            let questions = try message.questions.map { question throws(DNSParseError) in
                #"{"name":\#(JSONObject.quoted(try DNSWireName.text(bytes, at: question.name))),"type":\#(question.type),"class":\#(question.recordClass)}"#
            }
            func records(_ list: [DNSRecord]) throws(DNSParseError) -> String {
                try "[" + list.map { record throws(DNSParseError) in try describe(record, in: bytes) }.joined(separator: ",") + "]"
            }
            var edns = "null"
            if let opt = message.edns {
                let options = opt.options.map { #"[\#($0.code),"\#(hex(bytes, $0.data))"]"# }
                edns = #"{"payload":\#(opt.payloadSize),"rcode_high":\#(opt.extendedRCode),"version":\#(opt.version),"flags":\#(opt.flags),"options":[\#(options.joined(separator: ","))]}"#
            }
            return #"{"ok":true,"id":\#(message.header.id),"flags":\#(message.header.flags),"questions":[\#(questions.joined(separator: ","))],"answers":\#(try records(message.answers)),"authority":\#(try records(message.authority)),"additional":\#(try records(message.additional)),"edns":\#(edns)}"#
        } catch {
            return #"{"ok":false,"error":"\#(error.kind)"}"#
        }
    }

    private static func describe(_ record: DNSRecord, in bytes: UnsafeRawBufferPointer) throws(DNSParseError) -> String {
        var fields = #"{"name":\#(JSONObject.quoted(try DNSWireName.text(bytes, at: record.name))),"type":\#(record.type),"class":\#(record.recordClass),"ttl":\#(record.ttl)"#
        let data = UnsafeRawBufferPointer(rebasing: bytes[record.data])
        switch record.type {
        case DNSRecordType.a where record.recordClass == DNSRecordType.internetClass:
            fields += #","address":"\#(data.map(String.init).joined(separator: "."))""#
        case DNSRecordType.aaaa where record.recordClass == DNSRecordType.internetClass:
            fields += #","address":"\#(ipv6Text(data))""#
        case DNSRecordType.cname, DNSRecordType.ns, DNSRecordType.ptr:
            fields += #","target":\#(JSONObject.quoted(try DNSWireName.text(bytes, at: record.data.lowerBound)))"#
        default:
            fields += #","rdata":"\#(hex(bytes, record.data))""#
        }
        return fields + "}"
    }

    private static func hex(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(range.count * 2)
        for byte in bytes[range] {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xf)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// RFC 5952 text (the longest run of two or more zero groups compressed, the first on a
    /// tie), as Python's `ipaddress` writes it.
    private static func ipv6Text(_ data: UnsafeRawBufferPointer) -> String {
        let groups = (0..<8).map { UInt16(data[$0 * 2]) << 8 | UInt16(data[$0 * 2 + 1]) }
        var best = (start: -1, length: 0)
        var run = (start: -1, length: 0)
        for (index, group) in groups.enumerated() {
            if group == 0 {
                run = run.start < 0 ? (index, 1) : (run.start, run.length + 1)
                if run.length > best.length { best = run }
            } else {
                run = (-1, 0)
            }
        }
        let text = groups.map { String($0, radix: 16) }
        guard best.length >= 2 else { return text.joined(separator: ":") }
        let head = text[..<best.start].joined(separator: ":")
        let tail = text[(best.start + best.length)...].joined(separator: ":")
        return head + "::" + tail
    }
}
