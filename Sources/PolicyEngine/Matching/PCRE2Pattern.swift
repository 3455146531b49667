#if canImport(Glibc)
import Glibc
#endif
import CPCRE2

/// A regular expression compiled once with PCRE2 (and its JIT when available),
/// matched against the whole subject: `pattern` must cover the value from its
/// first to its last byte, as Cilium's `method`, `path` and `host` fields do
/// ("matched against the whole value: anchored, a partial match does not count").
///
/// The type owns the `pcre2_code` and releases it on deinit. Matching is thread
/// safe: the compiled code and the match context are read-only after `init`, and
/// every call allocates its own small match data block.
///
/// There is no size cliff: PCRE2 accepts patterns far longer than Envoy's RE2
/// program-size cap (a 5,000-character alternation compiles and matches). A
/// pattern that PCRE2 itself rejects is reported as a validation error at load
/// time, never as a silent deny of the whole policy.
public final class PCRE2Pattern: @unchecked Sendable, CustomStringConvertible {
    /// The source text, as written in the policy.
    public let source: String
    /// Whether the JIT compiled this pattern (false means the interpreter runs it).
    public let isJITCompiled: Bool

    private let code: OpaquePointer
    /// For a pattern that is an ASCII literal followed by `.*` (`/api/v1/products.*`, the
    /// commonest HTTP path rule), the literal: a subject of printable ASCII is decided by
    /// comparing bytes, without running PCRE2 (see `matches(bytes:)`).
    private let literalThenAnything: [UInt8]?
    /// The limits every match runs under: one context for all patterns (saves ~100
    /// bytes per pattern; a context is only read by `pcre2_match`).
    private var matchContext: OpaquePointer? { SharedMatchContext.shared.context }

    /// Backtracking budget per match. A pathological pattern fails closed
    /// (no match) instead of burning a core: see `matches(_:)`.
    public static let matchLimit: UInt32 = 5_000_000
    /// Recursion-depth budget per match (PCRE2's heap limit counterpart).
    public static let depthLimit: UInt32 = 250_000

    /// The error PCRE2 reports for a pattern it cannot compile.
    public struct CompileError: Error, CustomStringConvertible, Sendable {
        /// PCRE2's message, e.g. "missing closing parenthesis".
        public let message: String
        /// Byte offset in the pattern where PCRE2 stopped.
        public let offset: Int
        public var description: String { "\(message) at offset \(offset)" }
    }

    /// Compiles `source` as an anchored, end-anchored UTF-8 pattern and asks the JIT for it.
    public init(_ source: String, caseInsensitive: Bool = false) throws(CompileError) {
        var errorCode: Int32 = 0
        var errorOffset: Int = 0
        var options: UInt32 = PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF
        if caseInsensitive { options |= PCRE2_CASELESS }
        let compiled: OpaquePointer? = source.withCString { pointer in
            pointer.withMemoryRebound(to: UInt8.self, capacity: source.utf8.count + 1) { bytes in
                pcre2_compile_8(bytes, source.utf8.count, options, &errorCode, &errorOffset, nil)
            }
        }
        guard let compiled else {
            throw CompileError(message: PCRE2Pattern.message(for: errorCode), offset: errorOffset)
        }
        self.source = source
        self.code = compiled
        self.isJITCompiled = pcre2_jit_compile_8(compiled, PCRE2_JIT_COMPLETE) == 0
        literalThenAnything = caseInsensitive ? nil : Self.literalThenAnything(source)
    }

    /// The literal of a pattern `^?L.*$?` whose `L` is all literal (`literalPrefix`) and
    /// printable ASCII without spaces.
    static func literalThenAnything(_ source: String) -> [UInt8]? {
        var body = Substring(source)
        if body.hasPrefix("^") { body = body.dropFirst() }
        if body.hasSuffix("$") { body = body.dropLast() }
        guard body.hasSuffix(".*") else { return nil }
        let literal = literalPrefix(of: String(body))
        guard body.count == literal.count + 2, literal.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else { return nil }
        return Array(literal.utf8)
    }

