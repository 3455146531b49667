import CSluiceShims
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The predecessor's side of a hand-over: serves the hand-over socket on a thread of its own
/// and gives a successor that asks every listening socket (by descriptor, `SCM_RIGHTS`) and
/// the state sections the runtime names, then waits for it to say it serves.
///
/// Nothing changes for the predecessor until the successor's `ready`: a successor that
/// goes away before it (dies, fails to start, times out) leaves the predecessor serving as
/// before, and the next successor may try. After `ready`, `onReady` runs (the runtime then
/// stops accepting and drains), the channel is kept for `finish`, and this server accepts
/// no one else: the successor serves the hand-over socket now.
public final class HandoverServer: @unchecked Sendable {
    /// How long a successor may take between connecting and its hello, and between the end
    /// of the offer and `ready` (it binds, loads policies and attaches the datapath meanwhile).
    public static let helloTimeout: UInt64 = 10_000_000_000
    public static let readyTimeout: UInt64 = 120_000_000_000

    public let path: String
    private var listener: Int32
    private let version: String
    private let report: @Sendable (String) -> Void
    /// The sockets to hand over, read while the gate is held (so they are open).
    public var sockets: @Sendable () -> [(HandoverSocket, Int32)] = { [] }
    /// State sections (name and bytes) sent with the offer and again at `finish`.
    public var state: @Sendable () -> [(String, [UInt8])] = { [] }
    /// Runs on the server's thread once the successor serves.
    public var onReady: @Sendable (_ successor: Int32) -> Void = { _ in }

    private struct Gate {
        var stopping = false
        /// Sockets were offered and the successor has not said yet whether it serves.
        var offerPending = false
        var successor: HandoverChannel?
        var successorPID: Int32 = 0
    }
    private let gate = Mutex<Gate>(Gate())
    private var wakeup: Int32 = -1
    private var thread: pthread_t?

    /// Binds the hand-over socket at `path` (a stale file is replaced, a live one is not).
    public init(path: String, version: String, report: @escaping @Sendable (String) -> Void) throws {
        self.path = path
        self.version = version
        self.report = report
        listener = try OperationsServer.bindUnix(path, what: "hand-over socket", inUse: { .handoverSocketInUse($0) })
    }

    /// Serves the hand-over socket `descriptor`, already bound at `path` (handed over itself).
    public init(adopting descriptor: Int32, path: String, version: String, report: @escaping @Sendable (String) -> Void) {
        self.path = path
        self.version = version
        self.report = report
        listener = descriptor
    }

    public var descriptor: Int32 { listener }

    /// A successor holds this sluice's sockets and has not said yet whether it serves: the
    /// socket files are not this sluice's to remove now.
    public var offerPending: Bool { gate.withLock { $0.offerPending } }

    /// The successor that said it serves, if one did.
    public var successorPID: Int32? {
        gate.withLock { $0.successor == nil ? nil : $0.successorPID }
    }

    /// Starts the thread.
    public func start() throws {
        wakeup = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        guard wakeup >= 0 else { throw Errno.current("eventfd") }
        thread = try startServingThread(self) { $0.serve() }
    }

    /// From now on successors are refused (the runtime is about to close its listeners);
    /// waits for an offer being sent to finish. Safe from any thread.
    public func beginStopping() {
        gate.withLock { $0.stopping = true }
    }

    /// Stops the thread and closes the listening socket; `unlinking` removes its file (not
    /// after a hand-over: the successor serves it).
    public func stop(unlinking: Bool) {
        beginStopping()
        if wakeup >= 0 { var one: UInt64 = 1; _ = Glibc.write(wakeup, &one, 8) }
        if let thread { pthread_join(thread, nil) }
        thread = nil
        if listener >= 0 { Glibc.close(listener); listener = -1 }
        if unlinking && !offerPending { unlink(path) }
        if wakeup >= 0 { Glibc.close(wakeup); wakeup = -1 }
    }

