import Dispatch
import PolicyEngine
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The whole proxy: one `Worker` per thread, started together and drained together.
///
/// Startup is all-or-nothing: every worker binds its listeners before any of them serves,
/// and if one cannot, all stop and `start()` throws that error.
public final class ProxyServer: @unchecked Sendable {
    private let configuration: ProxyConfiguration
    private let flowLog: FlowLog
    private let policy: PolicySnapshotHolder?
    private let sessions: SessionRegistry?
    private var threads: [pthread_t] = []
    private let handles = Mutex<[EventLoopHandle]>([])
    private let workers = Mutex<[Int: WorkerReport]>([:])
    private let startupFailures = Mutex<[Error]>([])
    private let transparentListeners = Mutex<[(port: UInt16, descriptor: Int32)]>([])
    /// Listening sockets handed over by the sluice this one replaces, by key; spread over
    /// the workers at start (socket i of a key to worker i modulo the worker count).
    private let inherited: [String: [Int32]]
    /// Every worker's listening sockets, for handing them over in turn.
    private let listening = Mutex<[Int: [(HandoverSocket, Int32)]]>([:])
    private let proceed = Atomic<Bool>(false)
    private let started = DispatchSemaphore(value: 0)
    private let startGate = DispatchSemaphore(value: 0)

    /// What a worker left behind when its thread ended.
    public struct WorkerReport: Sendable {
        public var counters: WorkerCounters
        public var error: String?
    }

    /// `policy` holds the snapshot requests are judged by; the caller replaces it when
    /// policies change, and new connections and requests see the new one. `sessions` are the
    /// L7 protocols the workers judge (`SessionRegistry.standard` when nil).
    /// `inherited`: listening sockets handed over (`HandoverSocket.key` to descriptors),
    /// owned by the server from now on; those no configured listener takes are closed at start.
    public init(configuration: ProxyConfiguration, flowLog: FlowLog, policy: PolicySnapshotHolder? = nil,
                sessions: SessionRegistry? = nil, inherited: [String: [Int32]] = [:]) {
        self.configuration = configuration
        self.flowLog = flowLog
        self.policy = policy
        self.sessions = sessions
        self.inherited = inherited
    }

    /// The inherited sockets worker `index` serves.
    private func inherited(forWorker index: Int) -> [String: [Int32]] {
        inherited.mapValues { descriptors in
            descriptors.enumerated().filter { $0.offset % configuration.workers == index }.map(\.element)
        }
    }

    /// The `HandoverSocket.key` of every socket `listeners` bind.
    public static func listenerKeys(_ listeners: [ListenerConfiguration]) -> [String] {
        listeners.flatMap { listener -> [String] in
            switch listener.kind {
            case .explicit: return ["tcp \(listener.address)"]
            case .transparentTCP: return Worker.transparentAddresses(listener.address).map { "tcp \($0)" }
            case .transparentUDP: return Worker.transparentAddresses(listener.address).map { "udp \($0)" }
            }
        }
    }

    /// Keys of inherited sockets no configured listener serves (closed at start).
    public var unusedInheritedKeys: [String] {
        let configured = Set(Self.listenerKeys(configuration.listeners))
        return inherited.keys.filter { !configured.contains($0) }.sorted()
    }

    /// Every worker's listening sockets with their descriptions (valid until `drain` or
    /// `stopNow`: the caller keeps them from being closed meanwhile).
    public var handoverSockets: [(HandoverSocket, Int32)] {
        listening.withLock { workers in workers.keys.sorted().flatMap { workers[$0]! } }
    }

    /// Starts the worker threads; returns once all are serving, or throws the first
    /// startup error after stopping the others.
    public func start() throws {
        let unused = Set(unusedInheritedKeys)
        for key in unused { for descriptor in inherited[key]! { close(descriptor) } }
        for index in 0..<configuration.workers {
            let context = WorkerThreadContext { [self] in runWorker(index: index) }
            var thread = pthread_t()
            let box = Unmanaged.passRetained(context).toOpaque()
            let result = pthread_create(&thread, nil, { raw in
                let context = Unmanaged<WorkerThreadContext>.fromOpaque(raw!).takeRetainedValue()
                context.body()
                return nil
            }, box)
            guard result == 0 else {
                Unmanaged<WorkerThreadContext>.fromOpaque(box).release()
                startupFailures.withLock { $0.append(Errno(code: result, syscall: "pthread_create")) }
                started.signal()
                continue
            }
            threads.append(thread)
        }
        for _ in 0..<configuration.workers { started.wait() }
        let firstFailure = startupFailures.withLock { $0.first }
        proceed.store(firstFailure == nil, ordering: .releasing)
        for _ in threads { startGate.signal() }
        if let firstFailure {
            join()
            throw firstFailure
        }
    }

