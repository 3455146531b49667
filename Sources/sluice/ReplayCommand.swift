import ArgumentParser
import Foundation
import CaptureJudgement
import Enforcement
import PolicyEngine
import Proxy
import Replay
#if canImport(Glibc)
import Glibc
#endif

/// `sluice replay CAPTURE... --policy PATH --endpoints FILE`: what a policy would have done
/// to every request in recorded traffic.
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Judge recorded traffic (pcap, pcapng, gzip-compressed) against policies, as the live proxy would.",
        discussion: """
        Reads the captures in order as one recording (tcpdump -w, a tap, a CI run): link types \
        Ethernet (VLAN tags too), Linux cooked (SLL, SLL2), raw IP and loopback; IPv4 and IPv6 \
        with fragments reassembled; TCP reassembled per connection (out of order, \
        retransmissions: the first copy wins). Each connection and UDP flow meets the L3/L4 \
        policy first, then the L7 rules of its port, judged by the live proxy's own sessions \
        (HTTP/1.1, DNS over UDP and TCP). Every verdict becomes a flow record, the same JSON \
        as `sluice run` writes, on standard output or --output. A denied request is reported \
        DROPPED and the recording goes on as it was recorded, so later requests are judged \
        too. A summary on standard error ends the run: requests per protocol and verdict, per \
        denying policy, and connections not judged and why (first seen after their handshake, \
        bytes missing from the capture).

        With --expect FILE the run is a CI check: every expectation the recording breaks is \
        printed with the requests that broke it, and the exit code is 1. With --compare \
        OTHER, every request is also judged under another policy set, and only those whose \
        verdict changes are printed: the review of a policy change.

        Exit codes: 0 done (every expectation met), 1 an expectation unmet or a capture \
        that cannot be read, 2 bad input (flags, policy, expectations).
        """)

    @Argument(help: ArgumentHelp("Capture files, read in order as one recording.", valueName: "capture"))
    var captures: [String]

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("A policy file or directory (repeatable).", valueName: "path"))
    var policy: [String] = []

    @Option(name: .long, help: ArgumentHelp("The endpoints file: addresses to namespaces and labels.", valueName: "file"))
    var endpoints: String

    @Option(name: .long, help: ArgumentHelp("Write flow records here instead of standard output.", valueName: "file"))
    var output: String?

    @Option(name: .long, help: ArgumentHelp("A YAML list of expectations (from/to labels or address, port, http method and path or dns name, and 'verdict: allowed|denied' or 'never: denied'); every unmet one is printed with the requests that broke it, and sluice exits 1.", valueName: "file"))
    var expect: String?

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("Judge every request under this policy set too (repeatable, like --policy) and print only the requests and connections whose verdict changes, one a line: the review of a policy change. Flow records then go only to --output.", valueName: "path"))
    var compare: [String] = []

    @Option(name: .long, help: ArgumentHelp("A 'sluice run' configuration whose http and dns settings to judge with (default: the defaults).", valueName: "file"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Print a progress line (bytes read, rate, time left) every this many seconds; 0 for none. Default: after two seconds, every second on a terminal, every ten seconds otherwise.", valueName: "seconds"))
    var progress: Double?

    func validate() throws {
        if let progress, !(progress >= 0 && progress <= 86_400) {
            throw ValidationError("--progress takes seconds between 0 and 86400, not \(progress)")
        }
        if captures.isEmpty { throw ValidationError("give at least one capture file") }
        if policy.isEmpty { throw ValidationError("give at least one --policy file or directory") }
    }

    func run() throws {
        var configuration = ProxyConfiguration(workers: 1, listeners: [])
        if let config {
            do {
                configuration = try ConfigurationLoader(file: config, defaultWorkers: 1).load()
            } catch {
                printError("\(error)")
                throw ExitCode(2)
            }
        }
        let snapshot: PolicySnapshot
        do {
            snapshot = try PolicyFiles.loadSnapshot(policyPaths: policy, endpoints: endpoints)
        } catch {
            printError("policy: \(error)")
            throw ExitCode(2)
        }
        var compared: PolicySnapshot?
        if !compare.isEmpty {
            do {
                compared = try PolicyFiles.loadSnapshot(policyPaths: compare, endpoints: endpoints)
            } catch {
                printError("--compare: \(error)")
                throw ExitCode(2)
            }
        }
        let writer: RecordWriter?
        do {
            if let output {
                writer = try RecordWriter(path: output)
            } else {
                writer = compared == nil ? RecordWriter() : nil
            }
        } catch {
            printError("\(error)")
            throw ExitCode(2)
        }
        var check: ExpectationCheck?
        if let expect {
            do {
                let text = try String(contentsOfFile: expect, encoding: .utf8)
                check = ExpectationCheck(try Expectation.load(text: text, file: expect), next: writer)
            } catch let error as ExpectationError {
                printError("\(error)")
                throw ExitCode(2)
            } catch {
                printError("\(expect): cannot be read: \(error)")
                throw ExitCode(2)
            }
        }
        let changes = RecordWriter()
        let judge = CaptureJudge(snapshot: snapshot, registry: .standard(configuration: configuration),
                                 output: check.map { $0 as L7FlowReporter } ?? writer,
                                 comparedWith: compared) { change in changes.line(change.description) }
        let started = MonotonicClock.now()
        let judgingStarted = Self.threadCPUSeconds()
        let summary: CaptureJudge.Summary
        let progress = ReplayProgressLine(captures: captures, interval: self.progress)
        do {
            summary = try judge.judge(paths: captures) { progress.update($0) }
            progress.finish()
        } catch {
            progress.finish()
            writer?.flush()
            changes.flush()
            printError("replay: \(error)")
            throw ExitCode(1)
        }
        writer?.flush()
        changes.flush()
        printSummary(summary, records: writer?.written ?? 0, seconds: Double(MonotonicClock.now() - started) / 1e9,
                     judgingCPU: Self.threadCPUSeconds() - judgingStarted)
        if compared != nil {
            printError("  compared with \(compare.joined(separator: ", ")): \(judge.changes) verdict(s) change")
        }
        if let check {
            let unmet = check.unmet
            for failure in unmet {
                printError("unmet: \(failure.expectation.name): \(failure.reason)")
                for example in failure.examples { printError("  \(example)") }
            }
            printError("expectations: \(check.checked - unmet.count) of \(check.checked) met")
            if !unmet.isEmpty { throw ExitCode(1) }
        }
    }

    /// CPU time of the calling thread (the judging one: reading, reassembly, the sessions).
    private static func threadCPUSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    private func printSummary(_ summary: CaptureJudge.Summary, records: Int, seconds: Double, judgingCPU: Double) {
        let capture = summary.capture
        let megabytes = Double(capture.capturedBytes) / 1_048_576
        // The judging thread is the busiest of three: the capture is read and reassembled by
        // one, judged by this one, and its records made and written by a third, in parallel.
        printError(String(format: "replay: %d packets, %.1f MiB in %.2f s (%.1f MiB/s; judging thread %.2f s of CPU); %d flow records",
                          capture.packets, megabytes, seconds, seconds > 0 ? megabytes / seconds : 0, judgingCPU, records))
        for (kind, verdicts) in summary.requests.sorted(by: { $0.key < $1.key }) {
            let parts = verdicts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key.lowercased())" }
            printError("  \(kind) requests: " + parts.joined(separator: ", "))
        }
        for (policy, count) in summary.deniedBy.sorted(by: { $0.value > $1.value }) {
            printError(policy == "no rule allows it" ? "  denied: \(count), no rule allowing them"
                       : "  denied: \(count) by \(policy)")
        }
        let connections = summary.connections
        printError("  connections and flows: \(connections.connections) (\(connections.judged) judged at L7, "
                   + "\(connections.layer4) L3/L4 only, \(connections.deniedAtLayer4) denied at L3/L4, "
                   + "\(connections.refused) with L7 rules sluice cannot judge yet)")
        var notJudged: [String] = []
        if summary.resynchronised > 0 {
            printError("  \(summary.resynchronised) HTTP connection(s) first seen after their handshake, judged from their first whole request line")
        }
        if summary.skippedMidstream > 0 {
            notJudged.append("\(summary.skippedMidstream) first seen after their handshake (skipped: not HTTP, or no request line in them)")
        }
        if summary.incomplete > 0 { notJudged.append("\(summary.incomplete) with bytes missing from the capture (judged up to the gap)") }
        if summary.truncatedDatagrams > 0 { notJudged.append("\(summary.truncatedDatagrams) UDP datagrams cut by the snaplen (skipped)") }
        for (reason, count) in connections.endedBySession.sorted(by: { $0.value > $1.value }) {
            notJudged.append("\(count) ended by their session: \(reason)")
        }
        if !notJudged.isEmpty { printError("  not judged in full: " + notJudged.joined(separator: "; ")) }
        if capture.conflictingOverlaps > 0 {
            printError("  \(capture.conflictingOverlaps) retransmission(s) carried different bytes: the first copy was judged")
        }
    }
}