    /// The literal text every match of `pattern` starts with: the characters before the
    /// first metacharacter, minus the last one if a quantifier follows it. Conservative:
    /// a pattern with `|` anywhere, or starting with a group or flag, has prefix "".
    static func literalPrefix(of pattern: String) -> String {
        if pattern.contains("|") { return "" }
        var prefix: [Character] = []
        var characters = Substring(pattern)
        if characters.hasPrefix("^") { characters = characters.dropFirst() }
        for character in characters {
            if "\\.^$|?*+()[]{}".contains(character) || !character.isASCII {
                if "?*{+".contains(character), !prefix.isEmpty { prefix.removeLast() }
                break
            }
            prefix.append(character)
        }
        return String(prefix)
    }

    deinit {
        pcre2_code_free_8(code)
    }

    public var description: String { source }

    /// True when the whole of `subject` matches. A match that exhausts the
    /// backtracking or depth budget counts as no match (fail closed).
    public func matches(_ subject: String) -> Bool {
        var subject = subject
        return subject.withUTF8 { buffer in matches(bytes: buffer) }
    }

    /// True when the whole of `bytes` matches (see `matches(_:)`).
    public func matches(bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        if let literal = literalThenAnything {
            // Anchored: every match starts with the literal's bytes (ASCII, so no other UTF-8
            // sequence equals them). After it, `.*` takes any printable ASCII character
            // whatever the newline convention, and ends at the subject's end. Anything else
            // (control bytes, non-ASCII, invalid UTF-8) is left to PCRE2.
            guard bytes.count >= literal.count, literal.withUnsafeBufferPointer({ literal in
                literal.isEmpty || memcmp(literal.baseAddress!, bytes.baseAddress!, literal.count) == 0
            }) else { return false }
            var printable = true
            for index in literal.count..<bytes.count where bytes[index] < 0x20 || bytes[index] > 0x7E {
                printable = false
                break
            }
            if printable { return true }
        }
        // The thread's match data (one pair of offsets is all a whole-subject match needs);
        // the context stays this type's own, which sets no callout.
        guard let matchData = PCRE2Alternation.MatchScratch.ofThisThread()?.matchData else { return false }
        var byte: UInt8 = 0
        return withUnsafePointer(to: &byte) { fallback in
            // An empty buffer may have a nil base address; PCRE2 needs a valid pointer.
            let base = bytes.baseAddress ?? fallback
            var rc = pcre2_match_8(code, base, bytes.count, 0, 0, matchData, matchContext)
            if rc == PCRE2_ERROR_JIT_STACKLIMIT {
                // The JIT's machine stack is small (32 KiB); the interpreter uses the heap.
                rc = pcre2_match_8(code, base, bytes.count, 0, PCRE2_NO_JIT, matchData, matchContext)
            }
            return rc >= 0
        }
    }

    static func message(for errorCode: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        let length = pcre2_get_error_message_8(errorCode, &buffer, buffer.count)
        guard length > 0 else { return "PCRE2 error \(errorCode)" }
        return String(decoding: buffer[0..<Int(length)], as: UTF8.self)
    }
}

/// The match context every `PCRE2Pattern` matches with: the backtracking and depth
/// limits, set once. Read-only after creation (PCRE2 only reads a context while
/// matching), hence shareable across threads; it lives as long as the process.
private final class SharedMatchContext: @unchecked Sendable {
    static let shared = SharedMatchContext()
    let context: OpaquePointer?

    private init() {
        context = pcre2_match_context_create_8(nil)
        if let context {
            pcre2_set_match_limit_8(context, PCRE2Pattern.matchLimit)
            pcre2_set_depth_limit_8(context, PCRE2Pattern.depthLimit)
        }
    }
}
