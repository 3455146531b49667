import ArgumentParser
import Foundation
import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// `sluice observe`: flows from a running sluice's ring, filtered there, in Hubble's shapes.
struct ObserveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "observe",
        abstract: "Show the flows of a running sluice (like hubble observe).",
        discussion: """
        Talks to the control socket of 'sluice run' (control.socket, default \
        \(ControlSettings.defaultSocket)). Without --follow it prints the last 20 matching \
        flows the ring holds (--last N for more); with --follow it goes on printing new ones \
        until interrupted. Filters are matched by sluice: different filters must all match, \
        a filter given several times matches when any of its values does.

        A reader too slow for the flows loses some rather than slowing sluice: it is told \
        how many (EVENTS LOST on standard error), and 'sluice status' counts them.
        """)

    @Option(name: .long, help: ArgumentHelp("The control socket of the running sluice.", valueName: "path"))
    var socket: String = ControlSettings.defaultSocket

    @Option(name: .long, help: ArgumentHelp("Print the last N matching flows first (default 20; with --follow, 0).", valueName: "n"))
    var last: Int?

    @Flag(name: [.short, .long], help: "Keep printing new flows as they come.")
    var follow = false

    @Option(name: [.short, .customLong("output")], help: ArgumentHelp("json (Hubble's wrapper, one per line), compact or table.", valueName: "format"))
    var output: String = "compact"

    @Option(name: .long, help: ArgumentHelp("FORWARDED, DROPPED, ERROR or REDIRECTED.", valueName: "verdict"))
    var verdict: [String] = []
    @Option(name: .long, help: ArgumentHelp("Either end's namespace.", valueName: "namespace"))
    var namespace: [String] = []
    @Option(name: .long, help: ArgumentHelp("Either end's pod ([namespace/]name prefix).", valueName: "pod"))
    var pod: [String] = []
    @Option(name: .customLong("from-pod"), help: ArgumentHelp("The source's pod ([namespace/]name prefix).", valueName: "pod"))
    var fromPod: [String] = []
    @Option(name: .customLong("to-pod"), help: ArgumentHelp("The destination's pod ([namespace/]name prefix).", valueName: "pod"))
    var toPod: [String] = []
    @Option(name: .long, help: ArgumentHelp("Either end has these labels (key=value[,key=value]).", valueName: "labels"))
    var label: [String] = []
    @Option(name: .customLong("from-label"), help: ArgumentHelp("The source has these labels.", valueName: "labels"))
    var fromLabel: [String] = []
    @Option(name: .customLong("to-label"), help: ArgumentHelp("The destination has these labels.", valueName: "labels"))
    var toLabel: [String] = []
    @Option(name: .long, help: ArgumentHelp("http, dns, kafka, tcp or udp.", valueName: "protocol"))
    var `protocol`: [String] = []
    @Option(name: [.short, .customLong("type")], help: ArgumentHelp("l7, drop or trace.", valueName: "type"))
    var type: [String] = []
    @Option(name: .customLong("http-method"), help: ArgumentHelp("An HTTP method.", valueName: "method"))
    var httpMethod: [String] = []
    @Option(name: .customLong("http-path"), help: ArgumentHelp("A regular expression found in the HTTP URL.", valueName: "regex"))
    var httpPath: [String] = []
    @Option(name: .customLong("http-status"), help: ArgumentHelp("An HTTP status (403) or class (5+).", valueName: "status"))
    var httpStatus: [String] = []
    @Option(name: .long, help: ArgumentHelp("Either end's L4 port.", valueName: "port"))
    var port: [UInt16] = []

    var filter: FlowFilter {
        var filter = FlowFilter()
        filter.verdicts = verdict
        filter.namespaces = namespace
        filter.pods = pod
        filter.fromPods = fromPod
        filter.toPods = toPod
        filter.labels = label
        filter.fromLabels = fromLabel
        filter.toLabels = toLabel
        filter.protocols = `protocol`
        filter.types = type
        filter.httpMethods = httpMethod
        filter.httpPaths = httpPath
        filter.httpStatuses = httpStatus
        filter.ports = port
        return filter
    }

    func validate() throws {
        guard ["json", "compact", "table"].contains(output) else {
            throw ValidationError("-o/--output must be json, compact or table, got '\(output)'")
        }
        if let last, last < 0 { throw ValidationError("--last must be 0 or more, got \(last)") }
        do { try filter.validate() } catch { throw ValidationError("\(error)") }
    }

    func run() throws {
        let request = ControlRequest(command: "observe", last: last ?? (follow ? 0 : 20), follow: follow, filter: filter)
        let connection = try ControlConnection(path: socket)
        try connection.send(request)
        let printer = FlowPrinter(format: output)
        while let line = connection.readLine() {
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { continue }
            if let error = object["error"] as? String {
                printError("sluice observe: \(error)")
                throw ExitCode(1)
            }
            if let lost = object["lost_events"] as? [String: Any] {
                printError("EVENTS LOST: \(lost["num_events_lost"] ?? 0) flow(s) (this reader was too slow)")
                continue
            }
            printer.print(line: line, object: object)
        }
    }
}

/// A blocking client connection to the control socket, read line by line.
struct ControlConnection {
    let descriptor: Int32
    private let reader: UnsafeMutablePointer<FILE>

