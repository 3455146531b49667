import ArgumentParser
import L7Parsers

/// `sluice debug kafka-codec [FILE]`: what Sluice's Kafka codec reads in message bodies (the
/// differential test against kafka-python's encoder and decoder).
///
/// Each input line is `request|response API-KEY VERSION HEX-BODY` (no size, no header).
/// Each output line is one JSON object: `ok`, the decoded `value` (schema field names, bytes
/// and records in hex, UUIDs in canonical hex, tagged fields that were not sent at their
/// defaults), `reencoded` (the value written back, hex), the request's `topics` and
/// `topic_ids`, and `denied`: the body of the response Sluice answers that request with when
/// it is denied (hex); or `ok: false` and `error`.
struct DebugKafkaCodecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kafka-codec",
        abstract: "Decode Kafka message bodies (one 'request|response KEY VERSION HEX' a line) and print them as JSON.")

    @Argument(help: ArgumentHelp("File to read (default: standard input).", valueName: "file"))
    var file: String?

    func run() throws {
        let text = String(decoding: try readDebugInput(file), as: UTF8.self)
        for line in text.split(separator: "\n") where !line.isEmpty {
            print(Self.describe(line: String(line)))
        }
    }

    static func describe(line: String) -> String {
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 4, let key = Int16(parts[1]), let version = Int16(parts[2]),
              let api = KafkaMessages.apis[key], let body = hexBytes(parts[3]) else {
            return #"{"ok":false,"error":"unreadable input line"}"#
        }
        let isRequest = parts[0] == "request"
        let schema = isRequest ? api.request : api.response
        do {
            let value = try body.withUnsafeBytes { bytes throws(KafkaCodecError) in
                try KafkaCodec.decode(schema, version: version, bytes)
            }
            var writer = KafkaWriter()
            KafkaCodec.encode(value, schema, version: version, into: &writer)
            var out = #"{"ok":true,"value":"# + json(value, schema.root, version: version)
            out += #","reencoded":""# + hex(writer.bytes) + "\""
            if isRequest {
                let topics = KafkaTopics.referenced(in: value, schema: schema.root)
                out += #","topics":["# + topics.names.map(quoted).joined(separator: ",") + "]"
                out += #","topic_ids":["# + topics.ids.map { quoted($0.hexadecimal) }.joined(separator: ",") + "]"
                out += #","denied":""# + hex(KafkaErrorResponses.deniedBody(api: api, version: version, request: value)) + "\""
            }
            return out + "}"
        } catch {
            return #"{"ok":false,"error":"# + quoted("\(error)") + "}"
        }
    }

    static func json(_ value: KafkaStruct, _ schema: KafkaStructSchema, version: Int16) -> String {
        var members: [String] = []
        for (index, field) in schema.fields.enumerated() where field.versions.contains(version) {
            var item = index < value.values.count ? value.values[index] : .absent
            if item == .absent { item = KafkaCodec.defaultValue(field, version: version) }
            members.append(quoted(field.name) + ":" + json(item, field.type, version: version))
        }
        return "{" + members.joined(separator: ",") + "}"
    }

    static func json(_ value: KafkaValue, _ type: KafkaFieldType, version: Int16) -> String {
        switch value {
        case .absent: return "null"
        case .bool(let flag): return flag ? "true" : "false"
        case .int(let number): return String(number)
        case .float(let number): return number.isFinite ? "\(number)" : "null"
        case .string(let text): return text.map(quoted) ?? "null"
        case .bytes(let data): return data.map { quoted(hex($0)) } ?? "null"
        case .uuid(let uuid): return quoted(uuid.hexadecimal)
        case .array(let items):
            guard let items else { return "null" }
            let element: KafkaFieldType
            if case .array(let inner) = type { element = inner } else { element = type }
            return "[" + items.map { json($0, element, version: version) }.joined(separator: ",") + "]"
        case .structure(let inner):
            guard let inner, case .structure(let schema) = type else { return "null" }
            return json(inner, schema, version: version)
        }
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if scalar.value < 0x20 {
                    out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func hexBytes(_ text: Substring) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = nibble(utf8[index]), let low = nibble(utf8[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return character - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
