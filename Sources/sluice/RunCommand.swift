import ArgumentParser
import Enforcement
import Proxy
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `sluice run --config FILE`: start the proxy and serve until SIGTERM or SIGINT.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the proxy with the listeners of a configuration file.",
        discussion: """
        The configuration file (YAML) declares listeners, timeouts, limits and where flow \
        records go. See configs/explicit.yaml for an annotated example. Every key is checked: \
        an unknown key or a bad value stops sluice before it starts, with the file, line, \
        column and key named, and exit code 2.

        On SIGTERM or SIGINT sluice stops accepting, closes idle keep-alive connections, lets \
        requests in flight finish until timeouts.drain has passed, then exits 0. A second \
        signal stops at once. SIGHUP reloads the policy and endpoints files (as a change seen \
        by policy.watch does): a policy that loads applies to the next request on every \
        connection; one that does not is reported and the previous policy stays.

        Restarts and upgrades lose nothing: started while another sluice serves the same \
        hand-over socket (control.handover, by default beside control.socket: \
        /run/sluice/sluice.handover.sock), sluice takes over its listening sockets (TCP and \
        UDP, passed over that socket), its metrics and control sockets and its learned FQDN \
        addresses, keeps the datapath's pinned maps and programs in place, and serves; the \
        previous one then stops accepting, finishes its connections and DNS queries within \
        timeouts.drain, and exits 0. If the running sluice refuses (another hand-over \
        protocol version), this one exits 1 and says why.
        """)

    @Option(name: .long, help: ArgumentHelp("The YAML configuration file.", valueName: "file"))
    var config: String

    @Option(name: .long, help: ArgumentHelp("Worker threads, each with its own event loop (default: the configuration's 'workers', else the number of cores).", valueName: "n"))
    var workers: Int?

    @Option(name: .long, help: ArgumentHelp("Override the configuration's datapath.mode: bpf (tc + bpf_sk_assign), nftables (TPROXY fallback), auto (bpf if the kernel has bpf_sk_assign), none (explicit mode only).", valueName: "mode"))
    var datapath: String?

    @Flag(name: .long, help: "Check the configuration and exit without starting.")
    var check = false

    @Flag(name: .long, help: ArgumentHelp("Take policies and endpoints from the Kubernetes API server (policy.source: kubernetes; assumed, in-cluster, when the configuration has no policy section). With --check: connect, list every resource, compile, report, and exit (0 = all policies valid)."))
    var kubernetes = false

    func validate() throws {
        if let workers, !(1...256).contains(workers) {
            throw ValidationError("--workers must be from 1 to 256, got \(workers)")
        }
        if let datapath, DatapathConfiguration.Mode(rawValue: datapath) == nil {
            throw ValidationError("--datapath must be bpf, nftables, auto or none, got '\(datapath)'")
        }
    }

    func run() throws {
        let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        var configuration: ProxyConfiguration
        do {
            configuration = try ConfigurationLoader(file: config, defaultWorkers: cores).load()
        } catch {
            printError("\(error)")
            throw ExitCode(2)
        }
        if let workers { configuration.workers = workers }
        if let datapath, let mode = DatapathConfiguration.Mode(rawValue: datapath) {
            configuration.datapath.mode = mode
            if mode != .none && (configuration.datapath.interfaces.isEmpty || configuration.policy == nil) {
                printError("\(config): --datapath \(datapath) needs 'datapath.interfaces' and a 'policy' section in the configuration")
                throw ExitCode(2)
            }
        }
        if kubernetes {
            if configuration.policy == nil { configuration.policy = PolicySourceConfiguration(paths: [], endpoints: "", watchInterval: nil) }
            if configuration.policy?.kubernetes == nil {
                guard configuration.policy!.paths.isEmpty else {
                    printError("\(config): --kubernetes, but the policy section names files; set policy.source: kubernetes")
                    throw ExitCode(2)
                }
                configuration.policy?.kubernetes = KubernetesSourceConfiguration()
            }
        }
        if check {
            if kubernetes {
                do {
                    print(try PolicyEnforcement.checkKubernetes(configuration: configuration, configFile: config))
                } catch {
                    printError("\(config): \(error)")
                    throw ExitCode(1)
                }
            }
            print("\(config): ok (\(configuration.listeners.count) listeners, \(configuration.workers) workers)")
            return
        }

        // A sluice serving this configuration's hand-over socket gives this one its sockets
        // and state; it goes on serving until this one says it serves (`confirm` below).
        var offer: HandoverOffer?
        if let path = configuration.control.handoverPath {
            do {
                // A sluice that is stopping resets the connection unanswered: ask again (for
                // up to 2 s) until it is gone or its successor answers.
                let listeners = ProxyServer.listenerKeys(configuration.listeners)
                var attempt = try HandoverOffer.takeOver(path: path, version: Sluice.version, listeners: listeners)
                for _ in 0..<20 {
                    guard case .stopping = attempt else { break }
                    usleep(100_000)
                    attempt = try HandoverOffer.takeOver(path: path, version: Sluice.version, listeners: listeners)
                }
                switch attempt {
                case .stopping:
                    throw HandoverFailure(path: path, problem: "the sluice serving it closed every connection unanswered "
                                          + "for 2 s (stop it, or give this one its own control.socket)")
                case .nothingRunning:
                    break
                case .stale:
                    printError("hand-over: \(path) is stale (no sluice answers there); starting afresh")
                case .otherInstance(_, let why):
                    printError("hand-over: the sluice serving \(path) \(why); not taking over from it"
                               + (why.contains("namespace") ? " (give each its own control.socket)" : ""))
                case .offer(let received):
                    // The same sluice has at least one listener in common (an upgrade may
                    // add and remove some); one serving none of these is another instance.
                    let configured = Set(ProxyServer.listenerKeys(configuration.listeners))
                    if configured.isDisjoint(with: received.listenerKeys) {
                        received.abandon()
                        printError("hand-over: the sluice serving \(path) (pid \(received.predecessorPID)) has none of "
                                   + "these listeners; not taking over from it")
                    } else if !received.isInThisNetworkNamespace {
                        received.abandon()
                        printError("hand-over: the sluice serving \(path) (pid \(received.predecessorPID)) runs in another "
                                   + "network namespace; not taking over from it (give each its own control.socket)")
                    } else {
                        offer = received
                        printError("hand-over: taking over from pid \(received.predecessorPID) (\(received.predecessorVersion))")
                    }
                }
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
        }

        // The operations endpoints are bound first: a bad metrics address stops sluice before
        // it serves anything. Without either, the tap is left out.
        // Records cost most of what observing costs: with metrics configured, or a flow-log
        // sink making them anyway, they feed the tap from the start; with the control socket
        // alone, from the first 'sluice observe' on (an unwatched sluice makes none).
        let tap = FlowTap(capacity: configuration.control.flowRing,
                          active: configuration.metrics.listen != nil || configuration.flowLog.sink != .none)
        let operations = OperationsServer(tap: tap, nodeName: Self.nodeName(configuration), version: Sluice.version)
        var operationsBound = false
        if let address = configuration.metrics.listen {
            do {
                if let (_, descriptor) = offer?.take(.metrics, key: "tcp \(address)").first {
                    operations.adoptMetrics(descriptor: descriptor, address: address)
                } else {
                    try operations.listenMetrics(on: address)
                }
                operationsBound = true
            } catch {
                printError("\(config): metrics.listen \(address): \(error)")
                throw ExitCode(1)
            }
        }
        if let path = configuration.control.socket {
            do {
                if let (_, descriptor) = offer?.take(.control, key: "unix \(path)").first {
                    operations.adoptControl(descriptor: descriptor, path: path)
                } else {
                    try operations.listenControl(at: path)
                }
                operationsBound = true
            } catch {
                // The default path is a convenience: without it sluice still serves (and says so).
                guard path == ControlSettings.defaultSocket else {
                    printError("\(config): control.socket: \(error)")
                    throw ExitCode(1)
                }
                printError("control socket: \(error); 'sluice observe' and 'sluice status' are unavailable "
                           + "(set control.socket to a path this process may create)")
            }
        }
        // Closes the endpoints on every way out, and removes the control socket when this
        // sluice owns it: not one taken over before this one serves (the predecessor serves
        // it until then), nor after handing it over.
        var ownsSocketFiles = offer == nil
        var handedOver = false
        defer { operations.stop(unlinking: ownsSocketFiles && !handedOver) }

        let flowLog: FlowLog
        do {
            flowLog = try FlowLog.open(configuration.flowLog, tap: operationsBound ? tap : nil)
        } catch {
            printError("\(config): flowLog: cannot open the sink: \(error)")
            throw ExitCode(2)
        }

        // Each relayed connection holds two descriptors: take what the hard limit allows, and
        // derive the connection limit from it unless the configuration sets one.
        let descriptors = DescriptorLimit.raiseToMaximum()
        let fitting = Limits.connectionsPerWorker(descriptorLimit: descriptors, workers: configuration.workers)
        if let configured = configuration.limits.maxConnectionsPerWorker, configured > fitting {
            printError("limits.maxConnectionsPerWorker is \(configured) but the open-files limit (\(descriptors)) fits "
                       + "\(fitting) per worker; past that, clients get 503 (raise 'ulimit -n')")
        }
        configuration.limits.maxConnectionsPerWorker = configuration.limits.maxConnectionsPerWorker ?? fitting

        let enforcement = PolicyEnforcement(configuration: configuration, configFile: config, flowLog: flowLog)
        do {
            try enforcement.prepare()
        } catch {
            printError("\(config): policy: \(error)")
            throw ExitCode(2)
        }

        ShutdownSignals.block()
        let inherited = Dictionary(grouping: offer?.take(.listener) ?? [], by: { $0.0.key }).mapValues { $0.map(\.1) }
        let server = ProxyServer(configuration: configuration, flowLog: flowLog, policy: enforcement.policy,
                                 sessions: .standard(configuration: configuration, learner: enforcement.learner),
                                 inherited: inherited)
        for key in inherited.keys.sorted() where !server.unusedInheritedKeys.contains(key) {
            printError("hand-over: listener \(key): \(inherited[key]!.count) socket(s) taken over")
        }
        for key in server.unusedInheritedKeys {
            printError("hand-over: listener \(key) is not in this configuration: closed")
        }
        do {
            try server.start()
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        let startedConfiguration = configuration
        operations.sources.metrics = { [server, enforcement, flowLog] in
            Self.metricFamilies(gauges: server.gauges(), enforcement: enforcement, flowLog: flowLog)
        }
        let lineage = HandoverLineage(predecessor: offer?.predecessorPID)
        operations.sources.status = { [server, enforcement, flowLog, lineage] in
            var status = Self.status(configuration: startedConfiguration, gauges: server.gauges(), enforcement: enforcement,
                                     flowLog: flowLog)
            status["handover"] = lineage.status(socket: startedConfiguration.control.handoverPath)
            return status
        }
        operations.sources.notReady = { [enforcement] in enforcement.notReady }
        if operationsBound {
            do {
                try operations.start()
            } catch {
                printError("operations: \(error)")
                server.stopNow()
                server.join()
                throw ExitCode(1)
            }
            if let address = operations.metricsAddress { printError("metrics: http://\(address)/metrics (and /healthz, /readyz)") }
            if let path = operations.controlPath { printError("control: \(path) (sluice observe, sluice status)") }
        }

        // Listeners are bound before the datapath diverts anything to them.
        do {
            try enforcement.install(listeners: server.transparentStreamListeners, handedOver: offer?.state["fqdn"])
        } catch {
            printError("datapath: \(error)")
            server.stopNow()
            server.join()
            throw ExitCode(1)
        }
        enforcement.onPolicyChange = { [server] in server.policyChanged() }
        enforcement.startBackgroundWork()
        for listener in configuration.listeners {
            printError("listening: \(describe(listener))")
        }
        let handover = startHandover(configuration: configuration, offer: offer, server: server, operations: operations,
                                     enforcement: enforcement)
        if let offer {
            // What the predecessor offered and nothing here serves (its own hand-over socket
            // when this one has none) is closed; then it stops accepting and drains.
            offer.closeUnused()
            ownsSocketFiles = true
            do {
                try offer.confirm()
                printError("hand-over: pid \(offer.predecessorPID) stops accepting and drains")
            } catch {
                printError("hand-over: cannot tell pid \(offer.predecessorPID) that this one serves (\(error)); it may still serve too")
            }
            offer.awaitFinish { [enforcement, lineage] summary, state in
                if let bytes = state["fqdn"] { enforcement.takeLearned(bytes) }
                lineage.predecessorEnded(served: summary?.count)
                if let summary {
                    printError("hand-over: pid \(summary.pid) finished (\(summary.count) connection(s) served in all)")
                } else {
                    printError("hand-over: pid \(offer.predecessorPID) ended without saying it finished")
                }
            }
        }
        printError("ready: \(configuration.workers) worker(s), pid \(getpid())")

        var first = ShutdownSignals.wait()
        var successor: Int32?
        while true {
            if first == SIGHUP {
                // SIGHUP reloads the policy (nginx and HAProxy users expect this); it never stops sluice.
                enforcement.reload(because: "SIGHUP")
            } else if first == ShutdownSignals.handedOver {
                // Sent by the hand-over thread once a successor serves (anything else sending it is ignored).
                if let pid = handover?.successorPID { successor = pid; break }
            } else {
                break
            }
            first = ShutdownSignals.wait()
        }
        // No successor from here on; waits for an offer being sent.
        handover?.beginStopping()
        if let successor {
            handedOver = true
            // The successor serves the control and metrics sockets and owns the state file now.
            enforcement.stop(saving: false)
            operations.stop(unlinking: false)
            handover?.stop(unlinking: false)
            printError("hand-over: pid \(successor) serves now; draining (up to \(configuration.timeouts.drain / 1_000_000) ms)")
        } else {
            enforcement.stop()
            // A successor that holds the sockets already serves the socket files after this one.
            if handover?.offerPending == true { ownsSocketFiles = false }
            handover?.stop(unlinking: true)
            printError("\(first == SIGINT ? "SIGINT" : "SIGTERM"): draining (up to \(configuration.timeouts.drain / 1_000_000) ms)")
        }
        server.drain()
        // A second signal while draining stops at once.
        let watcher = SecondSignalWatcher(server: server)
        watcher.start()
        let reports = server.join()
        let accepted = reports.reduce(0) { $0 + $1.counters.accepted }
        for report in reports { if let error = report.error { printError(error) } }
        var notes: [String] = []
        let denied = reports.reduce(0) { $0 + $1.counters.deniedUnjudgeable }
        let reset = reports.reduce(0) { $0 + $1.counters.resetByPolicyChange }
        let exhausted = reports.reduce(0) { $0 + $1.counters.descriptorsExhausted }
        let cut = reports.reduce(0) { $0 + $1.counters.cutAtDrainDeadline }
        if denied > 0 { notes.append("\(denied) refused (rules sluice cannot judge yet)") }
        if reset > 0 { notes.append("\(reset) L4 relay(s) reset by policy changes") }
        if exhausted > 0 { notes.append("\(exhausted) time(s) out of file descriptors") }
        if cut > 0 { notes.append("\(cut) connection(s) cut at the drain deadline") }
        printError("stopped: \(accepted) connection(s) served" + (notes.isEmpty ? "" : "; " + notes.joined(separator: ", ")))
        if let learner = enforcement.learner { printError(learner.summary) }
        if flowLog.droppedRecords > 0 {
            printError("flow log: \(flowLog.droppedRecords) record(s) dropped (sink too slow or gone)")
        }
        // The successor learns what this one learned while draining, and that it is gone.
        if handedOver { handover?.finish(served: accepted) }
    }

    /// Serves the hand-over socket (the predecessor's, or a new one) so that a later sluice
    /// can take over from this one; nil without a hand-over socket or when it cannot be bound.
    private func startHandover(configuration: ProxyConfiguration, offer: HandoverOffer?, server: ProxyServer,
                               operations: OperationsServer, enforcement: PolicyEnforcement) -> HandoverServer? {
        guard let path = configuration.control.handoverPath else { return nil }
        let report: @Sendable (String) -> Void = { printError($0) }
        let handover: HandoverServer
        if let (_, descriptor) = offer?.take(.handover, key: "unix \(path)").first {
            handover = HandoverServer(adopting: descriptor, path: path, version: Sluice.version, report: report)
        } else {
            do {
                handover = try HandoverServer(path: path, version: Sluice.version, report: report)
            } catch {
                printError("hand-over: \(error); a later sluice cannot take over from this one")
                return nil
            }
        }
        let metricsAddress = configuration.metrics.listen
        let controlPath = operations.controlPath
        handover.sockets = { [server, operations, handover] in
            var sockets = server.handoverSockets
            if let address = metricsAddress, let descriptor = operations.metricsDescriptor {
                sockets.append((HandoverSocket(role: .metrics, transport: "tcp", address: "\(address)"), descriptor))
            }
            if let path = controlPath, let descriptor = operations.controlDescriptor {
                sockets.append((HandoverSocket(role: .control, transport: "unix", address: path), descriptor))
            }
            sockets.append((HandoverSocket(role: .handover, transport: "unix", address: handover.path), handover.descriptor))
            return sockets
        }
        handover.state = { [enforcement] in
            guard let learner = enforcement.learner else { return [] }
            return [("fqdn", learner.encodedRecords())]
        }
        handover.onReady = { _ in kill(getpid(), ShutdownSignals.handedOver) }
        do {
            try handover.start()
        } catch {
            printError("hand-over: \(error); a later sluice cannot take over from this one")
            handover.stop(unlinking: offer == nil)
            return nil
        }
        return handover
    }

    /// The node name records, `observe` and `status` carry (Hubble's `node_name`): the node
    /// the configuration places this sluice on (`policy.node`, or the Kubernetes source's
    /// node), else the host's name. Lab nodes share one host, so their names must come from
    /// the configuration to tell them apart.
    static func nodeName(_ configuration: ProxyConfiguration) -> String {
        if let node = configuration.policy?.node { return node }
        if let kubernetes = configuration.policy?.kubernetes,
           let node = kubernetes.nodeName ?? getenv("NODE_NAME").map({ String(cString: $0) }), !node.isEmpty {
            return node
        }
        return hostName()
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(cString: buffer)
    }

    /// Sluice's own series: connections per listener, buffers, the flow-log sink's drops,
    /// then the policy side's.
    static func metricFamilies(gauges: WorkerGauges, enforcement: PolicyEnforcement, flowLog: FlowLog) -> [MetricFamily] {
        var connections = MetricFamily("sluice_listener_connections", .gauge,
                                       "Open connections per listener (UDP listeners: flows)")
        for (name, count) in gauges.connections.sorted(by: { $0.key < $1.key }) { connections.add([("listener", name)], Double(count)) }
        var buffers = MetricFamily("sluice_buffers_in_use", .gauge, "Relay buffer blocks lent to connections")
        buffers.add([], Double(gauges.buffersInUse))
        var cached = MetricFamily("sluice_buffers_cached", .gauge, "Relay buffer blocks kept for reuse")
        cached.add([], Double(gauges.buffersCached))
        var sinkDropped = MetricFamily("sluice_flow_log_dropped_total", .counter,
                                       "Flow records the flow-log sink could not take (too slow or gone)")
        sinkDropped.add([], Double(flowLog.droppedRecords))
        return [connections, buffers, cached, sinkDropped] + enforcement.metricFamilies()
    }

    /// The proxy's part of `sluice status` (listeners, connections), then the policy side's.
    static func status(configuration: ProxyConfiguration, gauges: WorkerGauges, enforcement: PolicyEnforcement,
                       flowLog: FlowLog) -> JSONObject {
        var status = enforcement.status()
        status["listeners"] = .array(configuration.listeners.map { listener in
            var entry = JSONObject()
            entry["name"] = .string(listener.name)
            entry["address"] = .string("\(listener.address)")
            switch listener.kind {
            case .explicit(let upstream):
                entry["mode"] = .string("explicit -> \(upstream)")
                entry["protocol"] = .string("tcp")
            case .transparentTCP:
                entry["mode"] = .string("transparent")
                entry["protocol"] = .string("tcp")
            case .transparentUDP:
                entry["mode"] = .string("transparent")
                entry["protocol"] = .string("udp")
            }
            entry["connections"] = .unsigned(UInt64(gauges.connections[listener.name] ?? 0))
            return .object(entry)
        })
        var connections = JSONObject()
        connections["open"] = .unsigned(UInt64(gauges.connections.values.reduce(0, +)))
        connections["buffers_in_use"] = .unsigned(UInt64(gauges.buffersInUse))
        connections["workers"] = .unsigned(UInt64(configuration.workers))
        status["connections"] = .object(connections)
        var flows = JSONObject()
        flows["flow_log_dropped"] = .unsigned(flowLog.droppedRecords)
        status["flows"] = .object(flows)
        return status
    }

    private func describe(_ listener: ListenerConfiguration) -> String {
        switch listener.kind {
        case .explicit(let upstream): return "\(listener.name) tcp \(listener.address) -> \(upstream) (explicit)"
        case .transparentTCP: return "\(listener.name) tcp \(listener.address) (transparent)"
        case .transparentUDP: return "\(listener.name) udp \(listener.address) (transparent)"
        }
    }
}

/// Where this sluice came from, for `sluice status`: the pid it took over from, and whether
/// that one has finished draining.
final class HandoverLineage: Sendable {
    let predecessor: Int32?
    private let ended = Mutex<(Bool, UInt64?)>((false, nil))
    init(predecessor: Int32?) { self.predecessor = predecessor }

    func predecessorEnded(served: UInt64?) { ended.withLock { $0 = (true, served) } }

    func status(socket: String?) -> JSONObject.Value {
        var entry = JSONObject()
        if let socket { entry["socket"] = .string(socket) }
        if let predecessor {
            entry["took_over_from"] = .integer(Int64(predecessor))
            let (done, served) = ended.withLock { $0 }
            entry["predecessor"] = .string(done ? "finished" : "draining")
            if let served { entry["predecessor_connections"] = .unsigned(served) }
        }
        return .object(entry)
    }
}

/// Waits on a detached thread for a second SIGTERM/SIGINT and stops the server at once.
private final class SecondSignalWatcher: @unchecked Sendable {
    let server: ProxyServer
    init(server: ProxyServer) { self.server = server }

    func start() {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self).toOpaque()
        if pthread_create(&thread, nil, { raw in
            let watcher = Unmanaged<SecondSignalWatcher>.fromOpaque(raw!).takeRetainedValue()
            _ = ShutdownSignals.wait(includingHangUp: false)
            printError("second signal: stopping now")
            watcher.server.stopNow()
            return nil
        }, box) == 0 {
            pthread_detach(thread)
        } else {
            Unmanaged<SecondSignalWatcher>.fromOpaque(box).release()
        }
    }
}
