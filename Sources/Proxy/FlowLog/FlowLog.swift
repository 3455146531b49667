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
        out.append(UInt8(ascii: "{"))
        for (index, (key, value)) in fields.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            Self.appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            Self.append(value, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    private static func append(_ value: Value, to out: inout [UInt8]) {
        switch value {
        case .string(let text): appendString(text, to: &out)
        case .integer(let number): out.append(contentsOf: String(number).utf8)
        case .unsigned(let number): out.append(contentsOf: String(number).utf8)
        case .bool(let flag): out.append(contentsOf: (flag ? "true" : "false").utf8)
        case .object(let object): object.serialize(into: &out)
        case .prebuilt(let prebuilt): out.append(contentsOf: prebuilt.text)
        case .array(let values):
            out.append(UInt8(ascii: "["))
            for (index, element) in values.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                append(element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        }
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
        out.append(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { bytes in
            // Runs that need no escaping (nearly all text) are copied whole; eight bytes are
            // checked at a time until one of them may need it.
            var start = 0
            let clean = cleanPrefixLength(bytes)
            if clean == bytes.count {
                out.append(contentsOf: bytes)
                return
            }
            for index in clean..<bytes.count {
                let byte = bytes[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<index]))
                start = index + 1
                switch byte {
                case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
                case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
                case UInt8(ascii: "\n"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case UInt8(ascii: "\r"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
                case UInt8(ascii: "\t"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
                default:
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                            hex[Int(byte >> 4)], hex[Int(byte & 0xf)]])
                }
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<bytes.count]))
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension FlowLog: L7FlowReporter {
    public func report(_ record: JSONObject) { write(record) }
}