/// The progress line on standard error while a long replay runs: bytes read of all the
/// captures, the rate, and the time left. By default nothing for a replay shorter than two
/// seconds, then on a terminal the line is redrawn in place every second, and otherwise (a CI
/// log) a line every ten seconds; `interval` (seconds, from `--progress`) sets the period
/// from the start instead, 0 turning it off. `update` is called on the replay's reading
/// thread only, and `finish` after the replay has returned (so after that thread ended).
final class ReplayProgressLine: @unchecked Sendable {
    private let sizes: [Int64]
    private let total: Int64
    private let started = MonotonicClock.now()
    private var lastPrinted: UInt64 = 0
    private var drawn = false
    private let terminal = isatty(STDERR_FILENO) == 1
    private var currentFile = -1
    private let firstAfter: UInt64
    private let period: UInt64?

    init(captures: [String], interval: Double? = nil) {
        if let interval {
            firstAfter = 0
            period = interval > 0 ? UInt64(interval * 1e9) : nil
        } else {
            firstAfter = 2_000_000_000
            period = terminal ? 1_000_000_000 : 10_000_000_000
        }
        sizes = captures.map { path in
            var status = stat()
            return stat(path, &status) == 0 ? Int64(status.st_size) : 0
        }
        total = sizes.reduce(0, +)
    }

