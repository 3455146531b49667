#if canImport(Glibc)
import Glibc
#endif

/// An error returned by a system call: the `errno` value and the name of the call that set it.
///
/// `EAGAIN`/`EWOULDBLOCK` and `EINPROGRESS` are never reported through `Errno`: the layer
/// above turns them into values (`IOResult.wouldBlock`, `ConnectResult.inProgress`).
/// `EINTR` never escapes either: the call is retried.
public struct Errno: Error, Equatable, CustomStringConvertible, Sendable {
    public let code: Int32
    public let syscall: String

    public init(code: Int32, syscall: String) {
        self.code = code
        self.syscall = syscall
    }

    /// The errno of the last failed call on this thread, tagged with that call's name.
    static func current(_ syscall: String) -> Errno { Errno(code: errno, syscall: syscall) }

    public var description: String {
        "\(syscall): \(String(cString: strerror(code))) (errno \(code))"
    }

    public static let resourceTemporarilyUnavailable = EAGAIN
    public static let interrupted = EINTR
    public static let inProgress = EINPROGRESS
    public static let connectionReset = ECONNRESET
    public static let brokenPipe = EPIPE
    public static let connectionRefused = ECONNREFUSED
    public static let badFileDescriptor = EBADF

    /// Whether the call would have blocked on a non-blocking descriptor.
    public var isWouldBlock: Bool { code == EAGAIN || code == EWOULDBLOCK }
    /// Whether the peer tore the connection down (RST, or writing after its close).
    public var isConnectionReset: Bool { code == ECONNRESET || code == EPIPE || code == ECONNABORTED }
    /// Whether this means a bug in Sluice (a descriptor or pointer that was not ours to use).
    public var isProgrammingError: Bool { code == EBADF || code == EFAULT || code == ENOTSOCK }
}

/// The outcome of a non-blocking read or write: bytes moved, or "try again when ready".
/// A read of zero bytes means end of stream.
public enum IOResult: Equatable, Sendable {
    case processed(Int)
    case wouldBlock
}

/// Tier 2 of the syscall layer: run a raw call, retry on `EINTR`, and return a `Result`
/// that names the call on failure.
@inline(__always)
func retryingInterrupts<T: BinaryInteger>(_ name: @autoclosure () -> String, _ call: () -> T) -> Result<T, Errno> {
    while true {
        let value = call()
        if value >= 0 { return .success(value) }
        let code = errno
        if code == EINTR { continue }
        return .failure(Errno(code: code, syscall: name()))
    }
}

/// Tier 2 for calls whose `EAGAIN` is a value, not an error.
@inline(__always)
func retryingInterruptsNonBlocking(_ name: @autoclosure () -> String, _ call: () -> Int) -> Result<IOResult, Errno> {
    while true {
        let value = call()
        if value >= 0 { return .success(.processed(value)) }
        let code = errno
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return .success(.wouldBlock) }
        return .failure(Errno(code: code, syscall: name()))
    }
}
