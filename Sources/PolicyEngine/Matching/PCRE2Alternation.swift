import CPCRE2
#if canImport(Glibc)
import Glibc
#endif

/// Anchored patterns compiled into ONE PCRE2 program that reports, in a single JIT
/// pass over the subject, every member that matches the whole subject.
///
/// The program is `(?:(?:p1)\z(?C"1")|(?:p2)\z(?C"2")|...)`, compiled anchored, with the
/// members' common leading atoms factored out into a trie (`programSource`). When
/// member `n` has matched up to the end of the subject, callout `n` records `n` and
/// returns 1, which PCRE2 treats as a failure at that point: it backtracks into the
/// remaining paths and members, so the pass ends with "no match" after every member
/// has been tried, and the recorded set is exactly the members that match alone.
/// (`(*MARK)` would name only the last member of one successful match.)
///
/// Only members whose meaning cannot change when placed inside a group next to others
/// are combined (`isCombinable`): no backreferences or subroutine calls (capture
/// numbers shift), no backtracking verbs (`(*COMMIT)` in one member would cut the
/// others), no `\Q` without `\E` and no extended-mode comments (they could swallow the
/// closing parenthesis). Anything else is matched alone by its caller.
///
/// Limits: the program shares one backtracking budget (`PCRE2Pattern.matchLimit`) for
/// all members. When a pass ends in an error (a limit, the JIT stack), `forEachMatch`
/// says so and the caller checks each member alone with its own budget, so combining
/// never changes a verdict. Members are named by string callouts (numbered callouts
/// stop at 255); a program holds at most `maximumMembers`, and one PCRE2 refuses as too
/// large is split by the caller, so no policy is ever refused for its size.
///
/// Thread safety: the compiled code is read-only after `init`; the match data and the
/// match context (which carries the per-call callout data) belong to the caller's
/// `MatchScratch`, one per thread (`MatchScratch.ofThisThread`).
final class PCRE2Alternation: @unchecked Sendable {
    /// Members per program: bounds the per-call bit set (on the stack) and the work
    /// lost when a pass hits a limit and every member is checked alone.
    static let maximumMembers = 2_048
    /// Bytes of member source per program, aimed under PCRE2's compiled-size limit
    /// (LINK_SIZE 2 = 64 KiB of code); a program that is still too large is split.
    static let maximumSourceBytes = 48_000

    /// The match data and match context of one evaluation, reused for every program it
    /// runs (each program's pass sets the context's callout to its own bit set).
    final class MatchScratch {
        let matchData: OpaquePointer
        let context: OpaquePointer

        init?() {
            guard let matchData = pcre2_match_data_create_8(1, nil) else { return nil }
            guard let context = pcre2_match_context_create_8(nil) else {
                pcre2_match_data_free_8(matchData)
                return nil
            }
            pcre2_set_match_limit_8(context, PCRE2Pattern.matchLimit)
            pcre2_set_depth_limit_8(context, PCRE2Pattern.depthLimit)
            self.matchData = matchData
            self.context = context
        }

        deinit {
            pcre2_match_data_free_8(matchData)
            pcre2_match_context_free_8(context)
        }

        /// The calling thread's scratch, made on its first evaluation and freed when the
        /// thread ends: a request is judged on one thread, start to end, and passes do not
        /// nest (a pass's results are handed out after it ended), so one per thread serves
        /// every evaluation without three allocations each. Nil when PCRE2 cannot allocate.
        static func ofThisThread() -> MatchScratch? {
            if let stored = pthread_getspecific(threadKey) {
                return Unmanaged<MatchScratch>.fromOpaque(stored).takeUnretainedValue()
            }
            guard let scratch = MatchScratch() else { return nil }
            pthread_setspecific(threadKey, Unmanaged.passRetained(scratch).toOpaque())
            return scratch
        }

        private static let threadKey: pthread_key_t = {
            var key = pthread_key_t()
            let created = pthread_key_create(&key) { stored in
                if let stored { Unmanaged<MatchScratch>.fromOpaque(stored).release() }
            }
            precondition(created == 0, "pthread_key_create failed: \(created)")
            return key
        }()
    }

