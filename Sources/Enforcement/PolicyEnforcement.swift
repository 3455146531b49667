import CBPF
import Datapath
import KubernetesSource
import PolicyEngine
import Proxy
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The policy side of `sluice run`: brings up the datapath the configuration names, writes
/// the policies' L3/L4 view into it, keeps it and the proxy's snapshot in step when the
/// files change, and turns the datapath's drop and redirect events into flow records.
///
/// A reload goes in one order: load and translate the files (nothing changes if they do
/// not load), write the datapath, publish the snapshot to the proxy, call
/// `onPolicyChange`, then report `"<cause>: reloaded"`. Any failure before publishing
/// leaves the previous policy in force, whole, and is reported.
public final class PolicyEnforcement: @unchecked Sendable {
    let configuration: ProxyConfiguration
    private let configFile: String
    private let flowLog: FlowLog
    private let report: @Sendable (String) -> Void
    /// The datapath contents in force (for naming identities and rules in event records).
    let state = Mutex<DatapathState>(DatapathState())
    private let stopping = Atomic<Bool>(false)
    /// Policy loads so far and the last one's result (for status and metrics).
    let loads = Mutex<LoadHistory>(LoadHistory())
    /// Set once `install` finished: the datapath (if any) is attached and enforcing.
    let installed = Atomic<Bool>(false)
    /// The mechanism in use, once `install` chose it.
    public private(set) var mode: DatapathConfiguration.Mode = .none
    /// Where reloads write the datapath's view; nil until `install` (or without a datapath).
    private var enforcer: DatapathEnforcer?
    private var watcher: PolicyFileWatcher?
    /// With `policy.source: kubernetes`: the API server's policies and endpoints (started
    /// by `prepare`), instead of files.
    public private(set) var kubernetes: KubernetesSource?
    /// The snapshot the proxy judges requests by (nil without a `policy` section).
    public let policy: PolicySnapshotHolder?
    /// toFQDNs: what allowed DNS answers taught, written into the datapath (nil without a
    /// datapath or a policy). DNS sessions hand it their answers.
    public let learner: FQDNLearner?

    /// `report` receives one line per event worth telling an operator (standard error by default).
    public convenience init(configuration: ProxyConfiguration, configFile: String, flowLog: FlowLog,
                            report: @escaping @Sendable (String) -> Void = { StandardError.line($0) }) {
        self.init(configuration: configuration, configFile: configFile, flowLog: flowLog, report: report, enforcer: nil)
    }

    /// With `enforcer`, reloads write the datapath's view there (tests bring their own).
    init(configuration: ProxyConfiguration, configFile: String, flowLog: FlowLog,
         report: @escaping @Sendable (String) -> Void, enforcer: DatapathEnforcer?) {
        self.configuration = configuration
        self.configFile = configFile
        self.flowLog = flowLog
        self.report = report
        self.enforcer = enforcer
        policy = configuration.policy == nil ? nil : PolicySnapshotHolder()
        learner = configuration.policy == nil || configuration.datapath.mode == .none ? nil
            : FQDNLearner(settings: configuration.fqdn, stateFile: configuration.fqdn.stateFile.map(Self.resolve(configFile: configFile)),
                          report: report)
    }

    static func resolve(configFile: String) -> (String) -> String {
        { path in
            if path.hasPrefix("/") { return path }
            let directory = configFile.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            return directory.isEmpty ? path : "\(directory)/\(path)"
        }
    }

    /// Paths in the configuration are relative to the configuration file's directory.
    func resolve(_ path: String) -> String {
        Self.resolve(configFile: configFile)(path)
    }

    private var setup: DatapathSetup {
        let datapath = configuration.datapath
        return DatapathSetup(namespace: datapath.namespace, interfaces: datapath.interfaces, pinRoot: datapath.pinRoot,
                             objectPath: datapath.object.map(resolve) ?? PolicyFiles.defaultBPFObject())
    }

    private var proxyPorts: PolicyTranslation.ProxyPorts {
        let tcp = configuration.listeners.first { $0.kind == .transparentTCP }?.address.port ?? 0
        let udp = configuration.listeners.first { $0.kind == .transparentUDP }?.address.port ?? 0
        return .init(tcp: tcp, udp: udp)
    }

    private var prepared: (snapshot: PolicySnapshot?, state: DatapathState)?

