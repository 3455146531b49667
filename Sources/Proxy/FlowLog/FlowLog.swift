import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where flow records go: one JSON object per line, shared by all workers.
///
/// Each record is written with a single `write` under a lock, so lines from different
/// workers never interleave. A Unix-socket collector that cannot keep up loses records
/// (counted in `droppedRecords`) instead of stalling the proxy.
public final class FlowLog: Sendable {
    private let descriptor: Int32
    private let ownsDescriptor: Bool
    private let lock = Mutex<Void>(())
    private let dropped = Atomic<UInt64>(0)

    /// A log that writes nothing.
    public static func disabled() -> FlowLog { FlowLog(descriptor: -1, owns: false) }

    private init(descriptor: Int32, owns: Bool) {
        self.descriptor = descriptor
        self.ownsDescriptor = owns
    }

    /// Opens the configured sink; throws with the path and the reason when it cannot.
    public static func open(_ configuration: FlowLogConfiguration) throws -> FlowLog {
        switch configuration.sink {
        case .none:
            return .disabled()
        case .stdout:
            return FlowLog(descriptor: STDOUT_FILENO, owns: false)
        case .file(let path):
            let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else { throw Errno.current("open(\(path))") }
            return FlowLog(descriptor: descriptor, owns: true)
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
            return FlowLog(descriptor: descriptor, owns: true)
        }
    }

    deinit {
        if ownsDescriptor { Glibc.close(descriptor) }
    }

    public var isEnabled: Bool { descriptor >= 0 }
    public var droppedRecords: UInt64 { dropped.load(ordering: .relaxed) }

    /// Writes one record as one line.
    public func write(_ record: JSONObject) {
        guard descriptor >= 0 else { return }
        var line = record.serialized()
        line.append("\n")
        lock.withLock { _ in
            var utf8 = Array(line.utf8)
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
    }

    public private(set) var fields: [(String, Value)] = []

    public init() {}

    public subscript(key: String) -> Value? {
        get { fields.first { $0.0 == key }?.1 }
        set {
            if let index = fields.firstIndex(where: { $0.0 == key }) {
                if let newValue { fields[index].1 = newValue } else { fields.remove(at: index) }
            } else if let newValue {
                fields.append((key, newValue))
            }
        }
    }

    public func serialized() -> String {
        var out = "{"
        for (index, (key, value)) in fields.enumerated() {
            if index > 0 { out += "," }
            Self.appendString(key, to: &out)
            out += ":"
            Self.append(value, to: &out)
        }
        out += "}"
        return out
    }

    private static func append(_ value: Value, to out: inout String) {
        switch value {
        case .string(let text): appendString(text, to: &out)
        case .integer(let number): out += String(number)
        case .unsigned(let number): out += String(number)
        case .bool(let flag): out += flag ? "true" : "false"
        case .object(let object): out += object.serialized()
        case .array(let values):
            out += "["
            for (index, element) in values.enumerated() {
                if index > 0 { out += "," }
                append(element, to: &out)
            }
            out += "]"
        }
    }

    /// `text` as a JSON string literal, quotes included.
    public static func quoted(_ text: String) -> String {
        var out = ""
        appendString(text, to: &out)
        return out
    }

    /// RFC 8259 §7: quote, backslash and control characters are escaped.
    static func appendString(_ text: String, to out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

extension FlowLog: L7FlowReporter {
    public func report(_ record: JSONObject) { write(record) }
}