    let memberCount: Int
    let isJITCompiled: Bool
    /// The program's pattern text (see `programSource`).
    let source: String
    private let code: OpaquePointer

    /// Compiles the members as one program; nil when PCRE2 refuses it (too large, ...),
    /// in which case the caller splits the members.
    init?(members: [String], caseInsensitive: Bool = false) {
        // Member numbers are callout numbers (1...255): more members cannot be one program.
        guard !members.isEmpty, members.count <= Self.maximumMembers else { return nil }
        let source = Self.programSource(members)
        var errorCode: Int32 = 0
        var errorOffset = 0
        // No backreferences are combined (`isCombinable`), so capturing is only cost:
        // NO_AUTO_CAPTURE makes every plain `(...)` a non-capturing group.
        var options: UInt32 = PCRE2_ANCHORED | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_NO_AUTO_CAPTURE
        if caseInsensitive { options |= PCRE2_CASELESS }
        let compiled: OpaquePointer? = source.withCString { pointer in
            pointer.withMemoryRebound(to: UInt8.self, capacity: source.utf8.count + 1) { bytes in
                pcre2_compile_8(bytes, source.utf8.count, options, &errorCode, &errorOffset, nil)
            }
        }
        guard let compiled else { return nil }
        code = compiled
        self.source = source
        memberCount = members.count
        isJITCompiled = pcre2_jit_compile_8(compiled, PCRE2_JIT_COMPLETE) == 0
    }

    deinit { pcre2_code_free_8(code) }

    /// Calls `body` with the position of every member matching the whole of `bytes`,
    /// in ascending order, and returns true; returns false (having called nothing) when
    /// the pass could not finish (a limit was hit): the caller must then check each
    /// member alone.
    func forEachMatch(in bytes: UnsafeBufferPointer<UInt8>, _ body: (Int) -> Void) -> Bool {
        guard let scratch = MatchScratch.ofThisThread() else { return false }
        return forEachMatch(in: bytes, scratch: scratch, body)
    }

