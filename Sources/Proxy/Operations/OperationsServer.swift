import CSluiceShims
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What the operations server asks the rest of `sluice run` for, on its own thread, when a
/// scrape, a probe or a status request comes in.
public struct OperationsSources: Sendable {
    /// Sluice's own gauges and counters (connections, buffers, policy, datapath, FQDN).
    public var metrics: @Sendable () -> [MetricFamily] = { [] }
    /// The status document's parts from the proxy and the policy side.
    public var status: @Sendable () -> JSONObject = { JSONObject() }
    /// nil when ready (policies loaded, datapath attached), else why not.
    public var notReady: @Sendable () -> String? = { nil }
    public init() {}
}

/// A request on the control socket: one JSON line from `sluice observe` or `sluice status`.
public struct ControlRequest: Codable, Sendable, Equatable {
    /// `observe` or `status`.
    public var command: String
    /// Observe: how many of the most recent matching flows to send first (0: none).
    public var last: Int?
    /// Observe: keep the connection and send new matching flows as they come.
    public var follow: Bool?
    public var filter: FlowFilter?

    public init(command: String, last: Int? = nil, follow: Bool? = nil, filter: FlowFilter? = nil) {
        self.command = command
        self.last = last
        self.follow = follow
        self.filter = filter
    }
}

/// The operations endpoints of `sluice run`, on one small thread of their own (never a
/// worker's): the metrics address (`/metrics` in the Prometheus text format, `/healthz`,
/// `/readyz`) and the control socket (`sluice observe`, `sluice status`).
///
/// Bounded everywhere: at most `maximumClients` at once (more are closed on accept), a
/// request of at most `maximumRequestBytes` that must arrive within `requestTimeout`, and
/// at most `maximumQueuedBytes` waiting for each observer. A following observer reads the
/// flow ring from its own position; flows it is too slow for (its queue full, or overwritten
/// in the ring before it got to them) are dropped, counted in `observerFlowsDropped` and
/// announced to it as Hubble's `lost_events`. The proxy never waits for an observer.
public final class OperationsServer: @unchecked Sendable {
    public static let maximumClients = 64
    public static let maximumRequestBytes = 16 * 1024
    public static let requestTimeout: UInt64 = 10_000_000_000
    public static let maximumQueuedBytes = 4 << 20

    private let tap: FlowTap
    /// Set before `start()`.
    public var sources = OperationsSources()
    private let nodeName: String
    private let version: String
    private let startedAt = MonotonicClock.now()
    private let startedAtWall = WallClock.nanosecondsNow()
    private var metricsListener: Int32 = -1
    private var controlListener: Int32 = -1
    public private(set) var controlPath: String?
    public private(set) var metricsAddress: SocketAddress?
    /// An eventfd that `stop()` writes to end the thread's poll.
    private var wakeup: Int32 = -1
    private var thread: pthread_t?
    private let stopping = Atomic<Bool>(false)
    private let dropped = Atomic<UInt64>(0)
    private let observerCount = Atomic<Int>(0)

    public init(tap: FlowTap, nodeName: String, version: String) {
        self.tap = tap
        self.nodeName = nodeName
        self.version = version
    }

    /// Flows observers could not be given (slow or stuck readers).
    public var observerFlowsDropped: UInt64 { dropped.load(ordering: .relaxed) }

    public enum SetupError: Error, CustomStringConvertible {
        case controlSocketInUse(String)
        case handoverSocketInUse(String)
        case failed(String, Errno)
        public var description: String {
            switch self {
            case .controlSocketInUse(let path): return "control socket \(path): another sluice is serving it"
            case .handoverSocketInUse(let path): return "hand-over socket \(path): another sluice is serving it"
            case .failed(let what, let error): return "\(what): \(error)"
            }
        }
    }

    /// Binds the metrics address (when given); throws naming it when it cannot.
    public func listenMetrics(on address: SocketAddress) throws {
        let socket = try Socket.open(.stream, family: address.family)
        do {
            try socket.setReuseAddress()
            try socket.bind(to: address)
            try socket.listen(backlog: 64)
        } catch {
            socket.close()
            throw error
        }
        metricsListener = socket.descriptor
        metricsAddress = (try? socket.localAddress()) ?? address
    }

