/// What a request-target becomes under RFC 3986 path normalisation, the way the reference
/// proxy (Envoy with `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action:
/// UNESCAPE_AND_REDIRECT`, Cilium's default) judges and forwards a path. Without it
/// `/public/%2e%2e/admin` is matched by a rule on `/public/.*` and served as `/admin`.
///
/// The path part of an origin-form or absolute-form target is transformed in this order:
/// 1. percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2: "URIs should be
///    normalized by decoding any percent-encoded octet that corresponds to an unreserved
///    character"), before dot segments are looked for, so `%2e%2e` is `..`; the hex digits
///    of every other triplet are upper-cased (§6.2.2.1); `%2F` and `%5C` (escaped slashes,
///    any case) are unescaped to `/` and mark the result as a redirect;
/// 2. dot segments are removed (§5.2.4 `remove_dot_segments`; §6.2.2.3: "should be normalized
///    by removing dot-segments");
/// 3. runs of `/` are merged into one (Envoy's `merge_slashes`);
/// 4. an empty absolute-form path becomes `/` (RFC 9110 §4.2.3: an empty path "is
///    equivalent to an absolute path of '/'").
///
/// The query (from the first `?`) is never touched: it is not part of the path (Envoy and
/// Cilium leave it as received). Asterisk-form (`*`) and authority-form (CONNECT) targets
/// have no path and are `unchanged`.
///
/// Escaped slashes: a server may or may not treat `%2F` as a separator, so no judgement made
/// on one reading is safe for the other; like the reference, the client is redirected to the
/// unescaped, normalised path and its next request is judged on that. `%5C` (backslash)
/// becomes `/`, as the reference's URL canonicaliser reads a backslash, and because a raw
/// backslash is not a valid target byte (RFC 3986 §2), so the redirect stays a valid target.
///
/// The result is a fixed point: normalising a `normalized` target again gives `unchanged`,
/// so what the server receives is exactly the path that was judged.
public enum HTTP1TargetNormalization: Sendable, Equatable {
    /// The target is already normal: judge and forward it as received. The common case,
    /// decided with one scan of the path and no allocation.
    case unchanged
    /// Judge `path` (the normalised path with the query as received, what a policy's `path`
    /// matches) and forward `target` (the whole new request-target, in the form received:
    /// for absolute-form, the scheme and authority as received followed by `path`).
    case normalized(target: String, path: String)
    /// The path holds escaped slashes: answer `307 Temporary Redirect` with this `Location`
    /// (the unescaped, normalised target, in the form received) instead of forwarding.
    case redirect(location: String)
    /// The path holds malformed percent-encoding (`%zz`, a `%` without two hex digits
    /// after it): answer `400 Bad Request` (RFC 3986 §2.1 pct-encoded = "%" HEXDIG HEXDIG).
    case invalid(reason: String)

    /// Normalises the request-target of `head` (ranges index `bytes`, as from
    /// `.verdictNeeded`); asterisk-form and authority-form targets are `unchanged`.
    public static func normalize(_ head: HTTP1Head, in bytes: UnsafeRawBufferPointer) -> HTTP1TargetNormalization {
        guard head.target.upperBound <= bytes.count else { return .invalid(reason: "the head's target is outside the bytes given") }
        switch head.targetForm {
        case .origin, .absolute:
            return normalize(target: UnsafeRawBufferPointer(rebasing: bytes[head.target]))
        case .asterisk, .authority:
            return .unchanged
        }
    }

    /// Convenience for tests and tools.
    public static func normalize(target: [UInt8]) -> HTTP1TargetNormalization {
        target.withUnsafeBytes { normalize(target: $0) }
    }

    /// Normalises one request-target: origin-form (starts with `/`) or absolute-form
    /// (`scheme://authority[path][?query]`); anything else is `unchanged`.
    public static func normalize(target: UnsafeRawBufferPointer) -> HTTP1TargetNormalization {
        guard let first = target.first else { return .unchanged }
        let pathStart: Int
        if first == slash {
            pathStart = 0
        } else if let start = absoluteFormPathStart(target) {
            pathStart = start
        } else {
            return .unchanged
        }
        // The fast path: one scan, stopping at the query. A target with no "%", no "//" and
        // no "/." has nothing to decode, no dot segment and no repeated slash.
        let count = target.count
        var index = pathStart
        var previous: UInt8 = 0
        var needsWork = pathStart == count || target[pathStart] == questionMark
        while !needsWork && index < count {
            let byte = target[index]
            if byte == questionMark { break }
            if byte == percent || (previous == slash && (byte == slash || byte == dot)) { needsWork = true }
            previous = byte
            index += 1
        }
        guard needsWork else { return .unchanged }
        return normalizeSlowly(target, pathStart: pathStart)
    }

    // MARK: - The slow path

    private static let slash = UInt8(ascii: "/")
    private static let dot = UInt8(ascii: ".")
    private static let percent = UInt8(ascii: "%")
    private static let questionMark = UInt8(ascii: "?")

