import ArgumentParser
import PolicyEngine
#if canImport(Glibc)
import Glibc
#endif

/// `sluice policy bench`: the policy benchmark that `bench/policy/run` drives. Hidden:
/// it is a measuring tool, not a user command.
///
/// For each rule count it generates one CiliumNetworkPolicy whose ingress rule holds
/// that many HTTP rules (distinct literal path prefixes, a few regex-only rules, mixed
/// methods), loads it from YAML, compiles a snapshot, and evaluates a fixed mix of
/// allowed and denied requests. It reports load and compile time, the heap bytes the
/// loaded policies and the compiled snapshot hold (allocator counters, see
/// `HeapStatistics`) and their sum per rule, the resident memory the snapshot adds (RSS
/// delta, page-granular), and nanoseconds per evaluated request twice: through
/// `PolicySnapshot.evaluate(flow:http:)` (finds the endpoint and decides L3/L4 on every
/// call) and through a `ConnectionPolicy` held for the connection, as the proxy does.
struct PolicyBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmark policy compilation and evaluation.", shouldDisplay: false)

    @Option(name: .long, parsing: .upToNextOption, help: "Rule counts to measure.")
    var rules: [Int] = [10, 1_000, 10_000]

    @Option(name: .long, help: "Requests evaluated per round.")
    var requests: Int = 100_000

    @Option(name: .long, help: "Timed rounds per figure; the fastest round is reported (the others were disturbed).")
    var rounds: Int = 7

    @Option(name: .long, help: "One rule in N has no literal path prefix (regex alternation); 0 = none.")
    var nonLiteralEvery: Int = 100

    @Option(name: .long, help: ArgumentHelp("Form of the rules without a literal prefix: 'literal' (/(static|assets)/rN/.*, a required literal inside) or 'opaque' (no literal of 4 bytes anywhere).", valueName: "form"))
    var nonLiteralForm: NonLiteralForm = .literal

    enum NonLiteralForm: String, ExpressibleByArgument {
        case literal, opaque
    }

    @Flag(name: .long, help: "Print one JSON object per rule count.")
    var json = false

    func run() throws {
        // One-time costs (YAML and regex machinery set up on first use) are paid here,
        // outside the figures, so the heap per rule at 10 rules is about the rules.
        let warmUp = PolicyLoader.load(text: Self.policyText(rules: 10, nonLiteralEvery: nonLiteralEvery, form: nonLiteralForm), file: "warm-up.yaml")
        withExtendedLifetime(PolicySnapshot(policies: warmUp.policies)) {}
        for count in rules {
            let yaml = Self.policyText(rules: count, nonLiteralEvery: nonLiteralEvery, form: nonLiteralForm)
            let heapBeforeLoad = HeapStatistics.bytesInUse()
            let loadStart = Self.now()
            let result = PolicyLoader.load(text: yaml, file: "bench-\(count).yaml")
            let loadSeconds = Self.now() - loadStart
            let heapAfterLoad = HeapStatistics.bytesInUse()
            guard result.errors.isEmpty else {
                printError("benchmark policy invalid: \(result.errors[0])")
                throw ExitCode(1)
            }
            var directory = EndpointDirectory()
            let backend = Identity.pod(namespace: "bench", labels: ["app": "backend"], address: IPAddress("10.0.0.2"))
            let frontend = Identity.pod(namespace: "bench", labels: ["app": "frontend"], address: IPAddress("10.0.0.1"))
            directory.add(backend, prefix: CIDR("10.0.0.2/32")!)
            directory.add(frontend, prefix: CIDR("10.0.0.1/32")!)

            let residentBefore = Self.residentBytes()
            let heapBefore = HeapStatistics.bytesInUse()
            let compileStart = Self.now()
            let snapshot = PolicySnapshot(policies: result.policies, endpoints: directory)
            let compileSeconds = Self.now() - compileStart
            let heapAfter = HeapStatistics.bytesInUse()
            let residentAfter = Self.residentBytes()

            let flow = FlowContext(subject: backend, direction: .ingress, remote: frontend, port: 8000, transport: .tcp)
            let mix = Self.requestMix(rules: count)
            // Whole evaluation per request: find the endpoint's policy, L3/L4, then L7.
            var allowed = 0
            for request in mix.prefix(1_000) { if snapshot.evaluate(flow: flow, http: request).isAllowed { allowed += 0 } }
            let nanosPerRequest = Self.fastestRound(requests: requests, rounds: rounds) { index in
                if snapshot.evaluate(flow: flow, http: mix[index % mix.count]).isAllowed { allowed += 1 }
            }
            // Per request on a connection whose policy handle the proxy holds: L7 only.
            let connection = snapshot.policy(forEndpoint: backend).connection(flow)
            var connectionAllowed = 0
            for request in mix.prefix(1_000) { if connection.evaluate(http: request).isAllowed { connectionAllowed += 0 } }
            let connectionNanos = Self.fastestRound(requests: requests, rounds: rounds) { index in
                if connection.evaluate(http: mix[index % mix.count]).isAllowed { connectionAllowed += 1 }
            }
            guard connectionAllowed == allowed else {
                printError("connection handle and snapshot disagree: \(connectionAllowed) vs \(allowed) allowed")
                throw ExitCode(1)
            }

            let policyHeap = heapAfterLoad.map { after in heapBeforeLoad.map { max(0, after - $0) } ?? 0 }
            let snapshotHeap = heapAfter.map { after in heapBefore.map { max(0, after - $0) } ?? 0 }
            let perRule = policyHeap.flatMap { policyBytes in snapshotHeap.map { Double(policyBytes + $0) / Double(count) } }
            let residentDelta = max(0, residentAfter - residentBefore)
            func number(_ value: Int?) -> String { value.map(String.init) ?? "null" }
            if json {
                print("{\"rules\":\(count),\"load_ms\":\(Self.fixed(loadSeconds * 1e3)),\"compile_ms\":\(Self.fixed(compileSeconds * 1e3)),"
                    + "\"policy_heap_bytes\":\(number(policyHeap)),\"snapshot_heap_bytes\":\(number(snapshotHeap)),"
                    + "\"heap_bytes_per_rule\":\(perRule.map { Self.fixed($0) } ?? "null"),\"snapshot_rss_bytes\":\(residentDelta),"
                    + "\"eval_ns_per_request\":\(Self.fixed(nanosPerRequest)),\"eval_connection_ns_per_request\":\(Self.fixed(connectionNanos)),"
                    + "\"allowed_fraction\":\(Self.fixed(Double(allowed) / Double(requests * rounds)))}")
            } else {
                print("rules=\(count) load=\(Self.fixed(loadSeconds * 1e3))ms compile=\(Self.fixed(compileSeconds * 1e3))ms"
                    + " heap: policies=\(policyHeap.map { "\($0 / 1024)KiB" } ?? "n/a") snapshot=\(snapshotHeap.map { "\($0 / 1024)KiB" } ?? "n/a")"
                    + " per-rule=\(perRule.map { "\(Int($0.rounded()))B" } ?? "n/a") snapshot-rss=\(residentDelta / 1024)KiB"
                    + " eval=\(Self.fixed(nanosPerRequest))ns/request eval-connection=\(Self.fixed(connectionNanos))ns/request"
                    + " allowed=\(Self.fixed(100 * Double(allowed) / Double(requests * rounds)))%")
            }
            withExtendedLifetime(snapshot) {}
            withExtendedLifetime(result) {}
        }
    }

    /// One policy, `rules` HTTP rules on ingress port 8000 from app=frontend.
    static func policyText(rules: Int, nonLiteralEvery: Int, form: NonLiteralForm = .literal) -> String {
        var text = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: bench, namespace: bench}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: frontend}}]
            toPorts:
            - ports: [{port: "8000", protocol: TCP}]
              rules:
                http:

        """
        let methods = ["GET", "POST", "PUT", "DELETE"]
        for index in 0..<rules {
            if nonLiteralEvery > 0, index % nonLiteralEvery == nonLiteralEvery - 1 {
                // A rule without a literal prefix: always a candidate, as in real policies.
                switch form {
                case .literal:
                    text += "          - {method: \"GET|HEAD\", path: \"/(static|assets)/r\(index)/.*\"}\n"
                case .opaque:
                    // Only the index's digits, each class-wrapped: no literal text to filter on.
                    let digits = String(index).map { "[\($0)]" }.joined()
                    text += "          - {method: \"GET|HEAD\", path: \"/(static|assets)/[a-z]+\(digits)/.*\"}\n"
                }
            } else {
                text += "          - {method: \(methods[index % 4]), path: \"/api/v\(index % 3 + 1)/service\(index)/items/[0-9]+\"}\n"
            }
        }
        return text
    }

    /// Requests hitting rules across the range (allowed) and misses (denied).
    static func requestMix(rules: Int) -> [HTTPRequestFacts] {
        let methods = ["GET", "POST", "PUT", "DELETE"]
        var generator = SplitMix64(seed: 42)
        var mix: [HTTPRequestFacts] = []
        for _ in 0..<1_024 {
            let index = Int(generator.next() % UInt64(rules))
            switch generator.next() % 4 {
            case 0: mix.append(HTTPRequestFacts(method: "GET", path: "/api/v9/unknown/\(index)"))
            case 1: mix.append(HTTPRequestFacts(method: methods[(index + 1) % 4], path: "/api/v\(index % 3 + 1)/service\(index)/items/7"))
            default: mix.append(HTTPRequestFacts(method: methods[index % 4], path: "/api/v\(index % 3 + 1)/service\(index)/items/\(index)"))
            }
        }
        return mix
    }

    /// Runs `body` for request indexes 0..<requests, `rounds` times, and returns the
    /// nanoseconds per request of the fastest round: on a shared machine the slower
    /// rounds measure other processes.
    static func fastestRound(requests: Int, rounds: Int, _ body: (Int) -> Void) -> Double {
        var best = Double.infinity
        for _ in 0..<max(1, rounds) {
            let start = now()
            for index in 0..<requests { body(index) }
            best = min(best, (now() - start) * 1e9 / Double(requests))
        }
        return best
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// Resident set size in bytes, from /proc/self/statm: page-granular and noisy, kept
    /// because it also counts what the heap figures cannot see (PCRE2's JIT code, which
    /// sljit maps with mmap outside malloc).
    static func residentBytes() -> Int {
        guard let file = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(file) }
        var size = 0, resident = 0
        guard withUnsafeMutablePointer(to: &size, { sizePointer in
            withUnsafeMutablePointer(to: &resident) { residentPointer in
                withVaList([sizePointer, residentPointer]) { vfscanf(file, "%ld %ld", $0) }
            }
        }) == 2 else { return 0 }
        return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    static func fixed(_ value: Double) -> String {
        let scaled = (value * 100).rounded() / 100
        return "\(scaled)"
    }
}

/// Bytes the C allocator has handed out and not taken back, from glibc's
/// `malloc_info`: `mallinfo2` (and `mallinfo`) are not visible through Swift's Glibc
/// module, and a struct-returning C function cannot be called through a `dlsym`
/// pointer from Swift, but `int malloc_info(int options, FILE *stream)` can. Its XML
/// ends with the totals over every arena: in use = system bytes of the arenas minus
/// their free chunks (`fast` and `rest`), plus the bytes of mmap'd chunks. Exact to
/// within the chunks held in per-thread caches; no page rounding, unlike RSS.
enum HeapStatistics {
    private typealias MallocInfo = @convention(c) (Int32, UnsafeMutablePointer<FILE>?) -> Int32

    private static let mallocInfo: MallocInfo? = {
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "malloc_info") else { return nil }
        return unsafeBitCast(symbol, to: MallocInfo.self)
    }()

    /// Nil when the C library has no `malloc_info` (not glibc).
    static func bytesInUse() -> Int? {
        guard let mallocInfo else { return nil }
        var buffer: UnsafeMutablePointer<CChar>?
        var length = 0
        guard let stream = open_memstream(&buffer, &length) else { return nil }
        let status = mallocInfo(0, stream)
        fclose(stream)
        guard let buffer else { return nil }
        defer { free(buffer) }
        guard status == 0 else { return nil }
        let text = String(cString: buffer)
        // The totals follow the last per-arena block.
        guard let end = text.ranges(of: "</heap>").last else { return nil }
        let totals = text[end.upperBound...]
        func sizeAttribute(of element: String) -> Int? {
            guard let start = totals.firstRange(of: element) else { return nil }
            guard let sizeStart = totals[start.upperBound...].firstRange(of: "size=\"") else { return nil }
            return Int(totals[sizeStart.upperBound...].prefix { $0 != "\"" })
        }
        guard let system = sizeAttribute(of: "<system type=\"current\""), let fast = sizeAttribute(of: "<total type=\"fast\""),
              let rest = sizeAttribute(of: "<total type=\"rest\""), let mapped = sizeAttribute(of: "<total type=\"mmap\"") else { return nil }
        return system - fast - rest + mapped
    }
}
