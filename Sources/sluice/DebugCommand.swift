import ArgumentParser

/// `sluice debug ...`: hidden tools for tests (differential parsing) and troubleshooting.
struct DebugCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "debug",
        abstract: "Tools for tests and troubleshooting (not a stable interface).",
        shouldDisplay: false,
        subcommands: [])
}