    /// Loads and translates the policies and publishes the snapshot; throws on bad policy
    /// input (nothing installed yet).
    public func prepare() throws {
        if let settings = configuration.policy?.kubernetes {
            let source = try Self.kubernetesSource(settings, configFile: configFile, report: report)
            kubernetes = source
            source.start()
            report("kubernetes: watching \(KubernetesResource.allCases.map(\.rawValue).joined(separator: ", ")) as node \(source.context.nodeName)")
            guard source.waitUntilSynchronized(timeout: settings.syncTimeout) else {
                source.stop()
                throw PolicyFiles.InputError(description: "kubernetes: not every resource could be listed within "
                    + "\(settings.syncTimeout / 1_000_000_000) s (missing: \(source.unsynchronized.map(\.rawValue).joined(separator: ", "))); see the lines above")
            }
            // The load below reads everything listed so far: no reload needed for it.
            source.discardPendingChanges()
        }
        let (snapshot, state) = try load()
        if let snapshot { policy?.replace(with: snapshot) }
        prepared = (snapshot, state)
        loads.withLock { $0.record(cause: "start", error: nil) }
    }

    /// Chooses the mechanism and installs the prepared policies; `listeners` are the
    /// proxy's transparent TCP listeners. Throws with a message.
    ///
    /// `handedOver` is the FQDN records a running sluice handed over (`encodedRecords`), in
    /// place of the state file: then the predecessor still serves (and learns) while this
    /// one starts, so learned entries already in the datapath are left as they are (the
    /// ones this sluice does not know expire there by themselves).
    public func install(listeners: [(port: UInt16, descriptor: Int32)], handedOver: [UInt8]? = nil) throws {
        mode = configuration.datapath.mode
        if mode == .auto {
            mode = Self.kernelHasSocketAssign() ? .bpf : .nftables
            report("datapath: \(mode.rawValue) (bpf_sk_assign \(mode == .bpf ? "available" : "not available in this kernel"))")
        } else if mode != .none {
            report("datapath: \(mode.rawValue)")
        }
        guard mode != .none else { installed.store(true, ordering: .releasing); return }
        guard let (snapshot, desired) = prepared else { installed.store(true, ordering: .releasing); return }
        let writer: LearnedAddressWriter?
        switch mode {
        case .bpf:
            try setup.up(fresh: false)
            let maps = try DatapathMaps(pinRoot: configuration.datapath.pinRoot)
            let synchronized = try maps.synchronize(to: desired)
            for listener in listeners { try maps.registerListener(port: listener.port, descriptor: listener.descriptor) }
            report("datapath: maps synchronised (\(synchronized))")
            enforcer = BPFMapsEnforcer(pinRoot: configuration.datapath.pinRoot)
            writer = try BPFLearnedAddresses(pinRoot: configuration.datapath.pinRoot)
        case .nftables:
            let nftables = NftablesEnforcer(interfaces: configuration.datapath.interfaces, namespace: configuration.datapath.namespace,
                                            proxyPorts: proxyPorts)
            let sets = try NftablesLearnedAddresses(namespace: configuration.datapath.namespace, clock: { MonotonicClock.now() })
            // The table is replaced whole: with the learned addresses already in it, so that
            // none is missing for a moment (a predecessor may be serving them right now).
            var learned: [LearnedEntry] = []
            if let learner, let snapshot {
                learner.attach(writer: DeferredLearnedAddresses(rounding: sets))
                try learner.policyChanged(FQDNPolicy(snapshot: snapshot, state: desired, proxyPorts: proxyPorts)) { _ in }
                restoreLearned(learner, handedOver: handedOver)
                learned = learner.entries
            }
            _ = try nftables.apply(desired, learned: learned)
            report("datapath: nftables table '\(NftablesRuleset.tableName)' installed (\(desired.policy.count) policy entries"
                   + (learned.isEmpty ? ")" : ", \(learned.count) learned address(es))"))
            enforcer = nftables
            learner?.attach(writer: sets)
            state.withLock { $0 = desired }
            installed.store(true, ordering: .releasing)
            return
        case .none, .auto:
            writer = nil
        }
        state.withLock { $0 = desired }
        // Learned addresses from before a restart go back in before the proxy serves.
        if let learner, let writer, let snapshot {
            learner.attach(writer: writer)
            try learner.policyChanged(FQDNPolicy(snapshot: snapshot, state: desired, proxyPorts: proxyPorts)) { _ in }
            restoreLearned(learner, handedOver: handedOver)
            if handedOver == nil { (writer as? BPFLearnedAddresses)?.removeAll(except: learner.entries) }
        }
        installed.store(true, ordering: .releasing)
    }

    /// Learned addresses from before this process: the predecessor's records when it
    /// handed over, else the state file.
    private func restoreLearned(_ learner: FQDNLearner, handedOver: [UInt8]?) {
        if let handedOver {
            do {
                let restored = try learner.restore(encoded: handedOver, source: "the hand-over")
                report("fqdn: \(restored) learned address(es) taken over from the running sluice")
            } catch {
                report("fqdn: \(error); reading the state file instead")
                let restored = learner.restore()
                if restored > 0 { report("fqdn: \(restored) learned address(es) restored from \(learner.stateFile ?? "")") }
            }
            return
        }
        let restored = learner.restore()
        if restored > 0 { report("fqdn: \(restored) learned address(es) restored from \(learner.stateFile ?? "")") }
    }