    /// `forEachMatch(in:_:)` with the caller's match data and context.
    func forEachMatch(in bytes: UnsafeBufferPointer<UInt8>, scratch: MatchScratch, _ body: (Int) -> Void) -> Bool {
        // One bit per member number 1...memberCount, on this call's stack.
        let words = memberCount / 64 + 1
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: words) { seen in
            seen.initialize(repeating: 0)
            guard let seenWords = seen.baseAddress else { return false }
            pcre2_set_callout_8(scratch.context, recordMember, UnsafeMutableRawPointer(seenWords))
            let result: Int32
            if let base = bytes.baseAddress {
                result = pcre2_match_8(code, base, bytes.count, 0, 0, scratch.matchData, scratch.context)
            } else {
                // An empty buffer may have a nil base address; PCRE2 needs a valid pointer.
                var byte: UInt8 = 0
                result = pcre2_match_8(code, &byte, 0, 0, 0, scratch.matchData, scratch.context)
            }
            // Every callout fails its path, so a finished pass always ends in "no match".
            guard result == PCRE2_ERROR_NOMATCH else { return false }
            for word in 0..<words {
                var bits = seen[word]
                while bits != 0 {
                    let bit = bits.trailingZeroBitCount
                    bits &= bits - 1
                    body(word * 64 + bit - 1)
                }
            }
            return true
        }
    }

    /// The program text: members split into atoms (`atoms(of:)`) are merged into a trie
    /// on their leading atoms, so `/(static|assets)/[a-z]+[1][2]/.*` and
    /// `/(static|assets)/[a-z]+[1][3]/.*` become `/(static|assets)/[a-z]+[1](?:[2]/.*\z(?C"1")|[3]/.*\z(?C"2"))`:
    /// a subject that fails the shared atoms fails once, not once per member, and PCRE2
    /// tries only as many branches at each point as there are distinct next atoms.
    /// Equivalent to the flat alternation because every factored atom is complete
    /// (with its quantifier) and matching explores every path: the same members reach
    /// their callout at the end of the subject. Members that cannot be split (a
    /// top-level `|`, inline options, an escape or brace not understood) stay whole,
    /// wrapped in their own group.
    static func programSource(_ members: [String]) -> String {
        struct Member {
            let number: Int
            let atoms: [String]?
            let source: String
        }
        let all = members.enumerated().map { Member(number: $0.offset + 1, atoms: atoms(of: $0.element), source: $0.element) }
        func leaf(_ member: Member, from depth: Int) -> String {
            let rest = member.atoms.map { $0[depth...].joined() } ?? "(?:\(member.source))"
            return rest + "\\z(?C\"\(member.number)\")"
        }
        func emit(_ group: [Member], depth: Int) -> String {
            var branches: [String] = []
            var byAtom: [String: [Member]] = [:]
            var order: [String] = []
            for member in group {
                guard let atoms = member.atoms, depth < atoms.count else {
                    branches.append(leaf(member, from: depth))
                    continue
                }
                if byAtom[atoms[depth]] == nil { order.append(atoms[depth]) }
                byAtom[atoms[depth], default: []].append(member)
            }
            for atom in order {
                guard let sharing = byAtom[atom] else { continue }
                branches.append(sharing.count == 1 ? leaf(sharing[0], from: depth) : atom + emit(sharing, depth: depth + 1))
            }
            return branches.count == 1 ? branches[0] : "(?:" + branches.joined(separator: "|") + ")"
        }
        let body = emit(all, depth: 0)
        return body.hasPrefix("(?:") ? body : "(?:" + body + ")"
    }

    /// `source` as a sequence of complete atoms, each with its quantifier: a character,
    /// an escape of one character, a class, a group; then `?`, `*`, `+` or `{n,m}` and
    /// a lazy or possessive mark. Nil when the source cannot be split safely.
    static func atoms(of source: String) -> [String]? {
        guard isCombinable(source), !source.contains("(?i"), !source.contains("(?-i") else { return nil }
        let bytes = Array(source.utf8)
        var atoms: [String] = []
        var index = 0
        while index < bytes.count {
            let start = index
            switch bytes[index] {
            case UInt8(ascii: "\\"):
                guard index + 1 < bytes.count else { return nil }
                let next = bytes[index + 1]
                // \x, \o, \p, \P, \N take a braced or variable-length argument.
                if Array("xopPN".utf8).contains(next) || next >= 0x80 { return nil }
                index += 2
            case UInt8(ascii: "["):
                guard let end = skipClass(bytes, from: index) else { return nil }
                index = end
            case UInt8(ascii: "("):
                guard let end = skipGroup(bytes, from: index) else { return nil }
                index = end
            case UInt8(ascii: "|"), UInt8(ascii: ")"), UInt8(ascii: "?"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "{"):
                return nil
            default:
                index += 1
                // The rest of a multi-byte UTF-8 character.
                while index < bytes.count, bytes[index] & 0xC0 == 0x80 { index += 1 }
            }
            // The atom's quantifier, if any, then its lazy (`?`) or possessive (`+`) mark.
            var isQuantified = false
            if index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "?"), UInt8(ascii: "*"), UInt8(ascii: "+"):
                    index += 1
                    isQuantified = true
                case UInt8(ascii: "{"):
                    // Only a well-formed {n}, {n,}, {n,m} (or {,m}) is taken; any other brace: no split.
                    var end = index + 1
                    while end < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[end]) || bytes[end] == UInt8(ascii: ",") { end += 1 }
                    guard end < bytes.count, bytes[end] == UInt8(ascii: "}"), end > index + 1 else { return nil }
                    index = end + 1
                    isQuantified = true
                default:
                    break
                }
            }
            if isQuantified, index < bytes.count, bytes[index] == UInt8(ascii: "?") || bytes[index] == UInt8(ascii: "+") { index += 1 }
            atoms.append(String(decoding: bytes[start..<index], as: UTF8.self))
        }
        return atoms
    }

    /// The index just past the class starting at `start` (`[`), honouring `[]...]`, `[^]...]`, escapes and POSIX classes.
    static func skipClass(_ bytes: [UInt8], from start: Int) -> Int? {
        var index = start + 1
        if index < bytes.count, bytes[index] == UInt8(ascii: "^") { index += 1 }
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1 }
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "]"): return index + 1
            // POSIX classes such as [[:alpha:]] hold a `]` of their own.
            case UInt8(ascii: "[") where index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: ":"):
                guard let close = bytes[(index + 2)...].firstIndex(of: UInt8(ascii: "]")) else { return nil }
                index = close + 1
            default: index += 1
            }
        }
        return nil
    }

    /// The index just past the group starting at `start` (`(`), skipping nested groups, classes and escapes.
    static func skipGroup(_ bytes: [UInt8], from start: Int) -> Int? {
        var depth = 0
        var index = start
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "["):
                guard let end = skipClass(bytes, from: index) else { return nil }
                index = end
            case UInt8(ascii: "("):
                depth += 1
                index += 1
            case UInt8(ascii: ")"):
                depth -= 1
                index += 1
                if depth == 0 { return index }
            default: index += 1
            }
        }
        return nil
    }

    /// True when `source` keeps its meaning as one member of an alternation (see the type's comment).
    /// Conservative: a false answer only means the pattern is matched on its own.
    static func isCombinable(_ source: String) -> Bool {
        let bytes = Array(source.utf8)
        var index = 0
        var inClass = false
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count else { return false }
                let next = bytes[index + 1]
                // Backreferences (\1, \g, \k), \Q...\E quoting, \c (takes the next character) and \E.
                if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(next) { return false }
                if [UInt8(ascii: "g"), UInt8(ascii: "k"), UInt8(ascii: "Q"), UInt8(ascii: "E"), UInt8(ascii: "c")].contains(next) { return false }
                index += 2
                continue
            }
            if inClass {
                if byte == UInt8(ascii: "]") { inClass = false }
                index += 1
                continue
            }
            if byte == UInt8(ascii: "[") {
                inClass = true
                // A `]` right after `[` or `[^` is a literal member of the class.
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "^") { index += 1 }
                if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1 }
                continue
            }
            if byte == UInt8(ascii: "("), index + 1 < bytes.count {
                let next = bytes[index + 1]
                // Verbs and start-of-pattern options: (*COMMIT), (*ACCEPT), (*UTF), ...
                if next == UInt8(ascii: "*") { return false }
                if next == UInt8(ascii: "?") {
                    let rest = bytes[(index + 2)...]
                    let allowed: [[UInt8]] = [Array(":".utf8), Array("=".utf8), Array("!".utf8), Array("<=".utf8), Array("<!".utf8),
                                              Array("i)".utf8), Array("i:".utf8), Array("-i)".utf8), Array("-i:".utf8)]
                    guard allowed.contains(where: { rest.starts(with: $0) }) else { return false }
                }
            }
            index += 1
        }
        return !inClass
    }
}

/// Records the member whose callout fired and fails the path so matching goes on:
/// callout `"n"` sets bit `n` of the bit set `data` points to.
private let recordMember: @convention(c) (UnsafeMutablePointer<pcre2_callout_block_8>?, UnsafeMutableRawPointer?) -> Int32 = { block, data in
    guard let block, let data, let text = block.pointee.callout_string else { return PCRE2_ERROR_CALLOUT }
    var number = 0
    for offset in 0..<Int(block.pointee.callout_string_length) {
        number = number * 10 + Int(text[offset] &- UInt8(ascii: "0"))
    }
    let word = data.advanced(by: (number >> 6) * 8).assumingMemoryBound(to: UInt64.self)
    word.pointee |= 1 << UInt64(number & 63)
    return 1
}
