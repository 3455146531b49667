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
        problem(in: name, isPattern: false) == nil
    }

    /// Characters Cilium allows in `matchPattern`: `^([-a-zA-Z0-9_*]+[.]?)+$`.
    static func isValidPattern(_ pattern: String) -> Bool {
        problem(in: pattern, isPattern: true) == nil
    }

    /// The longest `matchName` or `matchPattern` (the reference's `MaxFQDNLength`).
    static let maximumLength = 255

    /// What is wrong with `text` as a `matchName` (or, with `isPattern`, a
    /// `matchPattern`), said so a user can fix it; nil when it is valid. The reference
    /// validates both with `^([-a-zA-Z0-9_]+[.]?)+$` (with `*` for patterns): labels of
    /// at least one character separated by single dots, an optional trailing dot, and
    /// nothing else; so `.` alone, the DNS root, is not accepted.
    static func problem(in text: String, isPattern: Bool) -> String? {
        let what = isPattern ? "pattern" : "name"
        let bytes = Array(text.utf8)
        if bytes.isEmpty { return "the \(what) is empty" }
        if bytes.count > maximumLength { return "the \(what) is \(bytes.count) characters long; the maximum is \(maximumLength)" }
        if bytes == [UInt8(ascii: ".")] {
            return isPattern
                ? "\".\" alone (the DNS root) is not a pattern; use \"*\" to match every name"
                : "\".\" alone (the DNS root) is not a name a rule can match"
        }
        var labelStart = true
        for (offset, byte) in bytes.enumerated() {
            if byte == UInt8(ascii: ".") {
                if labelStart {
                    return offset == 0
                        ? "the \(what) starts with \".\" (an empty first label)"
                        : "the \(what) has an empty label (\"..\" at characters \(offset)-\(offset + 1))"
                }
                labelStart = true
            } else if isLabelByte(byte) || (isPattern && byte == UInt8(ascii: "*")) {
                labelStart = false
            } else if byte == UInt8(ascii: "*") {
                return "\"*\" (character \(offset + 1)) is not allowed in matchName; use matchPattern for wildcards"
            } else {
                let shown = byte < 0x80 && byte >= 0x20 ? "\"\(Character(Unicode.Scalar(byte)))\"" : "byte 0x\(String(byte, radix: 16, uppercase: true))"
                return "\(shown) (character \(offset + 1)) is not allowed; labels are made of [-a-zA-Z0-9_\(isPattern ? "*" : "")]"
            }
        }
        return nil
    }

    /// `[-a-zA-Z0-9_]`: the bytes of a label, and what a `*` may stand for.
    static func isLabelByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    /// How many labels the query or learned name in `bytes` has (0 for the root `.`), or nil
    /// when it is not a name a rule may match: every label must be one or more bytes of
    /// `[-a-zA-Z0-9_]`, with single dots between them and at most one trailing dot. Empty
    /// labels (`cilium..io`, `.io`), other bytes (`a/b.com`, spaces, non-ASCII) and more than
    /// 255 bytes make it nil: such a name matches no rule. Allocates nothing; the one check
    /// of a name's validity that matching relies on.
    static func labelCount(of bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        var labels = 0
        var currentLength = 0
        var count = 0
        for byte in bytes {
            count += 1
            if count > maximumLength + 1 { return nil }
            if byte == UInt8(ascii: ".") {
                if currentLength == 0 { return count == 1 && bytes.count == 1 ? 0 : nil }
                labels += 1
                currentLength = 0
            } else if isLabelByte(byte) {
                currentLength += 1
            } else {
                return nil
            }
        }
        if currentLength > 0 {
            labels += 1
        } else if labels == 0 {
            return nil  // the empty name
        }
        return labels
    }

    /// Calls `body` with each label of a name `labelCount(of:)` accepted (as written, not
    /// lower-cased) while it returns true; returns whether it always did.
    @inline(__always)
    static func allLabels(of bytes: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Bool) -> Bool {
        var start = 0
        for index in 0...bytes.count where index == bytes.count || bytes[index] == UInt8(ascii: ".") {
            if index > start, !body(UnsafeBufferPointer(rebasing: bytes[start..<index])) { return false }
            start = index + 1
        }
        return true
    }

    /// ASCII lower case only: no Unicode folding may turn a byte into a label byte.
    @inline(__always)
    static func lowercased(_ byte: UInt8) -> UInt8 {
        byte | (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? 0x20 : 0)
    }

    /// Whether `label` lower-cased is `lowercase`.
    static func equalLowercased(_ label: UnsafeBufferPointer<UInt8>, _ lowercase: UnsafeBufferPointer<UInt8>) -> Bool {
        guard label.count == lowercase.count else { return false }
        for index in 0..<label.count where lowercased(label[index]) != lowercase[index] { return false }
        return true
    }
}

