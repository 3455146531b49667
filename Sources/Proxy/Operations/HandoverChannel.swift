import CSluiceShims
#if canImport(Glibc)
import Glibc
#endif

/// One end of a hand-over conversation: a connected Unix stream socket, blocking, that
/// sends and receives `HandoverMessage`s with their descriptors (`SCM_RIGHTS`).
///
/// Descriptors received are queued in arrival order and given to the `socket` messages in
/// that order (each is attached to its message's first byte, and the kernel never merges a
/// read across such a boundary). The channel owns what it received until `receive` hands it
/// out; `close` closes the connection and any descriptor still queued.
public final class HandoverChannel: @unchecked Sendable {
    public private(set) var descriptor: Int32
    private var input: [UInt8] = []
    private var descriptors: [Int32] = []

    public init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    deinit { close() }

    /// Connects to the hand-over socket at `path`. Throws `Errno` (ENOENT: no file;
    /// ECONNREFUSED: a file nobody listens on).
    public static func connect(to path: String) throws -> HandoverChannel {
        HandoverChannel(descriptor: try OperationsServer.connectUnix(path))
    }

    /// Bounds every later `receive` (and send) to `nanoseconds`; 0 waits forever.
    public func setTimeout(nanoseconds: UInt64) {
        var value = timeval(tv_sec: Int(nanoseconds / 1_000_000_000), tv_usec: Int(nanoseconds % 1_000_000_000 / 1_000))
        _ = setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends `message`; a `socket` message carries `attaching` (which stays open here).
    public func send(_ message: HandoverMessage, attaching attached: Int32? = nil, version: UInt16 = HandoverMessage.protocolVersion) throws {
        precondition(message.carriesDescriptor == (attached != nil), "a socket message carries exactly one descriptor")
        let frame = message.encoded(version: version)
        var offset = 0
        while offset < frame.count {
            let sent = frame.withUnsafeBytes { raw in
                sluice_send_with_descriptor(descriptor, raw.baseAddress! + offset, raw.count - offset,
                                            offset == 0 ? (attached ?? -1) : -1)
            }
            guard sent > 0 else { throw Errno.current("sendmsg(hand-over)") }
            offset += sent
        }
    }

    /// The next message, with its descriptor for a `socket` message (the caller owns it);
    /// nil at the end of the stream. Throws `HandoverProtocolError` for bytes that are not
    /// this protocol, `Errno` for a failed or timed-out read (EAGAIN).
    public func receive() throws -> (HandoverMessage, Int32?)? {
        while true {
            if !input.isEmpty, case .message(let message, let consumed) = try HandoverMessage.decode(input[...]) {
                input.removeFirst(consumed)
                guard message.carriesDescriptor else { return (message, nil) }
                guard !descriptors.isEmpty else {
                    throw HandoverProtocolError.malformed(kind: "socket", detail: "no descriptor attached")
                }
                return (message, descriptors.removeFirst())
            }
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            var received = [Int32](repeating: -1, count: 16)
            var count: Int32 = 0
            var truncated: Int32 = 0
            let length = buffer.withUnsafeMutableBytes { raw in
                received.withUnsafeMutableBufferPointer { fds in
                    sluice_receive_with_descriptors(descriptor, raw.baseAddress, raw.count, fds.baseAddress, 16, &count, &truncated)
                }
            }
            descriptors += received.prefix(Int(count))
            if length < 0 { throw Errno.current("recvmsg(hand-over)") }
            if length == 0 {
                if input.isEmpty { return nil }
                throw HandoverProtocolError.malformed(kind: "frame", detail: "the stream ended inside a message")
            }
            if truncated != 0 {
                throw HandoverProtocolError.malformed(kind: "frame", detail: "more descriptors attached than expected")
            }
            input += buffer.prefix(length)
        }
    }

    /// Closes the connection and every descriptor received and not handed out.
    public func close() {
        for queued in descriptors { Glibc.close(queued) }
        descriptors.removeAll()
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }
}
