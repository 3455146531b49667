/// A problem with an input document, located precisely:
/// `FILE:LINE:COL: path.to.field: what was expected`.
public struct PolicyError: Error, Sendable, Hashable, CustomStringConvertible {
    public let file: String
    /// 1-based line, 0 when the whole file is concerned.
    public let line: Int
    /// 1-based column, 0 when the whole file is concerned.
    public let column: Int
    /// Field path such as `spec.ingress[0].toPorts[0].ports[0].port`; empty for the document.
    public let fieldPath: String
    /// What was expected, e.g. `expected a port number 0-65535 or a port name, got "http!"`.
    public let message: String

    public init(file: String, line: Int, column: Int, fieldPath: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.fieldPath = fieldPath
        self.message = message
    }

    public var description: String {
        let place = line > 0 ? "\(file):\(line):\(column)" : file
        return fieldPath.isEmpty ? "\(place): \(message)" : "\(place): \(fieldPath): \(message)"
    }
}
