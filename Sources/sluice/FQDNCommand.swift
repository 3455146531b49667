import ArgumentParser
import Enforcement
import Foundation
import PolicyEngine
import Proxy

/// `sluice fqdn list`: the addresses endpoints learned from allowed DNS answers (toFQDNs).
struct FQDNCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fqdn",
        abstract: "Inspect what toFQDNs rules learned from DNS answers.",
        subcommands: [List.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List learned names and addresses, with their TTLs and the rule that allowed each.",
            discussion: """
            Reads the state file a running (or stopped) 'sluice run' keeps: fqdn.stateFile in \
            its configuration (default /var/lib/sluice/fqdn.json), written within a second of \
            each change and when sluice stops. An address stays allowed for its TTL (at least \
            fqdn.minimumTTL) plus fqdn.grace; EXPIRES shows what is left of that.
            """)

        @Option(name: .long, help: ArgumentHelp("The configuration file of the sluice whose addresses to list.", valueName: "file"))
        var config: String?

        @Option(name: .long, help: ArgumentHelp("The state file itself (instead of --config).", valueName: "file"))
        var state: String?

        @Option(name: .long, help: ArgumentHelp("Only this endpoint's addresses (its IP address).", valueName: "ip"))
        var endpoint: String?

        @Flag(name: .long, help: "One JSON object per line instead of a table.")
        var json = false

        func validate() throws {
            if (config == nil) == (state == nil) {
                throw ValidationError("give --config FILE (the configuration of 'sluice run') or --state FILE")
            }
            if let endpoint, IPAddress(endpoint) == nil {
                throw ValidationError("--endpoint must be an IP address, got '\(endpoint)'")
            }
        }

        func run() throws {
            let path: String
            if let state {
                path = state
            } else {
                let configuration: ProxyConfiguration
                do {
                    configuration = try ConfigurationLoader(file: config!, defaultWorkers: 1).load()
                } catch {
                    printError("\(error)")
                    throw ExitCode(2)
                }
                guard let file = configuration.fqdn.stateFile else {
                    printError("\(config!): fqdn.stateFile is 'none': learned addresses are kept in memory only")
                    throw ExitCode(1)
                }
                path = file.hasPrefix("/") ? file
                    : ((config! as NSString).deletingLastPathComponent as NSString).appendingPathComponent(file)
            }
            var records: [FQDNLearner.Listed]
            do {
                records = try FQDNLearner.read(from: path)
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
            if let endpoint, let wanted = IPAddress(endpoint) {
                records = records.filter { IPAddress($0.endpoint) == wanted }
            }
            let now = Date().timeIntervalSince1970
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                for record in records {
                    print(String(decoding: try encoder.encode(record), as: UTF8.self))
                }
                return
            }
            var rows = [["ENDPOINT", "NAME", "ADDRESS", "TTL", "EXPIRES", "RULE"]]
            for record in records {
                let left = record.expiresAt - now
                rows.append([record.endpoint, record.names.joined(separator: ","), record.address, "\(record.ttl)s",
                             left > 0 ? "in \(Int(left.rounded(.up)))s" : "expired", record.rule])
            }
            let widths = (0..<6).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                print(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
            if records.isEmpty { print("(no learned addresses)") }
        }
    }
}
