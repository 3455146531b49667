import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// Flow records, one JSON object a line, to a file descriptor: buffered, and blocking when
/// the reader is slow (a replay must not lose records, unlike the live proxy's flow log,
/// which drops rather than stall traffic).
public final class RecordWriter: L7FlowReporter {
    private let descriptor: Int32
    private let ownsDescriptor: Bool
    private var buffer: [UInt8] = []
    public private(set) var written = 0

    /// Standard output.
    public init() {
        descriptor = STDOUT_FILENO
        ownsDescriptor = false
    }

    /// A new file at `path` (replaced if it exists); nil with the error text when it cannot be opened.
    public init(path: String) throws(RecordWriterError) {
        let opened = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard opened >= 0 else { throw RecordWriterError(path: path, problem: String(cString: strerror(errno))) }
        descriptor = opened
        ownsDescriptor = true
    }

    deinit {
        flush()
        if ownsDescriptor { close(descriptor) }
    }

    public func report(_ record: JSONObject) {
        record.serialize(into: &buffer)
        buffer.append(UInt8(ascii: "\n"))
        written += 1
        if buffer.count >= 1 << 16 { flush() }
    }

    /// One line of text (without its newline).
    public func line(_ text: String) {
        buffer.append(contentsOf: text.utf8)
        buffer.append(UInt8(ascii: "\n"))
        written += 1
        if buffer.count >= 1 << 16 { flush() }
    }

    /// Writes what is buffered (blocking until written or the reader is gone).
    public func flush() {
        var offset = 0
        while offset < buffer.count {
            let count = buffer.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            offset += count
        }
        buffer.removeAll(keepingCapacity: true)
    }
}

public struct RecordWriterError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "\(path): cannot be written: \(problem)" }
}
