import CSluiceShims
#if canImport(Glibc)
import Glibc
#endif

/// What epoll reported for one descriptor.
public struct Readiness: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let readable = Readiness(rawValue: EPOLLIN.rawValue)
    public static let writable = Readiness(rawValue: EPOLLOUT.rawValue)
    /// The peer sent FIN (EPOLLRDHUP): reading will reach end of stream.
    public static let peerClosed = Readiness(rawValue: EPOLLRDHUP.rawValue)
    public static let hangup = Readiness(rawValue: EPOLLHUP.rawValue)
    public static let error = Readiness(rawValue: EPOLLERR.rawValue)

    /// Whether a read should be attempted: data, FIN, hangup and errors all surface through read.
    public var wantsRead: Bool { !isDisjoint(with: [.readable, .peerClosed, .hangup, .error]) }
    public var wantsWrite: Bool { !isDisjoint(with: [.writable, .hangup, .error]) }
}

/// A thin owner of an epoll instance.
struct Epoll {
    let descriptor: Int32

    init() throws {
        descriptor = try retryingInterrupts("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }.get()
    }

    func add(_ descriptor: Int32, events: UInt32, token: UInt64) throws {
        _ = try retryingInterrupts("epoll_ctl(ADD)") {
            sluice_epoll_ctl(self.descriptor, EPOLL_CTL_ADD, descriptor, events, token)
        }.get()
    }

    func modify(_ descriptor: Int32, events: UInt32, token: UInt64) throws {
        _ = try retryingInterrupts("epoll_ctl(MOD)") {
            sluice_epoll_ctl(self.descriptor, EPOLL_CTL_MOD, descriptor, events, token)
        }.get()
    }

    func remove(_ descriptor: Int32) {
        _ = sluice_epoll_ctl(self.descriptor, EPOLL_CTL_DEL, descriptor, 0, 0)
    }

    func wait(tokens: UnsafeMutablePointer<UInt64>, events: UnsafeMutablePointer<UInt32>,
              capacity: Int32, timeoutMilliseconds: Int32) throws -> Int {
        let count = sluice_epoll_wait(descriptor, tokens, events, capacity, timeoutMilliseconds)
        if count < 0 {
            if errno == EINTR { return 0 }
            throw Errno.current("epoll_wait")
        }
        return Int(count)
    }

    func close() { _ = Glibc.close(descriptor) }
}
