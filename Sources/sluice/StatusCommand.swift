import ArgumentParser
import Foundation
import Proxy

/// `sluice status`: what a running sluice is doing, from its control socket.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running sluice's version, uptime, policy, datapath, listeners and flow counts.",
        discussion: """
        Talks to the control socket of 'sluice run' (control.socket, default \
        \(ControlSettings.defaultSocket)). -o json prints the document as sluice sends it.
        """)

    @Option(name: .long, help: ArgumentHelp("The control socket of the running sluice.", valueName: "path"))
    var socket: String = ControlSettings.defaultSocket

    @Option(name: [.short, .customLong("output")], help: ArgumentHelp("text or json.", valueName: "format"))
    var output: String = "text"

    func validate() throws {
        guard ["text", "json"].contains(output) else { throw ValidationError("-o/--output must be text or json, got '\(output)'") }
    }

    func run() throws {
        let connection = try ControlConnection(path: socket)
        try connection.send(ControlRequest(command: "status"))
        guard let line = connection.readLine(),
              let status = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
            printError("sluice status: no answer from \(socket)")
            throw ExitCode(1)
        }
        if let error = status["error"] as? String {
            printError("sluice status: \(error)")
            throw ExitCode(1)
        }
        if output == "json" {
            print(line)
            return
        }
        print(Self.text(status), terminator: "")
    }

    /// The status document as lines for a person.
    static func text(_ status: [String: Any]) -> String {
        var out = ""
        func line(_ text: String) { out += text + "\n" }
        func number(_ value: Any?) -> String { value.map { "\($0)" } ?? "-" }
        line("sluice \(status["version"] ?? "?") on \(status["node_name"] ?? "?"), pid \(number(status["pid"])), up \(duration(status["uptime_seconds"] as? Int ?? 0))")
        if let policy = status["policy"] as? [String: Any] {
            if policy["configured"] as? Bool == true {
                var text = "policy: generation \(number(policy["generation"]))"
                if let last = policy["last_load"] as? [String: Any] {
                    text += ", last load \(last["result"] ?? "?") (\(last["cause"] ?? "?"), \(last["time"] ?? "?"))"
                }
                if let failures = policy["load_failures"] as? Int, failures > 0 { text += ", \(failures) failed load(s)" }
                line(text)
                if let last = policy["last_load"] as? [String: Any], let error = last["error"] as? String { line("  error: \(error)") }
                for file in policy["files"] as? [[String: Any]] ?? [] {
                    line("  \(file["path"] ?? "?"): \(file["result"] ?? "?")")
                }
            } else {
                line("policy: none (a plain relay)")
            }
        }
        if let handover = status["handover"] as? [String: Any] {
            var text = "hand-over: \(handover["socket"] as? String ?? "none")"
            if let pid = handover["took_over_from"] {
                text += " (took over from pid \(pid), \(handover["predecessor"] ?? "?")"
                if let served = handover["predecessor_connections"] { text += " after \(served) connection(s)" }
                text += ")"
            }
            line(text)
        }
        if let datapath = status["datapath"] as? [String: Any] {
            line("datapath: \(datapath["mode"] ?? "none")" + (datapath["attached"] as? Bool == true ? ", attached" : ""))
            for map in datapath["maps"] as? [[String: Any]] ?? [] {
                line("  map \(map["name"] ?? "?"): \(number(map["entries"])) of \(number(map["capacity"])) entries")
            }
            if let counters = datapath["counters"] as? [String: Any] {
                for (name, value) in counters.sorted(by: { $0.key < $1.key }) { line("  \(name): \(value)") }
            }
        }
        if let listeners = status["listeners"] as? [[String: Any]] {
            line("listeners:")
            for listener in listeners {
                line("  \(listener["name"] ?? "?") \(listener["protocol"] ?? "") \(listener["address"] ?? "") (\(listener["mode"] ?? "")): "
                     + "\(number(listener["connections"])) open")
            }
        }
        if let connections = status["connections"] as? [String: Any] {
            line("connections: \(number(connections["open"])) open, \(number(connections["buffers_in_use"])) buffer(s) in use, "
                 + "\(number(connections["workers"])) worker(s)")
        }
        if let fqdn = status["fqdn"] as? [String: Any] { line("fqdn: \(number(fqdn["learned_addresses"])) learned address(es)") }
        if let flows = status["flows"] as? [String: Any] {
            line("flows: \(number(flows["records_seen"])) recorded, ring of \(number(flows["ring_capacity"])), "
                 + "\(number(flows["observers"])) observer(s) following, \(number(flows["observer_flows_dropped"])) dropped for slow observers, "
                 + "\(number(flows["flow_log_dropped"])) dropped by the flow-log sink")
            if flows["recording"] as? Bool == false {
                line("  not recording: no flow-log sink and no metrics; the first 'sluice observe' turns records on")
            }
        }
        return out
    }

    static func duration(_ seconds: Int) -> String {
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return "\(seconds / 60)m\(seconds % 60)s" }
        return "\(seconds / 3600)h\((seconds % 3600) / 60)m"
    }
}