    /// Tells the successor this sluice has drained (with the final state sections and the
    /// connections served), then closes the channel. Errors are reported, not thrown: the
    /// successor may be gone.
    public func finish(served: UInt64) {
        guard let channel = gate.withLock({ $0.successor }) else { return }
        do {
            for (section, bytes) in state() { try channel.send(.state(section: section, bytes: bytes)) }
            try channel.send(.finished(HandoverSummary(pid: getpid(), version: version, count: served)))
        } catch {
            report("hand-over: cannot tell the successor this sluice finished: \(error)")
        }
        channel.close()
    }

    private func serve() {
        while !gate.withLock({ $0.stopping || $0.successor != nil }) {
            var descriptors = [pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0),
                               pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            _ = poll(&descriptors, 2, 1000)
            guard descriptors[1].revents != 0 else { continue }
            let accepted = sluice_accept_nonblocking(listener, nil, nil)
            guard accepted >= 0 else { continue }
            // Only a process of this sluice's own user may take its sockets, whatever the socket
            // file's mode (it is made 0600, but an operator may loosen it): anyone else would
            // be handed the listeners every diverted connection arrives on.
            let peer = sluice_peer_uid(accepted)
            guard peer >= 0, UInt32(peer) == geteuid() else {
                report("hand-over: refused a connection from user \(peer) (not this sluice's user \(geteuid()))")
                Glibc.close(accepted)
                continue
            }
            // The conversation blocks (with timeouts) on this thread of its own.
            _ = fcntl(accepted, F_SETFL, fcntl(accepted, F_GETFL) & ~O_NONBLOCK)
            let channel = HandoverChannel(descriptor: accepted)
            converse(with: channel)
        }
    }

    /// One successor, from hello to ready (kept) or to its failure (closed).
    private func converse(with channel: HandoverChannel) {
        channel.setTimeout(nanoseconds: Self.helloTimeout)
        let hello: HandoverHello
        do {
            guard let (message, _) = try channel.receive() else { return channel.close() }
            guard case .hello(let received) = message else {
                try? channel.send(.refused(reason: "expected hello first"))
                return channel.close()
            }
            hello = received
        } catch let error as HandoverProtocolError {
            let reason: String
            if case .unsupportedVersion(let theirs) = error {
                reason = "the running sluice (pid \(getpid()), \(version)) speaks hand-over protocol "
                    + "\(HandoverMessage.protocolVersion), the new one \(theirs): stop the running one (SIGTERM) and start the new one"
            } else {
                reason = "\(error)"
            }
            report("hand-over: refused a successor: \(reason)")
            try? channel.send(.refused(reason: reason))
            return channel.close()
        } catch {
            report("hand-over: a successor connected and said nothing (\(error)); still serving")
            return channel.close()
        }
        // The gate is held while the descriptors go out, so the runtime cannot close them meanwhile.
        let offered: Result<Int, Error> = gate.withLock { gate in
            if gate.stopping { return .failure(HandoverRefusal("this sluice is stopping")) }
            do {
                let sockets = sockets()
                // Another instance sharing the socket path is given nothing.
                if let theirs = hello.networkNamespace, theirs != UInt64(sluice_own_namespace_inode()) {
                    return .failure(HandoverRefusal(HandoverRefusal.otherInstance + "runs in another network namespace"))
                }
                let ours = Set(sockets.filter { $0.0.role == .listener }.map(\.0.key))
                if let theirs = hello.listeners, ours.isDisjoint(with: theirs) {
                    return .failure(HandoverRefusal(HandoverRefusal.otherInstance + "has none of these listeners"))
                }
                for (socket, descriptor) in sockets { try channel.send(.socket(socket), attaching: descriptor) }
                for (section, bytes) in state() { try channel.send(.state(section: section, bytes: bytes)) }
                try channel.send(.offerEnd(HandoverSummary(pid: getpid(), version: version, count: UInt64(sockets.count))))
                gate.offerPending = true
                return .success(sockets.count)
            } catch {
                return .failure(error)
            }
        }
        switch offered {
        case .failure(let error as HandoverRefusal):
            try? channel.send(.refused(reason: error.reason))
            report("hand-over: refused pid \(hello.pid): \(error.reason)")
            return channel.close()
        case .failure(let error):
            report("hand-over to pid \(hello.pid) failed while offering (\(error)); still serving")
            return channel.close()
        case .success(let count):
            report("hand-over: offered \(count) socket(s) to pid \(hello.pid) (\(hello.version)); waiting for it to serve")
        }
        channel.setTimeout(nanoseconds: Self.readyTimeout)
        defer { gate.withLock { $0.offerPending = false } }
        do {
            guard let (message, _) = try channel.receive() else {
                report("hand-over: pid \(hello.pid) went away before serving; still serving")
                return channel.close()
            }
            guard message == .ready else {
                report("hand-over: pid \(hello.pid) sent \(message) instead of ready; still serving")
                return channel.close()
            }
        } catch {
            report("hand-over: pid \(hello.pid) did not say it serves (\(error)); still serving")
            return channel.close()
        }
        gate.withLock {
            $0.successor = channel
            $0.successorPID = hello.pid
        }
        onReady(hello.pid)
    }
}

