// swift-tools-version:6.0
// Sluice: a transparent L7 policy proxy for Linux nodes.
import PackageDescription

/// The event loop and the parsers move bytes through structs held by per-connection
/// classes; in release builds Swift's dynamic exclusivity checks on those accesses cost
/// about a quarter of the proxy's CPU per request (measured with callgrind, bench/http1).
/// Debug builds, and so the unit tests, keep the checks.
let hotPathSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "sluice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // C libraries made for the job, reached through module maps (system-library targets).
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", path: "Sources/CNghttp2", pkgConfig: "libnghttp2",
                       providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CPCRE2", path: "Sources/CPCRE2", pkgConfig: "libpcre2-8",
                       providers: [.apt(["libpcre2-dev"])]),
        .systemLibrary(name: "CBPF", path: "Sources/CBPF", pkgConfig: "libbpf",
                       providers: [.apt(["libbpf-dev"])]),
        .systemLibrary(name: "CNftables", path: "Sources/CNftables", pkgConfig: "libnftables",
                       providers: [.apt(["libnftables-dev"])]),
        .systemLibrary(name: "CPcap", path: "Sources/CPcap", pkgConfig: "libpcap",
                       providers: [.apt(["libpcap-dev"])]),
        // The structs and constants shared with the BPF programs (bpf/include), for Swift.
        .systemLibrary(name: "CSluiceDatapath", path: "bpf/include"),
        // Linux socket-layer macros and packed structs that Swift cannot import directly.
        .target(name: "CSluiceShims", path: "Sources/CSluiceShims"),

        .target(name: "Proxy", dependencies: [
            "CSluiceShims", "L7Parsers", "PolicyEngine",
            .product(name: "Yams", package: "Yams"),
        ], swiftSettings: hotPathSettings),
        .target(name: "L7Parsers", dependencies: ["CNghttp2"], swiftSettings: hotPathSettings),
        .target(name: "PolicyEngine", dependencies: [
            "CPCRE2",
            .product(name: "Yams", package: "Yams"),
        ], swiftSettings: hotPathSettings),
        .target(name: "Datapath", dependencies: ["CBPF", "CNftables", "CSluiceDatapath", "CSluiceShims", "PolicyEngine"]),
        // Where the proxy and the datapath meet policy files: loading and reloading them in
        // order, the file watcher, the datapath's events as flow records. Above both, so
        // Proxy keeps knowing nothing of BPF; the executable only parses commands and calls it.
        .target(name: "CaptureJudgement", dependencies: [
            "Replay", "Proxy", "PolicyEngine", "L7Parsers", .product(name: "Yams", package: "Yams"),
        ]),
        // Policies and endpoints from the Kubernetes API server: its own HTTP/1.1 client
        // (responses framed by L7Parsers' HTTP/1.1 parser, TLS through OpenSSL, JSON through
        // Foundation), the list-then-watch state machine, and the conversion of API objects
        // into the policy engine's types. Knows nothing of the proxy or the datapath.
        .target(name: "KubernetesSource", dependencies: [
            "PolicyEngine", "L7Parsers", "COpenSSL", .product(name: "Yams", package: "Yams"),
        ]),
        .target(name: "Enforcement", dependencies: [
            "Proxy", "PolicyEngine", "Datapath", "KubernetesSource",
            "CBPF",  // libbpf's helper probe (PolicyEnforcement.kernelHasSocketAssign)
        ]),
        // `sluice replay`'s foundation: capture files read through libpcap (gzip through
        // zlib), packets decoded to TCP segments and UDP datagrams, TCP streams reassembled.
        // Knows nothing of the proxy or of policy.
        .target(name: "CReplayGzip", path: "Sources/CReplayGzip", linkerSettings: [.linkedLibrary("z")]),
        .target(name: "Replay", dependencies: ["CPcap", "CReplayGzip"], swiftSettings: hotPathSettings),
        .executableTarget(name: "sluice", dependencies: [
            "Proxy", "PolicyEngine", "Datapath", "L7Parsers", "Enforcement", "CaptureJudgement",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // Fuzz targets (`make fuzz`; the README's Fuzzing section). Built normally, each is a program that
        // replays corpus files through its harness; built with -DSLUICE_LIBFUZZER and
        // -sanitize=fuzzer,address into .build-fuzz, it runs libFuzzer. The harnesses are a
        // library so the corpus replay also runs in `swift test` (FuzzCorpusTests).
        .target(name: "CFuzzing", path: "Fuzz/CFuzzing"),
        // Proxy's C shims hold libbpf's quiet-logging hook (for Datapath): linked here too.
        .target(name: "SluiceFuzzHarnesses", dependencies: ["L7Parsers", "PolicyEngine", "Proxy", "CFuzzing"],
                path: "Fuzz/Harnesses", linkerSettings: [.linkedLibrary("bpf")]),
        .executableTarget(name: "fuzz-http1", dependencies: ["SluiceFuzzHarnesses"], path: "Fuzz/Targets/HTTP1"),
        .executableTarget(name: "fuzz-policy-loader", dependencies: ["SluiceFuzzHarnesses"],
                          path: "Fuzz/Targets/PolicyLoader"),
        .executableTarget(name: "fuzz-dns", dependencies: ["SluiceFuzzHarnesses"], path: "Fuzz/Targets/DNS"),
        .executableTarget(name: "fuzz-http2", dependencies: ["SluiceFuzzHarnesses"], path: "Fuzz/Targets/HTTP2"),
        .executableTarget(name: "fuzz-kafka", dependencies: ["SluiceFuzzHarnesses"], path: "Fuzz/Targets/Kafka"),
        .testTarget(name: "FuzzCorpusTests", dependencies: ["SluiceFuzzHarnesses"], path: "Fuzz/Tests"),

        .testTarget(name: "ProxyTests", dependencies: ["Proxy", "COpenSSL", "L7Parsers", "PolicyEngine"]),
        // The HTTP/1 connection tests run the parser through the proxy's real driver, from memory.
        .testTarget(name: "L7ParsersTests", dependencies: ["L7Parsers", "CNghttp2", "Proxy", "PolicyEngine"]),
        .testTarget(name: "PolicyEngineTests", dependencies: ["PolicyEngine", "CPCRE2"]),
        .testTarget(name: "EnforcementTests", dependencies: ["Enforcement", "Proxy", "PolicyEngine", "Datapath", "CSluiceDatapath"]),
        .testTarget(name: "ReplayTests", dependencies: ["Replay"]),
        .testTarget(name: "KubernetesSourceTests", dependencies: ["KubernetesSource", "PolicyEngine"]),
        .testTarget(name: "CaptureJudgementTests", dependencies: ["CaptureJudgement"]),
        .testTarget(name: "DatapathTests", dependencies: ["Datapath", "CBPF", "CSluiceDatapath", "PolicyEngine"]),
    ]
)
