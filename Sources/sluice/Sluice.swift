import ArgumentParser
#if canImport(Glibc)
import Proxy
import Glibc
#endif

/// The `sluice` command: wires the proxy, the policy engine and the datapath together.
@main
struct Sluice: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "A transparent L7 policy proxy for Linux nodes.",
        discussion: """
        Sluice enforces CiliumNetworkPolicy and Kubernetes NetworkPolicy rules on the traffic \
        the datapath diverts to it (or, in explicit mode, on traffic sent to it), and reports \
        a flow record for every connection and request.

        Exit codes: 0 success, 1 runtime failure, 2 bad input (flags, configuration, policy).
        """,
        version: version,
        subcommands: [RunCommand.self, ObserveCommand.self, StatusCommand.self, PolicyCommand.self, ReplayCommand.self, DatapathCommand.self, FQDNCommand.self, VersionCommand.self, DebugCommand.self])

    /// Runs the command; usage and validation errors exit with 2, like a bad configuration.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                let message = fullMessage(for: error)
                writeStandardError("\(message)\n")
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version", abstract: "Print the version of sluice.")

    func run() {
        print("sluice \(Sluice.version)")
    }
}

/// Prints `message` to standard error, prefixed with the program name.
func printError(_ message: String) {
    StandardError.line(message)
}

/// Writes text to standard error in one call.
func writeStandardError(_ text: String) {
    StandardError.write(text)
}