    /// The body of one worker thread: bind, wait until every worker has bound, serve.
    private func runWorker(index: Int) {
        let worker: Worker
        do {
            worker = try Worker(index: index, configuration: configuration, flowLog: flowLog, policy: policy,
                                sessions: sessions, inherited: inherited(forWorker: index))
        } catch {
            startupFailures.withLock { $0.append(error) }
            started.signal()
            return
        }
        worker.loop.owner = worker
        handles.withLock { $0.append(worker.loop.handle) }
        if index == 0 { transparentListeners.withLock { $0 = worker.transparentStreamListeners } }
        listening.withLock { $0[index] = worker.handoverSockets }
        started.signal()
        startGate.wait()
        guard proceed.load(ordering: .acquiring) else {
            worker.stopNow()
            return
        }
        var report = WorkerReport(counters: WorkerCounters(), error: nil)
        do {
            try worker.run()
        } catch {
            report.error = "worker \(index): \(error)"
        }
        report.counters = worker.counters
        workers.withLock { $0[index] = report }
    }

    /// Transparent TCP listeners of the first worker (all workers share each port through
    /// `SO_REUSEPORT`, and the kernel spreads connections across the group).
    public var transparentStreamListeners: [(port: UInt16, descriptor: Int32)] {
        transparentListeners.withLock { $0 }
    }

    /// Asks every worker to stop accepting and finish its connections within the drain
    /// timeout. Safe from any thread.
    public func drain() {
        let deadline = configuration.timeouts.drain
        for handle in handles.withLock({ $0 }) {
            handle.execute { loop in
                (loop.owner as? Worker)?.beginDrain(deadline: deadline)
            }
        }
    }

    /// Tells every worker that the policy holder published a new snapshot (after it did):
    /// L4 relays the new policy puts under L7 rules are reset. Requests on L7 sessions see
    /// the new policy without this. Safe from any thread.
    public func policyChanged() {
        for handle in handles.withLock({ $0 }) {
            handle.execute { loop in (loop.owner as? Worker)?.policyChanged() }
        }
    }

    /// Every worker's gauges, summed, as each worker reads them on its own thread; a worker
    /// that does not answer within `timeout` (nanoseconds) is left out. Safe from any thread.
    public func gauges(timeout: UInt64 = 200_000_000) -> WorkerGauges {
        let handles = handles.withLock { $0 }
        let collected = GaugeCollection()
        let answered = DispatchSemaphore(value: 0)
        for handle in handles {
            handle.execute { loop in
                if let worker = loop.owner as? Worker {
                    let gauges = worker.gauges
                    collected.sum.withLock { $0.add(gauges) }
                }
                answered.signal()
            }
        }
        let deadline = DispatchTime.now() + .nanoseconds(Int(timeout))
        for _ in handles where answered.wait(timeout: deadline) == .timedOut { break }
        return collected.sum.withLock { $0 }
    }

    /// Aborts every connection now. Safe from any thread.
    public func stopNow() {
        for handle in handles.withLock({ $0 }) {
            handle.execute { loop in (loop.owner as? Worker)?.stopNow() }
        }
    }

    /// Waits for every worker thread to end; returns their reports.
    @discardableResult
    public func join() -> [WorkerReport] {
        for thread in threads { pthread_join(thread, nil) }
        threads.removeAll()
        return workers.withLock { reports in reports.keys.sorted().map { reports[$0]! } }
    }
}

private final class GaugeCollection: Sendable {
    let sum = Mutex<WorkerGauges>(WorkerGauges())
}

private final class WorkerThreadContext {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Blocks SIGTERM, SIGINT, SIGHUP, SIGUSR2 and SIGPIPE in the calling thread and every
/// thread it starts afterwards, so that `ShutdownSignals.wait()` receives them synchronously
/// (and SIGHUP's default action, ending the process, never runs).
public enum ShutdownSignals {
    /// What the hand-over thread sends its own process once a successor serves.
    public static let handedOver = SIGUSR2

    public static func block() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        sigaddset(&set, handedOver)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits for SIGTERM, SIGINT or (with `includingHangUp`) SIGHUP and `handedOver`;
    /// returns its number.
    public static func wait(includingHangUp: Bool = true) -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        if includingHangUp {
            sigaddset(&set, SIGHUP)
            sigaddset(&set, handedOver)
        }
        var signal: Int32 = 0
        while sigwait(&set, &signal) != 0 {}
        return signal
    }
}