struct HandoverRefusal: Error {
    /// How a refusal that means "not the same sluice" begins: the successor then starts as
    /// if nothing ran (and meets the other instance's sockets as any process would).
    static let otherInstance = "another instance: "
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// Why a successor could not take over: the predecessor said no, or spoke something else.
public struct HandoverFailure: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "hand-over socket \(path): \(problem)" }
    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }
}

/// The successor's side: what a running sluice handed over, until the successor serves.
public final class HandoverOffer: @unchecked Sendable {
    public let path: String
    public let predecessorPID: Int32
    public let predecessorVersion: String
    /// State sections by name (the FQDN learner's records).
    public let state: [String: [UInt8]]
    private var sockets: [(HandoverSocket, Int32)]
    private let channel: HandoverChannel

    /// What trying to take over found.
    public enum Attempt {
        /// No hand-over socket at the path: nothing runs; start afresh.
        case nothingRunning
        /// A socket file nobody answers on (the previous sluice died): start afresh.
        case stale
        /// The sluice serving the path is another instance (`why`: in another network
        /// namespace, or with none of these listeners); it offered nothing.
        case otherInstance(pid: Int32?, why: String)
        /// The sluice serving the path closed the connection before it answered at all: it
        /// is stopping (a connection still in its backlog is reset when it closes the
        /// socket). Asking again soon finds it gone or finds its successor.
        case stopping
        case offer(HandoverOffer)
    }

    /// Connects to `path` and takes what the sluice serving it offers. Throws
    /// `HandoverFailure` when it refuses or the conversation breaks.
    public static func takeOver(path: String, version: String, listeners: [String]) throws -> Attempt {
        let channel: HandoverChannel
        do {
            channel = try HandoverChannel.connect(to: path)
        } catch let error as Errno where error.code == ENOENT {
            return .nothingRunning
        } catch let error as Errno where error.code == ECONNREFUSED {
            return .stale
        }
        channel.setTimeout(nanoseconds: HandoverServer.helloTimeout)
        var sockets: [(HandoverSocket, Int32)] = []
        var state: [String: [UInt8]] = [:]
        func fail(_ problem: String) -> HandoverFailure {
            for (_, descriptor) in sockets { close(descriptor) }
            channel.close()
            return HandoverFailure(path: path, problem: problem)
        }
        var answered = false
        do {
            try channel.send(.hello(HandoverHello(pid: getpid(), version: version, listeners: listeners,
                                                  networkNamespace: UInt64(sluice_own_namespace_inode()))))
            while true {
                guard let (message, descriptor) = try channel.receive() else {
                    if !answered { channel.close(); return .stopping }
                    throw fail("the running sluice closed the connection before its offer was complete")
                }
                answered = true
                switch message {
                case .socket(let socket): sockets.append((socket, descriptor!))
                case .state(let section, let bytes): state[section] = bytes
                case .refused(let reason) where reason.hasPrefix(HandoverRefusal.otherInstance):
                    channel.close()
                    return .otherInstance(pid: nil, why: String(reason.dropFirst(HandoverRefusal.otherInstance.count)))
                case .refused(let reason): throw fail("the running sluice refused: \(reason)")
                case .offerEnd(let summary):
                    guard summary.count == UInt64(sockets.count) else {
                        throw fail("offered \(summary.count) socket(s), received \(sockets.count)")
                    }
                    return .offer(HandoverOffer(path: path, pid: summary.pid, version: summary.version, sockets: sockets,
                                                state: state, channel: channel))
                default: throw fail("unexpected \(message) during the offer")
                }
            }
        } catch let failure as HandoverFailure {
            throw failure
        } catch let error as Errno where !answered && [ECONNRESET, EPIPE].contains(error.code) {
            channel.close()
            return .stopping
        } catch let error as Errno where [EAGAIN, EWOULDBLOCK].contains(error.code) {
            throw fail("the sluice serving it \(answered ? "stopped sending its offer" : "did not answer") for "
                       + "\(HandoverServer.helloTimeout / 1_000_000_000) s (stop it, or give this one its own control.socket)")
        } catch let error as HandoverProtocolError {
            if case .unsupportedVersion(let theirs) = error {
                throw fail("the running sluice speaks hand-over protocol \(theirs), this one \(HandoverMessage.protocolVersion): "
                           + "stop it (SIGTERM) and start this one")
            }
            throw fail("\(error)")
        } catch {
            throw fail("\(error)")
        }
    }