    init(path: String) throws {
        do {
            descriptor = try OperationsServer.connectUnix(path)
        } catch let error as Errno {
            let reason = String(cString: strerror(error.code))
            printError("cannot reach sluice at \(path): \(reason) (is 'sluice run' running? "
                       + "the path is its control.socket; pass --socket PATH)")
            throw ExitCode(1)
        }
        reader = fdopen(descriptor, "r")
    }

    func send(_ request: ControlRequest) throws {
        var bytes = Array(try JSONEncoder().encode(request))
        bytes.append(10)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            guard written > 0 else { throw Errno(code: errno, syscall: "write(control socket)") }
            offset += written
        }
    }

    /// The next line without its newline; nil at the end.
    func readLine() -> String? {
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        let count = getline(&line, &capacity, reader)
        guard count > 0, let line else { return nil }
        var text = String(cString: line)
        if text.hasSuffix("\n") { text.removeLast() }
        return text
    }
}

/// Prints flows as Hubble's `observe` does: `json` as received, `compact` one line each
/// (`TIME: SOURCE -> DESTINATION TYPE VERDICT (SUMMARY)`, a reply with `<-` and its client
/// on the left), `table` in fixed columns under one header.
final class FlowPrinter {
    let format: String
    private var headerPrinted = false

    init(format: String) { self.format = format }

    func print(line: String, object: [String: Any]) {
        guard format != "json" else {
            Swift.print(line)
            fflush(nil)
            return
        }
        guard let flow = object["flow"] as? [String: Any] else { return }
        let parts = Self.parts(flow)
        if format == "compact" {
            let arrow = parts.isReply ? "<-" : "->"
            let (left, right) = parts.isReply ? (parts.destination, parts.source) : (parts.source, parts.destination)
            Swift.print("\(parts.time): \(left) \(arrow) \(right) \(parts.type) \(parts.verdict) (\(parts.summary))")
        } else {
            if !headerPrinted {
                Swift.print(Self.row(["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]))
                headerPrinted = true
            }
            Swift.print(Self.row([parts.time, parts.source, parts.destination, parts.type, parts.verdict, parts.summary]))
        }
        fflush(nil)
    }

    static let widths = [19, 34, 34, 14, 11]

    static func row(_ cells: [String]) -> String {
        var line = ""
        for (index, cell) in cells.enumerated() {
            if index < widths.count {
                line += cell.count >= widths[index] ? cell + " " : cell + String(repeating: " ", count: widths[index] - cell.count)
            } else {
                line += cell
            }
        }
        return line
    }

    struct Parts {
        var time, source, destination, type, verdict, summary: String
        var isReply: Bool
    }

    static func parts(_ flow: [String: Any]) -> Parts {
        let ip = flow["IP"] as? [String: Any] ?? [:]
        var sourcePort: Any?, destinationPort: Any?
        if let l4 = flow["l4"] as? [String: Any], let ports = l4.values.first as? [String: Any] {
            sourcePort = ports["source_port"]
            destinationPort = ports["destination_port"]
        }
        func end(_ key: String, address: Any?, port: Any?) -> String {
            let endpoint = flow[key] as? [String: Any] ?? [:]
            var text: String
            if let pod = endpoint["pod_name"] as? String, !pod.isEmpty {
                text = (endpoint["namespace"] as? String).map { "\($0)/\(pod)" } ?? pod
            } else {
                text = (address as? String) ?? "?"
                if text.contains(":") { text = "[\(text)]" }
            }
            if let port { text += ":\(port)" }
            if let identity = endpoint["identity"] { text += " (ID:\(identity))" }
            else if let name = endpoint["name"] as? String { text += " (\(name))" }
            return text
        }
        var type = "trace"
        let verdict = flow["verdict"] as? String ?? "UNKNOWN"
        if (flow["Type"] as? String) == "L7", let l7 = flow["l7"] as? [String: Any] {
            let kind = l7.keys.first { $0 != "type" && $0 != "latency_ns" } ?? "l7"
            type = "\(kind)-" + ((l7["type"] as? String) == "RESPONSE" ? "response" : "request")
        } else if verdict == "DROPPED" {
            type = "drop"
        } else if verdict == "REDIRECTED" {
            type = "to-proxy"
        }
        return Parts(time: compactTime(flow["time"] as? String ?? ""),
                     source: end("source", address: ip["source"], port: sourcePort),
                     destination: end("destination", address: ip["destination"], port: destinationPort),
                     type: type, verdict: verdict, summary: flow["Summary"] as? String ?? "",
                     isReply: flow["is_reply"] as? Bool ?? false)
    }

    /// "2026-12-01T16:48:06.123456789Z" -> "Dec  1 16:48:06.123" (Hubble's compact time).
    static func compactTime(_ time: String) -> String {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let characters = Array(time)
        guard characters.count >= 19, let month = Int(String(characters[5..<7])), (1...12).contains(month),
              let day = Int(String(characters[8..<10])) else { return time }
        var clock = String(characters[11..<19])
        if characters.count > 20, characters[19] == "." {
            let fraction = characters[20...].prefix { $0.isNumber }
            clock += "." + String(fraction.prefix(3)).padding(toLength: 3, withPad: "0", startingAt: 0)
        } else {
            clock += ".000"
        }
        return "\(months[month - 1]) \(day < 10 ? " " : "")\(day) \(clock)"
    }
}