    /// Where the path of an absolute-form target starts (RFC 3986 §3: scheme ":" "//"
    /// authority path-abempty, the authority ending at the first "/", "?" or the end), or
    /// nil when `target` is not absolute-form.
    private static func absoluteFormPathStart(_ target: UnsafeRawBufferPointer) -> Int? {
        guard HTTP1Grammar.isAlpha(target[0]) else { return nil }
        var index = 1
        while index < target.count {
            let byte = target[index]
            guard HTTP1Grammar.isAlpha(byte) || HTTP1Grammar.isDigit(byte) || byte == UInt8(ascii: "+")
                    || byte == UInt8(ascii: "-") || byte == dot else { break }
            index += 1
        }
        guard target.count - index >= 3, target[index] == HTTP1Grammar.colon,
              target[index + 1] == slash, target[index + 2] == slash else { return nil }
        index += 3
        while index < target.count && target[index] != slash && target[index] != questionMark { index += 1 }
        return index
    }

    private static func normalizeSlowly(_ target: UnsafeRawBufferPointer, pathStart: Int) -> HTTP1TargetNormalization {
        let count = target.count
        var pathEnd = pathStart
        while pathEnd < count && target[pathEnd] != questionMark { pathEnd += 1 }

        // 1. Percent-decoding of unreserved characters; escaped slashes noted.
        var decoded: [UInt8] = []
        decoded.reserveCapacity(pathEnd - pathStart + 1)
        var hasEscapedSlash = false
        var index = pathStart
        while index < pathEnd {
            let byte = target[index]
            guard byte == percent else {
                decoded.append(byte)
                index += 1
                continue
            }
            guard index + 2 < pathEnd,
                  let high = HTTP1Grammar.hexValue(target[index + 1]),
                  let low = HTTP1Grammar.hexValue(target[index + 2]) else {
                return .invalid(reason: "malformed percent-encoding at byte \(index) of the request-target")
            }
            let value = UInt8(high << 4 | low)
            if HTTP1Grammar.isUnreserved(value) {
                decoded.append(value)
            } else if value == slash || value == UInt8(ascii: "\\") {
                hasEscapedSlash = true
                decoded.append(slash)
            } else {
                decoded.append(percent)
                decoded.append(uppercaseHexDigit(high))
                decoded.append(uppercaseHexDigit(low))
            }
            index += 3
        }
        // 4. RFC 9110 §4.2.3: an absolute-form target with an empty path means "/".
        if decoded.isEmpty || decoded[0] != slash { decoded.insert(slash, at: 0) }

        // 2 and 3. Dot segments, then repeated slashes (the reference's order).
        let path = mergingSlashes(removingDotSegments(decoded))

        var newTarget: [UInt8] = []
        newTarget.reserveCapacity(pathStart + path.count + (count - pathEnd))
        newTarget.append(contentsOf: UnsafeRawBufferPointer(rebasing: target[0..<pathStart]))
        newTarget.append(contentsOf: path)
        newTarget.append(contentsOf: UnsafeRawBufferPointer(rebasing: target[pathEnd..<count]))
        if hasEscapedSlash {
            return .redirect(location: String(decoding: newTarget, as: UTF8.self))
        }
        if newTarget.elementsEqual(target) { return .unchanged }
        var pathAndQuery = path
        pathAndQuery.append(contentsOf: UnsafeRawBufferPointer(rebasing: target[pathEnd..<count]))
        return .normalized(target: String(decoding: newTarget, as: UTF8.self),
                           path: String(decoding: pathAndQuery, as: UTF8.self))
    }

    private static func uppercaseHexDigit(_ value: Int) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + UInt8(value) : UInt8(ascii: "A") + UInt8(value - 10)
    }

    /// RFC 3986 §5.2.4 for a path that starts with "/": each segment is appended to the
    /// output, except "." (dropped) and ".." (which removes the last output segment "and
    /// its preceding '/' (if any)"); a "." or ".." that ends the path leaves a trailing "/".
    static func removingDotSegments(_ input: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(input.count)
        var index = 0
        while index < input.count {
            // Here input[index] is "/": the path is absolute, and every segment ends at one.
            let segmentStart = index + 1
            var segmentEnd = segmentStart
            while segmentEnd < input.count && input[segmentEnd] != slash { segmentEnd += 1 }
            let length = segmentEnd - segmentStart
            let isLast = segmentEnd == input.count
            if length == 1 && input[segmentStart] == dot {
                // 2.B: "/./" or "/." at the end becomes "/".
                if isLast { output.append(slash) }
            } else if length == 2 && input[segmentStart] == dot && input[segmentStart + 1] == dot {
                // 2.C: "/../" or "/.." at the end: "/", and the last output segment goes.
                if let lastSlash = output.lastIndex(of: slash) { output.removeSubrange(lastSlash...) }
                if isLast { output.append(slash) }
            } else {
                // 2.E: the segment with its leading "/".
                output.append(contentsOf: input[index..<segmentEnd])
            }
            index = segmentEnd
        }
        return output.isEmpty ? [slash] : output
    }

    /// Runs of "/" become one "/" (Envoy's `merge_slashes`).
    static func mergingSlashes(_ input: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(input.count)
        for byte in input where !(byte == slash && output.last == slash) {
            output.append(byte)
        }
        return output
    }
}