    init(path: String, pid: Int32, version: String, sockets: [(HandoverSocket, Int32)], state: [String: [UInt8]],
         channel: HandoverChannel) {
        self.path = path
        predecessorPID = pid
        predecessorVersion = version
        self.sockets = sockets
        self.state = state
        self.channel = channel
    }

    /// Takes the descriptors of `role` (and, when given, that key); the caller owns them.
    public func take(_ role: HandoverSocket.Role, key: String? = nil) -> [(HandoverSocket, Int32)] {
        let taken = sockets.filter { $0.0.role == role && (key == nil || $0.0.key == key) }
        sockets.removeAll { $0.0.role == role && (key == nil || $0.0.key == key) }
        return taken
    }

    /// Closes every descriptor nobody took; returns their descriptions.
    @discardableResult
    public func closeUnused() -> [HandoverSocket] {
        let unused = sockets.map(\.0)
        for (_, descriptor) in sockets { close(descriptor) }
        sockets.removeAll()
        return unused
    }

    /// The keys of the listeners offered.
    public var listenerKeys: Set<String> {
        Set(sockets.filter { $0.0.role == .listener }.map(\.0.key))
    }

    /// Whether the sockets offered live in this process's network namespace (a sluice in
    /// another namespace may serve the same path: the file system is shared, the sockets are
    /// not interchangeable). Checked on every listener, by `SIOCGSKNS`.
    public var isInThisNetworkNamespace: Bool {
        let own = sluice_own_namespace_inode()
        return sockets.filter { $0.0.role == .listener }.allSatisfy { sluice_socket_namespace_inode($0.1) == own }
    }

    /// Gives up the offer: every descriptor and the connection are closed, and the
    /// predecessor goes on serving as before.
    public func abandon() {
        closeUnused()
        channel.close()
    }

    /// Tells the predecessor this sluice serves: it stops accepting and drains.
    public func confirm() throws {
        try channel.send(.ready)
    }

    /// Waits on a thread of its own for the predecessor's end: `done` gets its final state
    /// sections and summary, or nil when the connection ended without them (it died).
    public func awaitFinish(_ done: @escaping @Sendable (_ summary: HandoverSummary?, _ state: [String: [UInt8]]) -> Void) {
        let channel = self.channel
        channel.setTimeout(nanoseconds: 0)
        let thread = Thread {
            var state: [String: [UInt8]] = [:]
            while true {
                guard let (message, _) = try? channel.receive() else { break }
                switch message {
                case .state(let section, let bytes): state[section] = bytes
                case .finished(let summary):
                    channel.close()
                    return done(summary, state)
                default: continue
                }
            }
            channel.close()
            done(nil, state)
        }
        thread.start()
    }
}
