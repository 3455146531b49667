import Dispatch
import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// Flow records, one JSON object a line, to a file descriptor: buffered, and blocking when
/// the reader is slow (a replay must not lose records, unlike the live proxy's flow log,
/// which drops rather than stall traffic).
///
/// Full buffers are written by a thread of their own, so that the kernel's copying (a
/// replay writes about as many bytes of records as it reads of capture) overlaps the
/// judging; at most `maximumBuffersInFlight` wait for it (64 KiB each), then the judging
/// waits.
public final class RecordWriter: L7FlowReporter {
    private let descriptor: Int32
    private let ownsDescriptor: Bool
    private var buffer: [UInt8] = []
    /// Records waiting to be written (made, when drafts, and serialised on the writing thread).
    private var records: [Pending] = []

    private enum Pending: Sendable {
        case made(JSONObject)
        case draft(L7RecordDraft)
    }
    public private(set) var written = 0
    /// Also hears every record, on the writing thread, in order (set before the first
    /// record; read what it gathered after `flush`).
    var alsoReading: CountingReporter?
    private static let bufferBytes = 1 << 16
    private static let recordsPerBatch = 1024
    static let maximumBuffersInFlight = 8
    private let writes = DispatchQueue(label: "sluice.replay.records")
    private let inFlight = DispatchSemaphore(value: RecordWriter.maximumBuffersInFlight)
    /// The writing thread's output buffer, kept from one batch to the next.
    private let output = OutputBuffers()

    /// Holds the writing thread's buffer between batches (the queue runs one batch at a time,
    /// so one buffer is ever in use).
    private final class OutputBuffers: @unchecked Sendable {
        private var spare: JSONOutputBuffer? = JSONOutputBuffer(capacity: 1 << 20)
        func take() -> JSONOutputBuffer {
            defer { spare = nil }
            return spare ?? JSONOutputBuffer(capacity: 1 << 20)
        }
        func giveBack(_ buffer: JSONOutputBuffer) {
            buffer.removeAll()
            spare = buffer
        }
    }

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
        records.append(.made(record))
        written += 1
        if records.count >= Self.recordsPerBatch { handOver() }
    }

    /// Made into its object on the writing thread, off the judging one.
    public func report(_ draft: L7RecordDraft) {
        records.append(.draft(draft))
        written += 1
        if records.count >= Self.recordsPerBatch { handOver() }
    }

    /// One line of text (without its newline).
    public func line(_ text: String) {
        if !records.isEmpty { handOver() }
        buffer.append(contentsOf: text.utf8)
        buffer.append(UInt8(ascii: "\n"))
        written += 1
        if buffer.count >= Self.bufferBytes { handOver() }
    }

    /// Writes what is buffered and waits for every buffer handed over before (blocking until
    /// written or the reader is gone).
    public func flush() {
        handOver()
        writes.sync {}
    }

    /// Gives the buffered lines, then the records (which it serialises), to the writing
    /// thread, in order (waiting while too many batches are on their way).
    private func handOver() {
        guard !buffer.isEmpty || !records.isEmpty else { return }
        let lines = buffer, batch = records
        buffer = []
        records = []
        records.reserveCapacity(Self.recordsPerBatch)
        inFlight.wait()
        // The batch's records are freed on the writing thread too, when this closure ends:
        // freeing them is a fifth of the work a record costs, and the judging thread is the
        // one that bounds a replay's rate.
        writes.async { [descriptor, inFlight, alsoReading, output] in
            let bytes = output.take()
            lines.withUnsafeBytes { bytes.append($0) }
            for pending in batch {
                let record: JSONObject
                switch pending {
                case .made(let made): record = made
                case .draft(let draft): record = draft.record()
                }
                alsoReading?.report(record)
                record.serialize(into: bytes)
                bytes.append(byte: UInt8(ascii: "\n"))
            }
            Self.write(bytes.bytes, to: descriptor)
            output.giveBack(bytes)
            inFlight.signal()
        }
    }

    private static func write(_ bytes: UnsafeRawBufferPointer, to descriptor: Int32) {
        var offset = 0
        while offset < bytes.count {
            let count = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            offset += count
        }
    }
}

public struct RecordWriterError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "\(path): cannot be written: \(problem)" }
}
