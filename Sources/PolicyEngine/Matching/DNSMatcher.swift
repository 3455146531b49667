/// Helpers for DNS names as policies see them: lower case, without the trailing dot.
public enum DNSName {
    /// `WWW.Example.COM.` -> `www.example.com`; the root `.` stays `.`.
    public static func normalize(_ name: String) -> String {
        var lowered = name.lowercased()
        if lowered.count > 1, lowered.hasSuffix(".") { lowered.removeLast() }
        return lowered
    }

    /// Characters Cilium allows in `matchName`: `^([-a-zA-Z0-9_]+[.]?)+$`.
    static func isValidName(_ name: String) -> Bool {
        isValid(name, allowingStar: false)
    }

    /// Characters Cilium allows in `matchPattern`: `^([-a-zA-Z0-9_*]+[.]?)+$`.
    static func isValidPattern(_ pattern: String) -> Bool {
        isValid(pattern, allowingStar: true)
    }

    private static func isValid(_ text: String, allowingStar: Bool) -> Bool {
        guard !text.isEmpty else { return false }
        var previousWasDot = true  // a leading dot is invalid, as are two dots in a row
        for byte in text.utf8 {
            if byte == UInt8(ascii: ".") {
                if previousWasDot { return false }
                previousWasDot = true
            } else if isLabelByte(byte) || (allowingStar && byte == UInt8(ascii: "*")) {
                previousWasDot = false
            } else {
                return false
            }
        }
        return true
    }

    /// `[-a-zA-Z0-9_]`: what a `*` may stand for.
    static func isLabelByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }
}

/// One `matchName` or `matchPattern` of a DNS rule or of `toFQDNs`, with Cilium's semantics:
///
/// - `matchName`: the whole name, case-insensitive, trailing dot implied.
/// - `matchPattern`: `*` stands for any run (possibly empty) of `[-a-zA-Z0-9_]` inside ONE
///   label; a leading `**.` stands for one or more whole labels; a pattern made only of
///   stars matches every name. `*.cilium.io` matches `www.cilium.io` but neither
///   `cilium.io` nor `a.b.cilium.io`; `**.cilium.io` matches both of the latter's
///   subdomains but not `cilium.io`.
///
/// Matching walks labels directly instead of building a regex: no allocation per
/// label beyond the split, and no backtracking beyond one label.
public struct DNSMatcher: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable { case name, pattern }
    public let kind: Kind
    /// The normalised text (lower case, no trailing dot).
    public let text: String

    private let matchesEverything: Bool
    private let anySubdomainPrefix: Bool
    private let labelPatterns: [[UInt8]]

    public init(name: String) {
        self.kind = .name
        self.text = DNSName.normalize(name)
        self.matchesEverything = false
        self.anySubdomainPrefix = false
        self.labelPatterns = []
    }

    public init(pattern: String) {
        self.kind = .pattern
        let normalized = DNSName.normalize(pattern)
        self.text = normalized
        self.matchesEverything = !normalized.isEmpty && normalized.allSatisfy { $0 == "*" }
        var rest = Substring(normalized)
        if rest.hasPrefix("**.") {
            self.anySubdomainPrefix = true
            rest = rest.dropFirst(3)
        } else {
            self.anySubdomainPrefix = false
        }
        self.labelPatterns = rest.split(separator: ".", omittingEmptySubsequences: false).map { Array($0.utf8) }
    }

    /// True when the query or learned name `name` is selected (name is normalised here).
    public func matches(_ name: String) -> Bool {
        let normalized = DNSName.normalize(name)
        switch kind {
        case .name:
            return normalized == text
        case .pattern:
            if matchesEverything { return true }
            let labels = normalized.split(separator: ".", omittingEmptySubsequences: false)
            if anySubdomainPrefix {
                guard labels.count > labelPatterns.count else { return false }
                let extra = labels.count - labelPatterns.count
                for label in labels[0..<extra] where label.isEmpty || !label.utf8.allSatisfy(DNSName.isLabelByte) {
                    return false
                }
                return zip(labels[extra...], labelPatterns).allSatisfy { DNSMatcher.glob($1, matches: Array($0.utf8)) }
            }
            guard labels.count == labelPatterns.count else { return false }
            return zip(labels, labelPatterns).allSatisfy { DNSMatcher.glob($1, matches: Array($0.utf8)) }
        }
    }

    /// Glob over one label: `*` = any run of label bytes. Iterative with one backtrack point.
    static func glob(_ pattern: [UInt8], matches label: [UInt8]) -> Bool {
        var patternIndex = 0, labelIndex = 0
        var starIndex = -1, starLabelIndex = 0
        let star = UInt8(ascii: "*")
        while labelIndex < label.count {
            if patternIndex < pattern.count, pattern[patternIndex] == star {
                starIndex = patternIndex
                starLabelIndex = labelIndex
                patternIndex += 1
            } else if patternIndex < pattern.count, pattern[patternIndex] == label[labelIndex] {
                patternIndex += 1
                labelIndex += 1
            } else if starIndex >= 0, DNSName.isLabelByte(label[starLabelIndex]) {
                // Let the last star absorb one more byte (only bytes a star may stand for).
                starLabelIndex += 1
                labelIndex = starLabelIndex
                patternIndex = starIndex + 1
            } else {
                return false
            }
        }
        while patternIndex < pattern.count, pattern[patternIndex] == star { patternIndex += 1 }
        return patternIndex == pattern.count
    }

    public var description: String { kind == .name ? "matchName: \(text)" : "matchPattern: \(text)" }
}