    /// Binds the control socket at `path`, making its directory (0755) when missing; a stale
    /// socket file (nobody answering) is replaced, a live one is not.
    public func listenControl(at path: String) throws {
        controlListener = try Self.bindUnix(path, what: "control socket", inUse: { .controlSocketInUse($0) })
        controlPath = path
    }

    /// Serves the metrics address on `descriptor`, a listening socket handed over by the
    /// sluice this one replaces.
    public func adoptMetrics(descriptor: Int32, address: SocketAddress) {
        metricsListener = descriptor
        metricsAddress = (try? Socket(descriptor: descriptor).localAddress()) ?? address
    }

    /// Serves the control socket on `descriptor`, bound at `path` by the sluice this one replaces.
    public func adoptControl(descriptor: Int32, path: String) {
        controlListener = descriptor
        controlPath = path
    }

    /// The listening descriptors, for handing them over (valid until `stop`).
    public var metricsDescriptor: Int32? { metricsListener >= 0 ? metricsListener : nil }
    public var controlDescriptor: Int32? { controlListener >= 0 ? controlListener : nil }

    /// A listening Unix stream socket at `path` (nonblocking, mode 0600), its directory made
    /// (0755) when missing; a stale socket file (nobody answering) is replaced, a live one
    /// is not (`inUse`).
    public static func bindUnix(_ path: String, what: String, inUse: (String) -> SetupError) throws -> Int32 {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty, access(directory, F_OK) != 0 {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        }
        if access(path, F_OK) == 0 {
            if let probe = try? Self.connectUnix(path) {
                Glibc.close(probe)
                throw inUse(path)
            }
            unlink(path)
        }
        let descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw SetupError.failed("\(what) \(path)", Errno.current("socket(AF_UNIX)")) }
        var address = try Self.unixAddress(path)
        let previous = umask(0o077)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(previous)
        guard bound == 0, Glibc.listen(descriptor, 64) == 0 else {
            let error = Errno.current("bind(\(path))")
            Glibc.close(descriptor)
            throw SetupError.failed("\(what) \(path)", error)
        }
        return descriptor
    }

    static func unixAddress(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw SetupError.failed("control socket \(path)", Errno(code: ENAMETOOLONG, syscall: "bind"))
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }

    /// A blocking connection to the Unix stream socket at `path` (for clients and probes).
    public static func connectUnix(_ path: String) throws -> Int32 {
        let descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw Errno.current("socket(AF_UNIX)") }
        var address = try unixAddress(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let error = Errno.current("connect(\(path))")
            Glibc.close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Starts the thread (after the listeners were bound).
    public func start() throws {
        wakeup = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        guard wakeup >= 0 else { throw Errno.current("eventfd") }
        thread = try startServingThread(self) { $0.serve() }
    }

    /// Stops the thread, closes every client and listener, and removes the control socket
    /// unless `unlinking` is false (after a hand-over: the successor serves it).
    public func stop(unlinking: Bool = true) {
        stopping.store(true, ordering: .relaxed)
        if wakeup >= 0 { var one: UInt64 = 1; _ = Glibc.write(wakeup, &one, 8) }
        if let thread { pthread_join(thread, nil) }
        thread = nil
        if metricsListener >= 0 { Glibc.close(metricsListener); metricsListener = -1 }
        if controlListener >= 0 { Glibc.close(controlListener); controlListener = -1 }
        if unlinking, let controlPath { unlink(controlPath) }
        controlPath = nil
        if wakeup >= 0 { Glibc.close(wakeup) }
        wakeup = -1
    }

    // MARK: The loop

    private final class Client {
        enum Kind { case http, control }
        var descriptor: Int32
        let kind: Kind
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        let deadline: UInt64
        var requestDone = false
        var closeWhenFlushed = false
        var observer: Observer?

        init(descriptor: Int32, kind: Kind, deadline: UInt64) {
            self.descriptor = descriptor
            self.kind = kind
            self.deadline = deadline
        }

        var queued: Int { output.count - written }
    }

    private struct Observer {
        var filter: FlowFilter.Compiled
        var cursor: UInt64
        var lost: UInt64 = 0
    }

    private var clients: [Client] = []

    private func serve() {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while !stopping.load(ordering: .relaxed) {
            var descriptors: [pollfd] = [pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)]
            if metricsListener >= 0 { descriptors.append(pollfd(fd: metricsListener, events: Int16(POLLIN), revents: 0)) }
            if controlListener >= 0 { descriptors.append(pollfd(fd: controlListener, events: Int16(POLLIN), revents: 0)) }
            for client in clients {
                var events = Int16(POLLIN)
                if client.queued > 0 { events |= Int16(POLLOUT) }
                descriptors.append(pollfd(fd: client.descriptor, events: events, revents: 0))
            }
            let following = clients.contains { $0.observer != nil }
            _ = poll(&descriptors, nfds_t(descriptors.count), following ? 100 : 1000)
            if stopping.load(ordering: .relaxed) { break }
            var count: UInt64 = 0
            _ = Glibc.read(wakeup, &count, 8)
            for entry in descriptors where entry.revents != 0 {
                if entry.fd == metricsListener { accept(from: metricsListener, kind: .http) }
                else if entry.fd == controlListener { accept(from: controlListener, kind: .control) }
            }
            let now = MonotonicClock.now()
            for client in clients {
                guard let entry = descriptors.first(where: { $0.fd == client.descriptor }) else { continue }
                if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { read(client, into: &buffer) }
            }
            for client in clients where client.observer != nil { pump(client) }
            for client in clients where client.queued > 0 { flush(client) }
            // Close: finished answers, peers gone, requests too slow to arrive.
            clients.removeAll { client in
                let done = client.descriptor < 0
                    || (client.closeWhenFlushed && client.queued == 0)
                    || (!client.requestDone && now > client.deadline)
                if done {
                    if client.descriptor >= 0 { Glibc.close(client.descriptor) }
                    if client.observer != nil { observerCount.add(-1, ordering: .relaxed) }
                }
                return done
            }
        }
        for client in clients where client.descriptor >= 0 { Glibc.close(client.descriptor) }
        clients.removeAll()
    }

    private func accept(from listener: Int32, kind: Client.Kind) {
        while true {
            let descriptor = sluice_accept_nonblocking(listener, nil, nil)
            guard descriptor >= 0 else { return }
            guard clients.count < Self.maximumClients else {
                Glibc.close(descriptor)
                continue
            }
            clients.append(Client(descriptor: descriptor, kind: kind, deadline: MonotonicClock.now() + Self.requestTimeout))
        }
    }

    private func read(_ client: Client, into buffer: inout [UInt8]) {
        while client.descriptor >= 0 {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(client.descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                if client.requestDone { continue }  // nothing more is expected; ignored
                client.input.append(contentsOf: buffer[0..<count])
                if client.input.count > Self.maximumRequestBytes {
                    // Answered; what else arrives is read and discarded, so that closing does
                    // not reset the connection before the answer is read.
                    answerError(client, "request larger than \(Self.maximumRequestBytes) bytes")
                    client.input = []
                    continue
                }
                handleInput(client)
            } else if count == 0 {
                // The peer closed its side: an observer is gone; an answer still owed is dropped.
                if client.observer != nil || !client.requestDone || client.kind == .control { markClosed(client) }
                return
            } else {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { markClosed(client) }
                return
            }
        }
    }

    private func markClosed(_ client: Client) {
        Glibc.close(client.descriptor)
        client.descriptor = -1
    }

    private func handleInput(_ client: Client) {
        switch client.kind {
        case .http:
            guard let end = Self.find([13, 10, 13, 10], in: client.input) ?? Self.find([10, 10], in: client.input) else { return }
            client.requestDone = true
            let head = String(decoding: client.input[..<end], as: UTF8.self)
            answerHTTP(client, head: head)
        case .control:
            guard let newline = client.input.firstIndex(of: 10) else { return }
            client.requestDone = true
            let line = Data(client.input[..<newline])
            guard let request = try? JSONDecoder().decode(ControlRequest.self, from: line) else {
                answerError(client, "not a control request (one JSON object per line)")
                return
            }
            answerControl(client, request)
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start..<(start + needle.count)].elementsEqual(needle) {
            return start
        }
        return nil
    }

    // MARK: HTTP

    private func answerHTTP(_ client: Client, head: String) {
        let requestLine = head.split(separator: "\r\n", maxSplits: 1).first.map(String.init)
            ?? head.split(separator: "\n", maxSplits: 1).first.map(String.init) ?? ""
        let parts = requestLine.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            respond(client, status: "400 Bad Request", type: "text/plain", body: "bad request\n", includeBody: true)
            return
        }
        let method = String(parts[0])
        let path = String(parts[1].split(separator: "?", maxSplits: 1).first ?? "")
        guard method == "GET" || method == "HEAD" else {
            respond(client, status: "405 Method Not Allowed", type: "text/plain", body: "only GET and HEAD\n", includeBody: true)
            return
        }
        let includeBody = method == "GET"
        switch path {
        case "/metrics":
            respond(client, status: "200 OK", type: "text/plain; version=0.0.4; charset=utf-8", body: exposition(),
                    includeBody: includeBody)
        case "/healthz":
            respond(client, status: "200 OK", type: "text/plain", body: "ok\n", includeBody: includeBody)
        case "/readyz":
            if let reason = sources.notReady() {
                respond(client, status: "503 Service Unavailable", type: "text/plain", body: "not ready: \(reason)\n",
                        includeBody: includeBody)
            } else {
                respond(client, status: "200 OK", type: "text/plain", body: "ready\n", includeBody: includeBody)
            }
        default:
            respond(client, status: "404 Not Found", type: "text/plain", body: "not found; try /metrics, /healthz or /readyz\n",
                    includeBody: includeBody)
        }
    }

    private func respond(_ client: Client, status: String, type: String, body: String, includeBody: Bool) {
        let bytes = Array(body.utf8)
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(bytes.count)\r\nConnection: close\r\n\r\n"
        client.output.append(contentsOf: head.utf8)
        if includeBody { client.output.append(contentsOf: bytes) }
        client.closeWhenFlushed = true
    }

    /// The whole exposition: the reference's families from the tap, then Sluice's own.
    public func exposition() -> String {
        var families = tap.metrics.families()
        var info = MetricFamily("sluice_build_info", .gauge, "Sluice's version (always 1)")
        info.add([("version", version)], 1.0)
        var start = MetricFamily("process_start_time_seconds", .gauge, "Start time of the process since the epoch in seconds")
        start.add([], Double(startedAtWall / 1_000_000) / 1000)
        var records = MetricFamily("sluice_flow_records_total", .counter, "Flow records made (every record passes the tap)")
        records.add([], Double(tap.nextSequence))
        var observers = MetricFamily("sluice_observers", .gauge, "sluice observe clients following the flows")
        observers.add([], Double(observerCount.load(ordering: .relaxed)))
        var lost = MetricFamily("sluice_observer_flows_dropped_total", .counter,
                                "Flows not delivered to observers too slow to read them")
        lost.add([], Double(observerFlowsDropped))
        families += [info, start, records, observers, lost]
        families += sources.metrics()
        var text = ""
        for family in families { family.render(into: &text) }
        return text
    }

    // MARK: Control

    private func answerError(_ client: Client, _ message: String) {
        client.requestDone = true
        if client.kind == .http {
            respond(client, status: "400 Bad Request", type: "text/plain", body: message + "\n", includeBody: true)
            return
        }
        var error = JSONObject()
        error["error"] = .string(message)
        append(error, to: client)
        client.closeWhenFlushed = true
    }

    private func append(_ object: JSONObject, to client: Client) {
        object.serialize(into: &client.output)
        client.output.append(10)
    }

    private func answerControl(_ client: Client, _ request: ControlRequest) {
        switch request.command {
        case "status":
            append(status(), to: client)
            client.closeWhenFlushed = true
        case "observe":
            // An observer wants flows: from now on they are made (when nothing else wanted them).
            tap.activate()
            let filter: FlowFilter.Compiled
            do {
                filter = try (request.filter ?? FlowFilter()).compiled()
            } catch {
                answerError(client, "\(error)")
                return
            }
            let next = tap.nextSequence
            var observer = Observer(filter: filter, cursor: next)
            let last = max(0, request.last ?? 0)
            if last > 0 {
                // The last N matching among what the ring holds.
                let held = tap.records(from: 0, limit: tap.capacity)
                let matching = held.records.filter(filter.matches).suffix(last)
                for record in matching { queue(record, to: client, observer: &observer) }
                observer.cursor = held.next
            }
            if request.follow == true {
                client.observer = observer
                observerCount.add(1, ordering: .relaxed)
            } else {
                client.closeWhenFlushed = true
            }
        default:
            answerError(client, "unknown command '\(request.command)'; expected observe or status")
        }
    }

    /// New records since the observer's position, filtered, queued while its queue has room.
    private func pump(_ client: Client) {
        guard var observer = client.observer, client.descriptor >= 0 else { return }
        while true {
            let batch = tap.records(from: observer.cursor, limit: 1024)
            if batch.skipped > 0 {
                observer.lost += batch.skipped
                dropped.add(batch.skipped, ordering: .relaxed)
            }
            observer.cursor = batch.next
            for record in batch.records where observer.filter.matches(record) {
                queue(record, to: client, observer: &observer)
            }
            if batch.records.count < 1024 { break }
        }
        client.observer = observer
    }

    private func queue(_ record: JSONObject, to client: Client, observer: inout Observer) {
        guard client.queued < Self.maximumQueuedBytes else {
            observer.lost += 1
            dropped.add(1, ordering: .relaxed)
            return
        }
        if observer.lost > 0 {
            // Hubble's GetFlowsResponse.lost_events, before the next flow that gets through.
            client.output.append(contentsOf: "{\"lost_events\":{\"source\":\"OBSERVER_EVENTS_QUEUE\",\"num_events_lost\":\(observer.lost)},\"node_name\":".utf8)
            JSONObject.appendString(nodeName, to: &client.output)
            client.output.append(contentsOf: ",\"time\":".utf8)
            JSONObject.appendString(WallClock.rfc3339Now(), to: &client.output)
            client.output.append(contentsOf: "}\n".utf8)
            observer.lost = 0
        }
        // Hubble's `observe -o json` wrapper: {"flow":{...},"node_name":...,"time":...}.
        client.output.append(contentsOf: "{\"flow\":".utf8)
        record.serialize(into: &client.output)
        client.output.append(contentsOf: ",\"node_name\":".utf8)
        JSONObject.appendString(nodeName, to: &client.output)
        client.output.append(contentsOf: ",\"time\":".utf8)
        if case .string(let time)? = record.fields.first?.1 { JSONObject.appendString(time, to: &client.output) }
        else { JSONObject.appendString(WallClock.rfc3339Now(), to: &client.output) }
        client.output.append(contentsOf: "}\n".utf8)
    }

    private func flush(_ client: Client) {
        guard client.descriptor >= 0 else { return }
        while client.queued > 0 {
            let count = client.output.withUnsafeBytes { raw in
                Glibc.send(client.descriptor, raw.baseAddress! + client.written, client.queued, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if count > 0 {
                client.written += count
            } else if count < 0 && errno == EINTR {
                continue
            } else if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                markClosed(client)
                return
            }
        }
        if client.written > 0 && (client.queued == 0 || client.written > 1 << 20) {
            client.output.removeFirst(client.written)
            client.written = 0
        }
    }

    private func status() -> JSONObject {
        var status = JSONObject()
        status["version"] = .string(version)
        status["node_name"] = .string(nodeName)
        status["pid"] = .integer(Int64(getpid()))
        status["uptime_seconds"] = .unsigned((MonotonicClock.now() - startedAt) / 1_000_000_000)
        for (key, value) in sources.status().fields { status[key] = value }
        var flows = JSONObject()
        flows["ring_capacity"] = .unsigned(UInt64(tap.capacity))
        flows["recording"] = .bool(tap.isActive)
        flows["records_seen"] = .unsigned(tap.nextSequence)
        flows["observers"] = .unsigned(UInt64(max(0, observerCount.load(ordering: .relaxed))))
        flows["observer_flows_dropped"] = .unsigned(observerFlowsDropped)
        if case .object(let more)? = status["flows"] { for (key, value) in more.fields { flows[key] = value } }
        status["flows"] = .object(flows)
        return status
    }
}
