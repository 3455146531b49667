import CBPF
import Datapath
import PolicyEngine
import Proxy
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The policy side of `sluice run`: brings up the datapath the configuration names, writes
/// the policies' L3/L4 view into it, keeps it in step when the files change, and turns the
/// datapath's drop and redirect events into flow records.
final class RunEnforcement: @unchecked Sendable {
    private let configuration: ProxyConfiguration
    private let configFile: String
    private let flowLog: FlowLog
    private let state = Mutex<DatapathState>(DatapathState())
    private let stopping = Atomic<Bool>(false)
    private(set) var mode: DatapathConfiguration.Mode = .none
    /// The snapshot the proxy judges requests by (nil without a `policy` section).
    let policy: PolicySnapshotHolder?

    init(configuration: ProxyConfiguration, configFile: String, flowLog: FlowLog) {
        self.configuration = configuration
        self.configFile = configFile
        self.flowLog = flowLog
        policy = configuration.policy == nil ? nil : PolicySnapshotHolder()
    }

    /// Paths in the configuration are relative to the configuration file's directory.
    func resolve(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        let directory = configFile.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return directory.isEmpty ? path : "\(directory)/\(path)"
    }

    private var setup: DatapathSetup {
        let datapath = configuration.datapath
        return DatapathSetup(namespace: datapath.namespace, interfaces: datapath.interfaces, pinRoot: datapath.pinRoot,
                             objectPath: datapath.object.map(resolve) ?? DatapathFiles.defaultObject())
    }

    private var proxyPorts: PolicyTranslation.ProxyPorts {
        let tcp = configuration.listeners.first { $0.kind == .transparentTCP }?.address.port ?? 0
        let udp = configuration.listeners.first { $0.kind == .transparentUDP }?.address.port ?? 0
        return .init(tcp: tcp, udp: udp)
    }

    private var prepared: DatapathState?

    /// Loads and translates the policies; throws on bad policy input (nothing installed yet).
    func prepare() throws {
        let (snapshot, state) = try load()
        if let snapshot { policy?.replace(with: snapshot) }
        prepared = state
    }

    /// Chooses the mechanism and installs the prepared policies; `listeners` are the
    /// proxy's transparent TCP listeners. Throws with a message.
    func install(listeners: [(port: UInt16, descriptor: Int32)]) throws {
        mode = configuration.datapath.mode
        if mode == .auto {
            mode = Self.kernelHasSocketAssign() ? .bpf : .nftables
            printError("datapath: \(mode.rawValue) (bpf_sk_assign \(mode == .bpf ? "available" : "not available in this kernel"))")
        } else if mode != .none {
            printError("datapath: \(mode.rawValue)")
        }
        guard mode != .none else { return }
        guard let desired = prepared else { return }
        switch mode {
        case .bpf:
            try setup.up(fresh: false)
            let maps = try DatapathMaps(pinRoot: configuration.datapath.pinRoot)
            let report = try maps.synchronize(to: desired)
            for listener in listeners { try maps.registerListener(port: listener.port, descriptor: listener.descriptor) }
            printError("datapath: maps synchronised (\(report))")
        case .nftables:
            let ruleset = NftablesRuleset(state: desired, interfaces: configuration.datapath.interfaces, proxyPorts: proxyPorts)
            try ruleset.apply(namespace: configuration.datapath.namespace)
            printError("datapath: nftables table '\(NftablesRuleset.tableName)' installed (\(desired.policy.count) policy entries)")
        case .none, .auto:
            break
        }
        state.withLock { $0 = desired }
    }

    /// Loads the policy files into a new snapshot for the proxy and, when a datapath is in
    /// use, derives its map contents. Publishes nothing: the caller does once all is well.
    private func load() throws -> (PolicySnapshot?, DatapathState) {
        guard let source = configuration.policy, policy != nil else { return (nil, DatapathState()) }
        let snapshot = try DatapathFiles.loadSnapshot(policyPaths: source.paths.map(resolve), endpoints: resolve(source.endpoints))
        var state = DatapathState()
        if configuration.datapath.mode != .none {
            let nodeAddresses = source.nodeAddresses.compactMap(IPv4Prefix.init)
            state = try PolicyTranslation(snapshot: snapshot, nodeAddresses: nodeAddresses, proxyPorts: proxyPorts).translate()
        }
        return (snapshot, state)
    }

