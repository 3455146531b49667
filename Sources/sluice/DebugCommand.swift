import ArgumentParser
import L7Parsers
#if canImport(Glibc)
import Glibc
#endif

/// `sluice debug ...`: hidden tools for tests (differential parsing) and troubleshooting.
struct DebugCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "debug",
        abstract: "Tools for tests and troubleshooting (not a stable interface).",
        shouldDisplay: false,
        subcommands: [DebugHTTP1ParseCommand.self, DebugDNSParseCommand.self, DebugKafkaCodecCommand.self])
}

/// `sluice debug http1-parse [FILE]`: what Sluice's HTTP/1.1 parser sees in raw bytes.
///
/// Prints one JSON object: every complete message (offsets, head fields, framing, body
/// bytes as decoded from chunks) and why parsing stopped (end of input, an error with the
/// status Sluice would answer, or a pending protocol switch). Strings carry one character
/// per byte (Latin-1), so a reader gets the exact bytes back with `.encode("latin-1")`.
struct DebugHTTP1ParseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http1-parse",
        abstract: "Parse raw HTTP/1.1 bytes from a file or stdin and print what the parser sees as JSON.",
        discussion: """
        Requests by default. With --response, the bytes are responses to the requests named by \
        --requests (comma-separated methods in order; 'GET+upgrade' for a request that asked for \
        an upgrade). --split N feeds the parser N bytes at a time, as a socket would.
        """)

    @Argument(help: ArgumentHelp("File to read (default: standard input).", valueName: "file"))
    var file: String?

    @Flag(name: .long, help: "Parse responses instead of requests.")
    var response = false

    @Option(name: .long, help: ArgumentHelp("Methods of the requests the responses answer, in order.", valueName: "list"))
    var requests: String = ""

    @Option(name: .long, help: ArgumentHelp("Feed this many bytes per call (0: all at once).", valueName: "n"))
    var split: Int = 0

    func validate() throws {
        if split < 0 { throw ValidationError("--split must be 0 or more") }
    }

    func run() throws {
        let input = try readInput()
        var parser = HTTP1Parser(direction: response ? .response : .request)
        if response {
            for entry in requests.split(separator: ",") {
                let parts = entry.split(separator: "+")
                let method = parts.first.map(String.init) ?? ""
                parser.expectResponse(to: HTTP1RequestSummary(isHead: method == "HEAD", isConnect: method == "CONNECT",
                                                              upgradeRequested: parts.dropFirst().contains("upgrade")))
            }
        }
        let report = Self.parse(input, with: &parser, sliceSize: split == 0 ? max(input.count, 1) : split)
        print(report)
    }

    private func readInput() throws -> [UInt8] { try readDebugInput(file) }
}

/// The bytes of `file`, or of standard input when nil.
func readDebugInput(_ file: String?) throws -> [UInt8] {
    let descriptor: Int32
    if let file {
        descriptor = open(file, O_RDONLY)
        if descriptor < 0 { throw ValidationError("cannot open \(file): errno \(errno)") }
    } else {
        descriptor = 0
    }
    defer { if descriptor != 0 { close(descriptor) } }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count < 0 { throw ValidationError("read failed: errno \(errno)") }
        if count == 0 { return bytes }
        bytes += chunk[..<count]
    }
}

extension DebugHTTP1ParseCommand {
    /// One message as the JSON report shows it.
    private struct Message {
        var start = 0
        var head = HTTP1Head()
        var headFields = ""
        var body: [UInt8] = []
        var trailers = ""
        var end = 0
    }

