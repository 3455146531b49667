import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where flow records go: one JSON object per line, shared by all workers.
///
/// Each record is written with a single `write` under a lock, so lines from different
/// workers never interleave. A Unix-socket collector that cannot keep up loses records
/// (counted in `droppedRecords`) instead of stalling the proxy.
///
/// With a `tap`, every record is also counted for metrics and kept in the ring `sluice
/// observe` reads; with the sink `none`, records are made for the tap alone while it is
/// active (`FlowTap.activate`).
public final class FlowLog: Sendable {
    private let descriptor: Int32
    private let ownsDescriptor: Bool
    /// Where every record is counted and kept for observers (nil: nowhere).
    public let tap: FlowTap?
    private let lock = Mutex<Void>(())
    private let dropped = Atomic<UInt64>(0)

    /// A log that writes nothing.
    public static func disabled() -> FlowLog { FlowLog(descriptor: -1, owns: false, tap: nil) }

    private init(descriptor: Int32, owns: Bool, tap: FlowTap?) {
        self.descriptor = descriptor
        self.ownsDescriptor = owns
        self.tap = tap
    }

    /// Opens the configured sink; throws with the path and the reason when it cannot.
    /// Records also go to `tap` when given.
    public static func open(_ configuration: FlowLogConfiguration, tap: FlowTap? = nil) throws -> FlowLog {
        switch configuration.sink {
        case .none:
            return FlowLog(descriptor: -1, owns: false, tap: tap)
        case .stdout:
            return FlowLog(descriptor: STDOUT_FILENO, owns: false, tap: tap)
        case .file(let path):
            let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else { throw Errno.current("open(\(path))") }
            return FlowLog(descriptor: descriptor, owns: true, tap: tap)
        case .unixSocket(let path):
            let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else { throw Errno.current("socket(AF_UNIX)") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                Glibc.close(descriptor)
                throw Errno(code: ENAMETOOLONG, syscall: "connect(\(path))")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard result == 0 else {
                let error = Errno.current("connect(\(path))")
                Glibc.close(descriptor)
                throw error
            }
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            return FlowLog(descriptor: descriptor, owns: true, tap: tap)
        }
    }

    deinit {
        if ownsDescriptor { Glibc.close(descriptor) }
    }

    /// Whether records are wanted at all (a sink or an active tap); callers make none otherwise.
    public var isEnabled: Bool { descriptor >= 0 || tap?.isActive == true }
    public var droppedRecords: UInt64 { dropped.load(ordering: .relaxed) }

    /// Writes one record as one line.
    public func write(_ record: JSONObject) {
        if let tap, tap.isActive { tap.record(record) }
        guard descriptor >= 0 else { return }
        var utf8: [UInt8] = []
        utf8.reserveCapacity(768)
        record.serialize(into: &utf8)
        utf8.append(UInt8(ascii: "\n"))
        lock.withLock { _ in
            utf8.withUnsafeMutableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let written = Glibc.write(descriptor, raw.baseAddress! + offset, raw.count - offset)
                    if written > 0 {
                        offset += written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else if written < 0 && errno == EAGAIN && offset > 0 {
                        // Half a line is out: finish it (briefly) so the stream stays line-framed.
                        var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                        if poll(&poller, 1, 100) <= 0 { dropped.add(1, ordering: .relaxed); return }
                    } else {
                        // A collector that cannot keep up (EAGAIN) or is gone (EPIPE): drop this record.
                        dropped.add(1, ordering: .relaxed)
                        return
                    }
                }
            }
        }
    }
}

/// An object and its JSON text (`JSONObject.Value.prebuilt`).
public final class PrebuiltJSON: Sendable {
    public let object: JSONObject
    public let text: [UInt8]

    public init(_ object: JSONObject) {
        self.object = object
        var text: [UInt8] = []
        object.serialize(into: &text)
        self.text = text
    }
}

/// An ordered JSON object built by hand: flow records have a fixed shape and are written
/// on the hot path, so they skip Foundation's encoders.
public struct JSONObject: Sendable {
    public enum Value: Sendable {
        case string(String)
        case integer(Int64)
        case unsigned(UInt64)
        case bool(Bool)
        case object(JSONObject)
        case array([Value])
        /// An object with its JSON text made once, for parts that many records share (a
        /// connection's addresses, its endpoints): written by copying the text, read through
        /// the subscript as `.object`.
        case prebuilt(PrebuiltJSON)
    }

    public private(set) var fields: [(String, Value)] = []

    public init() {}

    /// An empty object with room for `capacity` fields (a record's shape is known: one
    /// allocation instead of one per doubling).
    public init(capacity: Int) {
        fields.reserveCapacity(capacity)
    }