    /// Starts the threads that follow file changes and datapath events.
    func startBackgroundWork() {
        guard configuration.policy != nil else { return }
        if let interval = configuration.policy?.watchInterval {
            startThread { [self] in watch(every: interval) }
        }
        if mode == .bpf {
            startThread { [self] in forwardEvents() }
        }
    }

    func stop() { stopping.store(true, ordering: .relaxed) }

    /// Called after each policy change was published (the proxy resets the L4 relays the
    /// new policy puts under L7 rules).
    var onPolicyChange: (@Sendable () -> Void)?
    /// Serialises reloads: the file watcher and SIGHUP may ask at once.
    private let reloading = Mutex<Void>(())

    /// Polls the policy and endpoints files; on a change, reloads (see `reload`).
    private func watch(every interval: UInt64) {
        guard let policy = configuration.policy else { return }
        let files = { [self] in (policy.paths.map(resolve).flatMap(PolicyTraceCommand.policyFiles(at:)) + [resolve(policy.endpoints)]) }
        var last = Self.fingerprint(files())
        while !stopping.load(ordering: .relaxed) {
            usleep(useconds_t(min(interval / 1000, UInt64(UInt32.max))))
            let current = Self.fingerprint(files())
            guard current != last else { continue }
            last = current
            reload(because: "policy changed")
        }
    }

    /// Loads the policy files again and, when they load, re-translates them and writes only
    /// the difference into the datapath, then publishes the new snapshot to the proxy (the
    /// next request on every connection is judged by it) and says so. A change that does not
    /// load, or that the datapath cannot take, is reported and the old policy stays in force,
    /// whole. `cause` starts the line printed.
    func reload(because cause: String) {
        guard configuration.policy != nil else {
            printError("\(cause): no policy section in the configuration; nothing to reload")
            return
        }
        reloading.withLock { _ in
            do {
                let (snapshot, desired) = try load()
                let done: String
                switch mode {
                case .bpf:
                    let report = try DatapathMaps(pinRoot: configuration.datapath.pinRoot).synchronize(to: desired)
                    done = "maps synchronised (\(report))"
                case .nftables:
                    try NftablesRuleset(state: desired, interfaces: configuration.datapath.interfaces, proxyPorts: proxyPorts)
                        .apply(namespace: configuration.datapath.namespace)
                    done = "nftables table replaced"
                default:
                    done = ""
                }
                state.withLock { $0 = desired }
                if let snapshot {
                    policy?.replace(with: snapshot)
                    onPolicyChange?()
                }
                printError("\(cause): reloaded" + (done.isEmpty ? "" : "; \(done)"))
            } catch {
                printError("\(cause) but was not applied (the previous policy stays in force): \(error)")
            }
        }
    }

    private func forwardEvents() {
        guard let reader = try? DatapathEventReader(pinnedAt: "\(configuration.datapath.pinRoot)/sluice_events") else {
            printError("datapath events: cannot open the ring buffer; events will not be reported")
            return
        }
        while !stopping.load(ordering: .relaxed) {
            let events = reader.poll(timeoutMilliseconds: 200)
            guard !events.isEmpty else { continue }
            let (names, rules) = state.withLock { ($0.identityNames, $0.ruleNames) }
            for event in events { flowLog.write(DatapathFiles.record(event, names: names, rules: rules)) }
        }
    }

    private static func fingerprint(_ files: [String]) -> [String] {
        files.map { file in
            var info = stat()
            guard stat(file, &info) == 0 else { return "\(file):missing" }
            return "\(file):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec):\(info.st_size)"
        }
    }

    /// Whether tc programs may call `bpf_sk_assign` on this kernel.
    static func kernelHasSocketAssign() -> Bool {
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_sk_assign, nil) == 1
    }
}

/// Starts a detached thread.
func startThread(_ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    if pthread_create(&thread, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, box) == 0 {
        pthread_detach(thread)
    } else {
        Unmanaged<Box>.fromOpaque(box).release()
    }
}