    /// Plays the driver: keeps the unconsumed bytes, feeds slices, records every event.
    static func parse(_ input: [UInt8], with parser: inout HTTP1Parser, sliceSize: Int) -> String {
        var messages: [String] = []
        var current = Message()
        var buffer: [UInt8] = []
        var consumed = 0
        var fed = 0
        var stop = ""
        feeding: while true {
            let sliceEnd = min(fed + sliceSize, input.count)
            buffer += input[fed..<sliceEnd]
            fed = sliceEnd
            while true {
                let event = buffer.withUnsafeBytes { bytes -> HTTP1Event in
                    let event = parser.parse(bytes)
                    switch event {
                    case .head(let head):
                        current = Message(start: consumed, head: head)
                        current.headFields = head.fields.map { field in
                            "[\(jsonString(bytes, field.name)),\(jsonString(bytes, field.value))]"
                        }.joined(separator: ",")
                        current.headFields = """
                            "method":\(jsonString(bytes, head.method)),"target":\(jsonString(bytes, head.target)),\
                            "reason":\(jsonString(bytes, head.reason)),"headers":[\(current.headFields)]
                            """
                    case .body(let count):
                        current.body += UnsafeRawBufferPointer(rebasing: bytes[0..<count])
                    case .messageComplete(_, let trailers):
                        current.trailers = trailers.map { field in
                            "[\(jsonString(bytes, field.name)),\(jsonString(bytes, field.value))]"
                        }.joined(separator: ",")
                    default:
                        break
                    }
                    return event
                }
                var eventConsumed = 0
                switch event {
                case .needMore:
                    if fed == input.count { break feeding }
                    continue feeding
                case .head(let head): eventConsumed = head.length
                case .body(let count), .chunkFraming(let count): eventConsumed = count
                case .messageComplete(let count, _):
                    eventConsumed = count
                    current.end = consumed + count
                    messages.append(describe(current))
                    let head = current.head
                    if parser.direction == .request && (head.upgradeRequested || head.isConnect) {
                        stop = #"{"kind":"protocolSwitchPending","offset":\#(current.end)}"#
                        break feeding
                    }
                case .tunnel:
                    stop = #"{"kind":"tunnel","offset":\#(consumed)}"#
                    break feeding
                case .error(let error):
                    stop = #"{"kind":"error","offset":\#(consumed + error.offset),"error":"\#(error.kind.rawValue)","status":\#(error.status)}"#
                    break feeding
                }
                buffer.removeFirst(eventConsumed)
                consumed += eventConsumed
            }
        }
        if stop.isEmpty {
            switch parser.endOfInput(unconsumedBytes: buffer.count) {
            case .cleanClose:
                stop = #"{"kind":"end","offset":\#(consumed)}"#
            case .messageComplete:
                current.end = consumed
                messages.append(describe(current))
                stop = #"{"kind":"end","offset":\#(consumed)}"#
            case .truncated:
                stop = #"{"kind":"incomplete","offset":\#(consumed)}"#
            }
        }
        let direction = parser.direction == .request ? "request" : "response"
        return #"{"direction":"\#(direction)","messages":[\#(messages.joined(separator: ","))],"stop":\#(stop)}"#
    }

    private static func describe(_ message: Message) -> String {
        let head = message.head
        let framing: String
        switch head.framing {
        case .none: framing = #""none""#
        case .contentLength(let length): framing = #""content-length","contentLength":\#(length)"#
        case .chunked: framing = #""chunked""#
        case .untilClose: framing = #""until-close""#
        }
        let body = message.body.withUnsafeBytes { jsonString($0, 0..<$0.count) }
        return """
            {"start":\(message.start),"headLength":\(head.length),"end":\(message.end),\(message.headFields),\
            "version":"\(head.version)","status":\(head.statusCode),"framing":\(framing),"body":\(body),\
            "trailers":[\(message.trailers)],"keepAlive":\(head.keepAlive),"expectContinue":\(head.expectsContinue),\
            "upgrade":\(head.upgradeRequested),"connect":\(head.isConnect),"switchesProtocol":\(head.switchesProtocol),\
            "informational":\(head.isInformational)}
            """
    }

    /// A JSON string with one character per byte (U+0000...U+00FF).
    private static func jsonString(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        var text = "\""
        for index in range {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""): text += "\\\""
            case UInt8(ascii: "\\"): text += "\\\\"
            case 0x20..<0x7F: text.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16)
                text += "\\u00" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return text + "\""
    }
}