    /// The predecessor finished: what it learned while draining joins what this one knows.
    public func takeLearned(_ bytes: [UInt8]) {
        guard let learner else { return }
        do {
            let added = try learner.restore(encoded: bytes, source: "the predecessor's last records")
            if added > 0 { report("fqdn: \(added) address(es) the predecessor learned while draining taken over") }
        } catch {
            report("fqdn: \(error)")
        }
    }

    /// Loads the policy files into a new snapshot for the proxy and, when a datapath is in
    /// use, derives its map contents. Publishes nothing: the caller does once all is well.
    private func load() throws -> (PolicySnapshot?, DatapathState) {
        guard let source = configuration.policy, policy != nil else { return (nil, DatapathState()) }
        let snapshot: PolicySnapshot
        if let kubernetes {
            // Rejected objects were reported by `current()`; the valid ones load.
            let (policies, endpoints, _) = kubernetes.current()
            snapshot = PolicySnapshot(policies: policies, endpoints: endpoints)
        } else {
            snapshot = try PolicyFiles.loadSnapshot(policyPaths: source.paths.map(resolve), endpoints: resolve(source.endpoints),
                                                    node: source.node)
            if source.node == nil, !snapshot.endpoints.nodeNames.isEmpty {
                throw PolicyFiles.InputError(description: "\(resolve(source.endpoints)): endpoints are placed on nodes ("
                    + snapshot.endpoints.nodeNames.joined(separator: ", ")
                    + ") but the configuration does not say which node this sluice runs on: add policy.node")
            }
        }
        var state = DatapathState()
        if configuration.datapath.mode != .none {
            let nodeAddresses = source.nodeAddresses.compactMap(IPv4Prefix.init)
            let nodeAddresses6 = source.nodeAddresses.compactMap(IPv6Prefix.init)
            state = try PolicyTranslation(snapshot: snapshot, nodeAddresses: nodeAddresses, nodeAddresses6: nodeAddresses6,
                                          proxyPorts: proxyPorts).translate()
        }
        return (snapshot, state)
    }

    /// The files a change of which reloads: every policy file (a directory's as listed now)
    /// and the endpoints file.
    public var watchedFiles: [String] {
        guard let source = configuration.policy, source.kubernetes == nil else { return [] }
        return source.paths.map(resolve).flatMap(PolicyFiles.files(at:)) + [resolve(source.endpoints)]
    }

    /// Starts the threads that follow file changes (`policy.watch`) and datapath events.
    public func startBackgroundWork() {
        guard let source = configuration.policy else { return }
        // Each change from the API server takes the same path as a changed file.
        kubernetes?.onChange = { [self] cause in reload(because: cause) }
        if let interval = source.watchInterval {
            let watcher = PolicyFileWatcher(files: { [self] in watchedFiles })
            self.watcher = watcher
            watcher.start(every: interval) { [self] in reload(because: "policy changed") }
        }
        if mode == .bpf {
            startThread { [self] in forwardEvents() }
        }
        if learner != nil {
            startThread { [self] in maintainLearned() }
        }
    }

    /// Stops the background work and saves the learned addresses, unless `saving` is false
    /// (after a hand-over: the successor owns the state file now).
    public func stop(saving: Bool = true) {
        stopping.store(true, ordering: .relaxed)
        watcher?.stop()
        kubernetes?.stop()
        // The datapath outlives sluice: it holds every address's latest lifetime.
        learner?.writeDeferredExtensions()
        if saving { saveLearned() }
    }

    /// Every 100 ms forgets learned addresses past their lifetime, a few thousand records
    /// at a time (the lock is held briefly; the datapath ignores expired entries anyway);
    /// once a second saves what changed.
    private func maintainLearned() {
        var ticks = 0
        while !stopping.load(ordering: .relaxed) {
            learner?.expire(slots: FQDNLearner.sweepSlots)
            ticks += 1
            if ticks % 10 == 0 { saveLearned() }
            usleep(100_000)
        }
    }

    private let saveFailed = Atomic<Bool>(false)

    private func saveLearned() {
        do {
            try learner?.saveIfChanged()
            saveFailed.store(false, ordering: .relaxed)
        } catch {
            // Said once per failure spell, not every second.
            if !saveFailed.exchange(true, ordering: .relaxed) { report("fqdn: cannot save learned addresses: \(error)") }
        }
    }

    /// Called after each policy change was published (the proxy resets the L4 relays the
    /// new policy puts under L7 rules). Set before `startBackgroundWork`.
    public var onPolicyChange: (@Sendable () -> Void)?
    /// Serialises reloads: the file watcher and SIGHUP may ask at once.
    private let reloading = Mutex<Void>(())