    func update(_ progress: CaptureJudge.Progress) {
        if progress.fileIndex != currentFile {
            currentFile = progress.fileIndex
            clear()
            printError("replay: reading \(progress.file)")
        }
        let now = MonotonicClock.now()
        let elapsed = now - started
        guard let period, elapsed >= firstAfter, elapsed > 0, now - lastPrinted >= period else { return }
        lastPrinted = now
        let done = sizes.prefix(progress.fileIndex).reduce(0, +) + progress.bytesRead
        let seconds = Double(elapsed) / 1e9
        let rate = Double(done) / seconds
        var line = String(format: "replay: %.1f of %.1f MiB read (%.0f%%), %.1f MiB/s", Double(done) / 1_048_576,
                          Double(total) / 1_048_576, total > 0 ? Double(done) * 100 / Double(total) : 0, rate / 1_048_576)
        if rate > 0, total > done { line += String(format: ", about %.0f s left", Double(total - done) / rate) }
        if terminal {
            writeStandardError("\r\u{1B}[K" + line)
            drawn = true
        } else {
            printError(line)
        }
    }

    /// Ends the line drawn in place, if any, so that what follows starts on its own line.
    func finish() { clear() }

    private func clear() {
        guard drawn else { return }
        writeStandardError("\r\u{1B}[K")
        drawn = false
    }
}