/// One `matchName` or `matchPattern` of a DNS rule or of `toFQDNs`, with Cilium's semantics:
///
/// - `matchName`: the whole name, case-insensitive, trailing dot implied.
/// - `matchPattern`: `*` stands for any run (possibly empty) of `[-a-zA-Z0-9_]` inside ONE
///   label; a leading `**.` (two or more stars, then a dot) stands for one or more whole
///   labels; a pattern made only of stars (`*`, `**`, `**.`) matches every valid name and
///   the root, as the reference's `(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)`. `*.cilium.io`
///   matches `www.cilium.io` but neither `cilium.io` nor `a.b.cilium.io`; `**.cilium.io`
///   matches both of the latter's subdomains but not `cilium.io`.
///
/// A queried name is matched only when it is a valid name (`DNSName.labelCount(of:)`):
/// labels of `[-a-zA-Z0-9_]+` separated by single dots. `cilium..io`, `.io`, `a/b.com`
/// and non-ASCII names match no pattern and no name (the reference's regexes also refuse
/// the bytes; Sluice also refuses the empty labels its `*` would accept).
///
/// Matching walks labels directly instead of building a regex: no backtracking beyond one label.
public struct DNSMatcher: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable { case name, pattern }
    public let kind: Kind
    /// The normalised text (lower case, no trailing dot).
    public let text: String

    private let matchesEverything: Bool
    private let anySubdomainPrefix: Bool
    /// Labels of the name, or label globs of the pattern (after a `**.` prefix).
    private let labelPatterns: [[UInt8]]

    public init(name: String) {
        self.kind = .name
        self.text = DNSName.normalize(name)
        self.matchesEverything = false
        self.anySubdomainPrefix = false
        self.labelPatterns = text.split(separator: ".", omittingEmptySubsequences: false).map { Array($0.utf8) }
    }

    public init(pattern: String) {
        self.kind = .pattern
        let normalized = DNSName.normalize(pattern)
        self.text = normalized
        // The reference's isDNSWildcard: `^[*]+[.]?$` (the trailing dot is already gone).
        self.matchesEverything = !normalized.isEmpty && normalized.allSatisfy { $0 == "*" }
        var rest = Substring(normalized)
        // The reference's subdomain wildcard: two or more leading stars, then a dot.
        let stars = rest.prefix { $0 == "*" }.count
        if stars >= 2, rest.dropFirst(stars).first == "." {
            self.anySubdomainPrefix = true
            rest = rest.dropFirst(stars + 1)
        } else {
            self.anySubdomainPrefix = false
        }
        self.labelPatterns = rest.split(separator: ".", omittingEmptySubsequences: false).map { Array($0.utf8) }
    }

    /// True when the query or learned name `name` is selected (normalised here). A name
    /// that is not valid (see `DNSName.labelCount(of:)`) is never selected. Allocates nothing:
    /// it walks the name's bytes label by label.
    public func matches(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { matches(utf8: $0) }
    }

    private func matches(utf8 name: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let labelCount = DNSName.labelCount(of: name) else { return false }
        if labelCount == 0 { return matchesEverything }  // the root `.`
        switch kind {
        case .name:
            guard labelCount == labelPatterns.count else { return false }
            var index = 0
            return DNSName.allLabels(of: name) { label in
                defer { index += 1 }
                return labelPatterns[index].withUnsafeBufferPointer { DNSName.equalLowercased(label, $0) }
            }
        case .pattern:
            if matchesEverything { return true }
            // With `**.`: one or more whole labels (already valid), then the rest label by label.
            let skipped: Int
            if anySubdomainPrefix {
                guard labelCount > labelPatterns.count else { return false }
                skipped = labelCount - labelPatterns.count
            } else {
                guard labelCount == labelPatterns.count else { return false }
                skipped = 0
            }
            var index = 0
            return DNSName.allLabels(of: name) { label in
                defer { index += 1 }
                guard index >= skipped else { return true }
                return labelPatterns[index - skipped].withUnsafeBufferPointer { DNSMatcher.glob($0, matches: label) }
            }
        }
    }

    /// Glob over one label: `*` = any run of label bytes. Iterative with one backtrack point.
    static func glob(_ pattern: [UInt8], matches label: [UInt8]) -> Bool {
        pattern.withUnsafeBufferPointer { pattern in label.withUnsafeBufferPointer { glob(pattern, matches: $0) } }
    }

    /// `glob` over a label as it is written (ASCII upper case matches the pattern's lower case).
    static func glob(_ pattern: UnsafeBufferPointer<UInt8>, matches label: UnsafeBufferPointer<UInt8>) -> Bool {
        var patternIndex = 0, labelIndex = 0
        var starIndex = -1, starLabelIndex = 0
        let star = UInt8(ascii: "*")
        while labelIndex < label.count {
            if patternIndex < pattern.count, pattern[patternIndex] == star {
                starIndex = patternIndex
                starLabelIndex = labelIndex
                patternIndex += 1
            } else if patternIndex < pattern.count, pattern[patternIndex] == DNSName.lowercased(label[labelIndex]) {
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