    /// Loads the policy files again and, when they load, re-translates them and writes only
    /// the difference into the datapath, then publishes the new snapshot to the proxy (the
    /// next request on every connection is judged by it) and says so. A change that does not
    /// load, or that the datapath cannot take, is reported and the old policy stays in force,
    /// whole. `cause` starts the line reported.
    public func reload(because cause: String) {
        guard configuration.policy != nil else {
            report("\(cause): no policy section in the configuration; nothing to reload")
            return
        }
        reloading.withLock { _ in
            do {
                let (snapshot, desired) = try load()
                var done = ""
                if let enforcer, let learner, let snapshot {
                    // The learned addresses are judged again under the new policy and written
                    // with it (nftables rewrites its sets with the table).
                    try learner.policyChanged(FQDNPolicy(snapshot: snapshot, state: desired, proxyPorts: proxyPorts)) { learned in
                        done = try enforcer.apply(desired, learned: learned)
                    }
                } else {
                    done = try enforcer?.apply(desired, learned: []) ?? ""
                }
                state.withLock { $0 = desired }
                if let snapshot {
                    policy?.replace(with: snapshot)
                    onPolicyChange?()
                }
                loads.withLock { $0.record(cause: cause, error: nil) }
                report("\(cause): reloaded" + (done.isEmpty ? "" : "; \(done)"))
            } catch {
                loads.withLock { $0.record(cause: cause, error: "\(error)") }
                report("\(cause) but was not applied (the previous policy stays in force): \(error)")
            }
        }
    }

    /// Writes `events` to the flow log, naming identities and rules from the datapath state
    /// in force.
    func forward(_ events: [DatapathEvent]) {
        guard !events.isEmpty else { return }
        let (names, rules) = state.withLock { ($0.identityNames, $0.ruleNames) }
        for event in events { flowLog.write(FlowRecords.datapathEvent(event, names: names, rules: rules)) }
    }

    private func forwardEvents() {
        guard let reader = try? DatapathEventReader(pinnedAt: "\(configuration.datapath.pinRoot)/sluice_events") else {
            report("datapath events: cannot open the ring buffer; events will not be reported")
            return
        }
        while !stopping.load(ordering: .relaxed) {
            forward(reader.poll(timeoutMilliseconds: 200))
        }
    }

    /// Whether tc programs may call `bpf_sk_assign` on this kernel.
    public static func kernelHasSocketAssign() -> Bool {
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_sk_assign, nil) == 1
    }
}

/// Where a reload writes the datapath's view of the policy.
protocol DatapathEnforcer: Sendable {
    /// Makes the datapath enforce `state` and exactly the `learned` addresses; returns what
    /// was done, for the reload's line.
    func apply(_ state: DatapathState, learned: [LearnedEntry]) throws -> String
}

/// The BPF programs' pinned maps: only the entries that differ are written.
struct BPFMapsEnforcer: DatapathEnforcer {
    let pinRoot: String
    func apply(_ state: DatapathState, learned: [LearnedEntry]) throws -> String {
        let synchronized = try DatapathMaps(pinRoot: pinRoot).synchronize(to: state)
        let addresses = try BPFLearnedAddresses(pinRoot: pinRoot)
        try addresses.write(learned, replacing: [])
        addresses.removeAll(except: learned)
        return "maps synchronised (\(synchronized))" + (learned.isEmpty ? "" : ", \(learned.count) learned address(es) re-judged")
    }
}

/// The nftables fallback: the table is written whole (`nft -f`).
struct NftablesEnforcer: DatapathEnforcer {
    let interfaces: [String]
    let namespace: String?
    let proxyPorts: PolicyTranslation.ProxyPorts
    func apply(_ state: DatapathState, learned: [LearnedEntry]) throws -> String {
        try NftablesRuleset(state: state, interfaces: interfaces, proxyPorts: proxyPorts, learned: learned,
                            now: MonotonicClock.now()).apply(namespace: namespace)
        return "nftables table replaced"
    }
}

/// Learned addresses kept in the learner only, not written anywhere yet: the nftables table
/// written next carries them. Rounds lifetimes as the datapath that will hold them does.
final class DeferredLearnedAddresses: LearnedAddressWriter, @unchecked Sendable {
    let rounding: LearnedAddressWriter
    init(rounding: LearnedAddressWriter) { self.rounding = rounding }
    func write(_ entries: [LearnedEntry], replacing: [LearnedEntry]) throws {}
    func remove(_ entries: [LearnedEntry]) {}
    func roundedExpiry(_ expires: UInt64, lifetime: UInt64) -> UInt64 { rounding.roundedExpiry(expires, lifetime: lifetime) }
}