    public subscript(key: String) -> Value? {
        get {
            guard let value = fields.first(where: { $0.0 == key })?.1 else { return nil }
            if case .prebuilt(let prebuilt) = value { return .object(prebuilt.object) }
            return value
        }
        set {
            if let index = fields.firstIndex(where: { $0.0 == key }) {
                if let newValue { fields[index].1 = newValue } else { fields.remove(at: index) }
            } else if let newValue {
                fields.append((key, newValue))
            }
        }
    }

    /// Adds a field the object does not have yet, without looking for it first (building a
    /// record field by field; the subscript replaces an existing key instead).
    public mutating func add(_ key: String, _ value: Value) {
        fields.append((key, value))
    }

    public func serialized() -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(768)
        serialize(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the object's JSON text (UTF-8) to `out`: nested objects into the same buffer,
    /// strings copied whole unless they need escaping.
    public func serialize(into out: inout [UInt8]) {
        serialize(to: &out)
    }

    /// The same, into a buffer made for writing many records (`JSONOutputBuffer`).
    public func serialize(into out: JSONOutputBuffer) {
        var sink = out
        serialize(to: &sink)
    }

    private func serialize<Sink: JSONSink>(to out: inout Sink) {
        out.appendByte(UInt8(ascii: "{"))
        var first = true
        for (key, value) in fields {
            if !first { out.appendByte(UInt8(ascii: ",")) }
            first = false
            Self.appendEscaped(key, to: &out)
            out.appendByte(UInt8(ascii: ":"))
            Self.append(value, to: &out)
        }
        out.appendByte(UInt8(ascii: "}"))
    }

    private static func append<Sink: JSONSink>(_ value: Value, to out: inout Sink) {
        switch value {
        case .string(let text): appendEscaped(text, to: &out)
        case .integer(let number):
            if number < 0 { out.appendByte(UInt8(ascii: "-")) }
            appendDigits(number.magnitude, to: &out)
        case .unsigned(let number): appendDigits(number, to: &out)
        case .bool(let flag): appendStatic(flag ? "true" : "false", to: &out)
        case .object(let object): object.serialize(to: &out)
        case .prebuilt(let prebuilt): prebuilt.text.withUnsafeBufferPointer { out.appendBytes($0) }
        case .array(let values):
            out.appendByte(UInt8(ascii: "["))
            for (index, element) in values.enumerated() {
                if index > 0 { out.appendByte(UInt8(ascii: ",")) }
                append(element, to: &out)
            }
            out.appendByte(UInt8(ascii: "]"))
        }
    }

    /// A number's decimal digits, written from a small stack buffer.
    private static func appendDigits<Sink: JSONSink>(_ number: UInt64, to out: inout Sink) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var value = number, start = 20
            repeat {
                start -= 1
                digits[start] = UInt8(truncatingIfNeeded: 48 + value % 10)
                value /= 10
            } while value > 0
            out.appendBytes(UnsafeBufferPointer(rebasing: digits[start..<20]))
        }
    }

    private static func appendStatic<Sink: JSONSink>(_ text: StaticString, to out: inout Sink) {
        out.appendBytes(UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// `self` with its JSON text made now, to be shared by the records that carry it.
    public var prebuilt: Value { .prebuilt(PrebuiltJSON(self)) }

    /// How many bytes at the start of `bytes` need no escaping (a quote, a backslash or a
    /// control character does), found a word at a time: a word with any byte below 0x20 or
    /// equal to either character is looked at no further (the tests may report a byte after
    /// a real one falsely; the byte-wise loop of the caller looks at it again).
    @inline(__always)
    private static func cleanPrefixLength(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        let count = bytes.count
        let raw = UnsafeRawPointer(base)
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        var index = 0
        while index + 8 <= count {
            let word = raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            let quotes = word ^ (ones &* 0x22), backslashes = word ^ (ones &* 0x5C)
            let below20 = (word &- ones &* 0x20) & ~word
            let zeroQuote = (quotes &- ones) & ~quotes
            let zeroBackslash = (backslashes &- ones) & ~backslashes
            if (below20 | zeroQuote | zeroBackslash) & highs != 0 { return index }
            index += 8
        }
        while index < count {
            let byte = base[index]
            if byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return index }
            index += 1
        }
        return index
    }

    /// `text` as a JSON string literal, quotes included.
    public static func quoted(_ text: String) -> String {
        var out: [UInt8] = []
        appendString(text, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 8259 §7: quote, backslash and control characters are escaped; everything else,
    /// UTF-8 included, is copied as it is.
    static func appendString(_ text: String, to out: inout [UInt8]) {
        appendEscaped(text, to: &out)
    }

    private static func appendEscaped<Sink: JSONSink>(_ text: String, to out: inout Sink) {
        var text = text
        text.withUTF8 { bytes in
            // Runs that need no escaping (nearly all text) are copied whole; eight bytes are
            // checked at a time until one of them may need it.
            let clean = cleanPrefixLength(bytes)
            if clean == bytes.count {
                out.appendQuoted(bytes)
                return
            }
            out.appendByte(UInt8(ascii: "\""))
            var start = 0
            for index in clean..<bytes.count {
                let byte = bytes[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                out.appendBytes(UnsafeBufferPointer(rebasing: bytes[start..<index]))
                start = index + 1
                switch byte {
                case UInt8(ascii: "\""): appendStatic(#"\""#, to: &out)
                case UInt8(ascii: "\\"): appendStatic(#"\\"#, to: &out)
                case UInt8(ascii: "\n"): appendStatic(#"\n"#, to: &out)
                case UInt8(ascii: "\r"): appendStatic(#"\r"#, to: &out)
                case UInt8(ascii: "\t"): appendStatic(#"\t"#, to: &out)
                default:
                    let hex: StaticString = "0123456789abcdef"
                    appendStatic(#"\u00"#, to: &out)
                    out.appendByte(hex.utf8Start[Int(byte >> 4)])
                    out.appendByte(hex.utf8Start[Int(byte & 0xf)])
                }
            }
            out.appendBytes(UnsafeBufferPointer(rebasing: bytes[start..<bytes.count]))
            out.appendByte(UInt8(ascii: "\""))
        }
    }
}

/// Where JSON text is written: an array, or a `JSONOutputBuffer`.
protocol JSONSink {
    mutating func appendByte(_ byte: UInt8)
    mutating func appendBytes(_ bytes: UnsafeBufferPointer<UInt8>)
    /// `"bytes"`: a string that needs no escaping, with its quotes.
    mutating func appendQuoted(_ bytes: UnsafeBufferPointer<UInt8>)
}

extension Array: JSONSink where Element == UInt8 {
    mutating func appendByte(_ byte: UInt8) { append(byte) }
    mutating func appendBytes(_ bytes: UnsafeBufferPointer<UInt8>) { append(contentsOf: bytes) }
    mutating func appendQuoted(_ bytes: UnsafeBufferPointer<UInt8>) {
        append(UInt8(ascii: "\""))
        append(contentsOf: bytes)
        append(UInt8(ascii: "\""))
    }
}

/// A growing byte buffer for writing many JSON records: appends are a capacity check and a
/// copy, without an array's uniqueness and growth checks on every small piece (a record is
/// some sixty pieces). Not for sharing between threads.
public final class JSONOutputBuffer: JSONSink {
    public private(set) var count = 0
    private var capacity: Int
    private var storage: UnsafeMutablePointer<UInt8>

    public init(capacity: Int = 1 << 16) {
        self.capacity = max(capacity, 64)
        storage = .allocate(capacity: self.capacity)
    }

    deinit { storage.deallocate() }

    /// The bytes written so far (valid until the next append or `removeAll`).
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage, count: count) }

    public func removeAll() { count = 0 }

    /// Appends raw bytes (a line of text, a newline).
    public func append(_ bytes: UnsafeRawBufferPointer) {
        appendBytes(bytes.bindMemory(to: UInt8.self))
    }

    /// Appends one byte (a newline between records).
    public func append(byte: UInt8) { appendByte(byte) }

    @inline(__always) private func reserve(_ more: Int) {
        guard count + more > capacity else { return }
        var grown = capacity * 2
        while grown < count + more { grown *= 2 }
        let moved = UnsafeMutablePointer<UInt8>.allocate(capacity: grown)
        moved.update(from: storage, count: count)
        storage.deallocate()
        storage = moved
        capacity = grown
    }

    func appendByte(_ byte: UInt8) {
        reserve(1)
        storage[count] = byte
        count += 1
    }

    func appendBytes(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        reserve(bytes.count)
        (storage + count).update(from: base, count: bytes.count)
        count += bytes.count
    }

    func appendQuoted(_ bytes: UnsafeBufferPointer<UInt8>) {
        reserve(bytes.count + 2)
        storage[count] = UInt8(ascii: "\"")
        if let base = bytes.baseAddress { (storage + count + 1).update(from: base, count: bytes.count) }
        storage[count + 1 + bytes.count] = UInt8(ascii: "\"")
        count += bytes.count + 2
    }
}

extension FlowLog: L7FlowReporter {
    public func report(_ record: JSONObject) { write(record) }
}
