#if canImport(Glibc)
import Glibc
#endif

/// A failure of the datapath: what was being done, on what, and the kernel's reason.
public struct DatapathError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var code: Int32
    public var hint: String?

    public init(_ operation: String, code: Int32, hint: String? = nil) {
        self.operation = operation
        self.code = code < 0 ? -code : code
        self.hint = hint
    }

    /// From a libbpf return value (a negative errno) or, when it is -1, from `errno`.
    static func libbpf(_ operation: String, _ result: Int32, hint: String? = nil) -> DatapathError {
        DatapathError(operation, code: result == -1 ? errno : result, hint: hint)
    }

    public var description: String {
        var text = "\(operation): \(String(cString: strerror(code))) (errno \(code))"
        if let hint { text += "; \(hint)" }
        return text
    }
}
