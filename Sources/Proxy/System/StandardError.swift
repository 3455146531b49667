#if canImport(Glibc)
import Glibc
#endif

/// Messages for the operator on standard error, each line written in one call so lines
/// from several threads never interleave.
public enum StandardError {
    /// Writes `text` as is.
    public static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    /// Writes `sluice: message` and a line feed.
    public static func line(_ message: String) {
        write("sluice: \(message)\n")
    }
}
