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
/// allowed and denied requests. It reports load and compile time, resident memory the
/// snapshot adds (RSS delta), and nanoseconds per evaluated request.
struct PolicyBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmark policy compilation and evaluation.", shouldDisplay: false)

    @Option(name: .long, parsing: .upToNextOption, help: "Rule counts to measure.")
    var rules: [Int] = [10, 1_000, 10_000]

    @Option(name: .long, help: "Requests evaluated per rule count.")
    var requests: Int = 200_000

    @Option(name: .long, help: "One rule in N has no literal path prefix (regex alternation); 0 = none.")
    var nonLiteralEvery: Int = 100

    @Flag(name: .long, help: "Print one JSON object per rule count.")
    var json = false

    func run() throws {
        for count in rules {
            let yaml = Self.policyText(rules: count, nonLiteralEvery: nonLiteralEvery)
            let loadStart = Self.now()
            let result = PolicyLoader.load(text: yaml, file: "bench-\(count).yaml")
            let loadSeconds = Self.now() - loadStart
            guard result.errors.isEmpty else {
                printError("benchmark policy invalid: \(result.errors[0])")
                throw ExitCode(1)
            }
            var directory = EndpointDirectory()
            let backend = Identity.pod(namespace: "bench", labels: ["app": "backend"], address: IPAddress("10.0.0.2"))
            let frontend = Identity.pod(namespace: "bench", labels: ["app": "frontend"], address: IPAddress("10.0.0.1"))
            directory.add(backend, prefix: CIDR("10.0.0.2/32")!)
            directory.add(frontend, prefix: CIDR("10.0.0.1/32")!)

            let heapBefore = Self.heapInUse()
            let compileStart = Self.now()
            let snapshot = PolicySnapshot(policies: result.policies, endpoints: directory)
            let compileSeconds = Self.now() - compileStart
            let heapAfter = Self.heapInUse()

            let flow = FlowContext(subject: backend, direction: .ingress, remote: frontend, port: 8000, transport: .tcp)
            let mix = Self.requestMix(rules: count)
            var allowed = 0
            // Warm up, then measure.
            for request in mix.prefix(1_000) { if snapshot.evaluate(flow: flow, http: request).isAllowed { allowed += 0 } }
            let evalStart = Self.now()
            for index in 0..<requests {
                if snapshot.evaluate(flow: flow, http: mix[index % mix.count]).isAllowed { allowed += 1 }
            }
            let evalSeconds = Self.now() - evalStart
            let nanosPerRequest = evalSeconds * 1e9 / Double(requests)
            let heapBytes = max(0, heapAfter - heapBefore)
            if json {
                print("{\"rules\":\(count),\"load_ms\":\(Self.fixed(loadSeconds * 1e3)),\"compile_ms\":\(Self.fixed(compileSeconds * 1e3)),\"snapshot_rss_bytes\":\(heapBytes),\"eval_ns_per_request\":\(Self.fixed(nanosPerRequest)),\"allowed_fraction\":\(Self.fixed(Double(allowed) / Double(requests)))}")
            } else {
                print("rules=\(count) load=\(Self.fixed(loadSeconds * 1e3))ms compile=\(Self.fixed(compileSeconds * 1e3))ms snapshot-rss=\(heapBytes / 1024)KiB eval=\(Self.fixed(nanosPerRequest))ns/request allowed=\(Self.fixed(100 * Double(allowed) / Double(requests)))%")
            }
            withExtendedLifetime(snapshot) {}
        }
    }

    /// One policy, `rules` HTTP rules on ingress port 8000 from app=frontend.
    static func policyText(rules: Int, nonLiteralEvery: Int) -> String {
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
                text += "          - {method: \"GET|HEAD\", path: \"/(static|assets)/r\(index)/.*\"}\n"
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

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// Resident set size in bytes, from /proc/self/statm (the heap counters of
    /// mallinfo2 are not reachable from Swift's Glibc module).
    static func heapInUse() -> Int {
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

/// A small seeded generator so benchmark inputs are the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
