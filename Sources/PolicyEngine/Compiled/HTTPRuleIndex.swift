#if canImport(Glibc)
import Glibc
#endif

/// The HTTP rules of one (direction, port, protocol) slot, indexed so that a request
/// runs the regexes of only the rules that can match it, at a cost that grows with the
/// request (its path length, the rules it may match), not with the number of rules.
///
/// Rules are bucketed by (literal method or "any method", literal path prefix):
/// `{method: GET, path: "/api/v1/products/[0-9]+"}` goes to (GET, `/api/v1/products/`),
/// `{method: "GET|HEAD", path: "/(static|assets)/.*"}` to (any, "") since a `|` hides
/// the prefix. A request walks its path once, hashing as it goes, and at each length
/// that some prefix of its method (or of "any method") has, probes one table, behind a
/// small bit filter that answers most misses from cache.
///
/// Inside a bucket, rules are checked one by one while there are few
/// (`minimumCombined`). A crowded bucket (typically the rules without a literal prefix,
/// which all land in the same one) is split three ways:
/// - rules whose path regex contains a required literal (`/r42/` in
///   `/(static|assets)/r42/.*`) go behind a `LiteralPrefilter`: candidates only when
///   the literal occurs in the path;
/// - the other combinable ones go into `PCRE2Alternation` programs, each reporting in
///   one JIT pass every member whose path matches (members merged on their leading
///   atoms), so only those rules' other fields are checked;
/// - patterns that cannot be combined safely stay single.
/// Every shortcut is exact: a program that hits a matching limit hands its members back
/// to be checked alone, and a program PCRE2 refuses as too large is split, down to
/// single rules, so no policy is rejected for its size.
final class HTTPRuleIndex: Sendable {
    struct Item: Sendable {
        /// Index of the port entry (in the direction policy) that owns the rule.
        let entry: Int
        let rule: HTTPRule
    }

    /// Path regexes combined into one program; `members[n]` is the item of member `n`.
    struct Program: Sendable {
        let alternation: PCRE2Alternation
        let members: [Int]
    }

    /// Rules sharing one (method, literal path prefix).
    struct Bucket: Sendable {
        /// The literal method, or nil for rules whose method is a regex or absent.
        let method: String?
        let prefix: [UInt8]
        /// Items checked one by one.
        var single: [Int] = []
        /// Items whose path regex has a required literal: candidates when it occurs in the path.
        var prefilter: LiteralPrefilter?
        var programs: [Program] = []
    }

    /// A bucket gets combined programs from this many combinable path regexes on.
    static let minimumCombined = 4

    let items: [Item]
    let buckets: [Bucket]
    private let table: BucketTable
    /// Distinct prefix lengths of the buckets of each literal method, ascending, and the
    /// method's hash seed (made here once, not per request).
    private let methodLengths: [(method: String, lengths: [Int], seed: UInt64)]
    /// Distinct prefix lengths of the any-method buckets, ascending.
    private let anyLengths: [Int]

    init(items: [Item]) {
        self.items = items
        var buckets: [Bucket] = []
        var table = BucketTable()
        var positions: [BucketKey: Int] = [:]
        var members: [[Int]] = []
        for (position, item) in items.enumerated() {
            let method = item.rule.method.flatMap { Self.literalMethod($0.source) }
            let prefix = Array((item.rule.path.map { PCRE2Pattern.literalPrefix(of: $0.source) } ?? "").utf8)
            let key = BucketKey(method: method, prefix: prefix)
            if let existing = positions[key] {
                members[existing].append(position)
            } else {
                positions[key] = buckets.count
                buckets.append(Bucket(method: method, prefix: prefix))
                members.append([position])
            }
        }
        var lengthSets: [String: Set<Int>] = [:]
        var anyLengthSet = Set<Int>()
        for (bucketIndex, bucketMembers) in members.enumerated() {
            (buckets[bucketIndex].single, buckets[bucketIndex].prefilter, buckets[bucketIndex].programs) = Self.organize(bucketMembers, items: items)
            let bucket = buckets[bucketIndex]
            table.insert(Self.hash(method: bucket.method, prefix: bucket.prefix[...]), bucket: bucketIndex)
            if let method = bucket.method {
                lengthSets[method, default: []].insert(bucket.prefix.count)
            } else {
                anyLengthSet.insert(bucket.prefix.count)
            }
        }
        self.buckets = buckets
        self.table = table
        methodLengths = lengthSets.map { ($0.key, $0.value.sorted(), Self.hashSeed(method: $0.key)) }
            .sorted { $0.method < $1.method }
        anyLengths = anyLengthSet.sorted()
    }

    private struct BucketKey: Hashable {
        let method: String?
        let prefix: [UInt8]
    }

    /// Splits a bucket's items into those checked one by one, those behind a literal
    /// prefilter and those combined into programs. Few path regexes: all one by one.
    static func organize(_ members: [Int], items: [Item]) -> (single: [Int], prefilter: LiteralPrefilter?, programs: [Program]) {
        var single: [Int] = []
        var literal: [(item: Int, literal: [UInt8], path: String)] = []
        var combinable: [(item: Int, path: String)] = []
        let pathCount = members.count { items[$0].rule.path != nil }
        for member in members {
            guard pathCount >= minimumCombined, let path = items[member].rule.path else {
                single.append(member)
                continue
            }
            if let required = LiteralPrefilter.requiredLiteral(of: path.source) {
                literal.append((member, required, path.source))
            } else if PCRE2Alternation.isCombinable(path.source) {
                combinable.append((member, path.source))
            } else {
                single.append(member)
            }
        }
        var prefilter: LiteralPrefilter?
        if literal.count >= minimumCombined {
            prefilter = LiteralPrefilter(literal.map { ($0.item, $0.literal) })
        } else {
            combinable += literal.map { ($0.item, $0.path) }
            combinable.sort { $0.item < $1.item }
        }
        var programs: [Program] = []
        if combinable.count >= minimumCombined {
            let refused: [Int]
            (programs, refused) = Self.programs(for: combinable)
            single += refused
        } else {
            single += combinable.map(\.item)
        }
        return (single.sorted(), prefilter, programs)
    }

    /// Groups `members` (items with their path regex) into programs of at most 255
    /// members and `maximumSourceBytes`; a program PCRE2 refuses is split in halves, and
    /// a single member it refuses is returned in `refused` (checked alone). No policy is
    /// ever rejected for size.
    static func programs(for members: [(item: Int, path: String)]) -> (programs: [Program], refused: [Int]) {
        var programs: [Program] = []
        var refused: [Int] = []
        func compile(_ chunk: [(item: Int, path: String)]) {
            guard let first = chunk.first else { return }
            if chunk.count == 1 {
                // One pattern alone is already as fast as its own PCRE2Pattern.
                refused.append(first.item)
                return
            }
            if let alternation = PCRE2Alternation(members: chunk.map(\.path)) {
                programs.append(Program(alternation: alternation, members: chunk.map(\.item)))
            } else {
                compile(Array(chunk[..<(chunk.count / 2)]))
                compile(Array(chunk[(chunk.count / 2)...]))
            }
        }
        var chunk: [(item: Int, path: String)] = []
        var bytes = 0
        for member in members {
            let size = member.path.utf8.count + 16
            if !chunk.isEmpty, chunk.count == PCRE2Alternation.maximumMembers || bytes + size > PCRE2Alternation.maximumSourceBytes {
                compile(chunk)
                chunk = []
                bytes = 0
            }
            chunk.append(member)
            bytes += size
        }
        compile(chunk)
        return (programs, refused)
    }

    /// Calls `body` for every item the request's method and path may match, in item
    /// order, with `isMethodKnown` true when the rule's method is a literal equal to the
    /// request's, and `isPathKnown` true when a combined program already matched its path.
    func forEachCandidate(method: String, path: String, _ body: (_ item: Int, _ isMethodKnown: Bool, _ isPathKnown: Bool) -> Void) {
        // Most requests have one candidate: it is held alone, and an array is made only
        // for a second (candidates come bucket by bucket and are handed out in item order).
        typealias Candidate = (item: Int, isMethodKnown: Bool, isPathKnown: Bool)
        var first: Candidate?
        var found: [Candidate] = []
        func add(_ candidate: Candidate) {
            if first == nil && found.isEmpty { return first = candidate }
            if let held = first {
                found.append(held)
                first = nil
            }
            found.append(candidate)
        }
        // Match data and context for every combined program this request runs.
        var scratch: PCRE2Alternation.MatchScratch?
        func probe(_ hash: UInt64, isAnyMethod: Bool, bytes: UnsafeBufferPointer<UInt8>, length: Int) {
            table.forEach(hash) { bucketIndex in
                // The bucket is read in place (a copy would count references to each of its lists).
                guard (buckets[bucketIndex].method == nil) == isAnyMethod else { return }
                if !isAnyMethod, buckets[bucketIndex].method.unsafelyUnwrapped != method { return }
                guard buckets[bucketIndex].prefix.count == length, length == 0 || buckets[bucketIndex].prefix
                        .withUnsafeBufferPointer({ memcmp($0.baseAddress!, bytes.baseAddress!, length) == 0 }) else { return }
                let isMethodKnown = !isAnyMethod
                for index in buckets[bucketIndex].single.indices {
                    add((buckets[bucketIndex].single[index], isMethodKnown, false))
                }
                buckets[bucketIndex].prefilter?.forEachCandidate(in: bytes) { item in add((item, isMethodKnown, false)) }
                for program in buckets[bucketIndex].programs {
                    if scratch == nil { scratch = PCRE2Alternation.MatchScratch.ofThisThread() }
                    let finished = scratch.map { scratch in
                        program.alternation.forEachMatch(in: bytes, scratch: scratch) { member in
                            add((program.members[member], isMethodKnown, true))
                        }
                    } ?? false
                    if !finished {
                        for item in program.members { add((item, isMethodKnown, false)) }
                    }
                }
            }
        }
        // Only the prefix lengths that buckets of this method (and of any method) have are probed.
        let known = methodLengths.first { $0.method == method }
        let lengths = known?.lengths ?? []
        var path = path
        path.withUTF8 { bytes in
            // (A method without buckets of its own probes no method lengths: its seed is unused.)
            var methodHash = known?.seed ?? 0
            var anyHash = Self.anyMethodSeed
            var nextMethodLength = 0
            var nextAnyLength = 0
            for length in 0...bytes.count {
                if nextMethodLength == lengths.count && nextAnyLength == anyLengths.count { break }
                if nextMethodLength < lengths.count, length == lengths[nextMethodLength] {
                    nextMethodLength += 1
                    probe(methodHash, isAnyMethod: false, bytes: bytes, length: length)
                }
                if nextAnyLength < anyLengths.count, length == anyLengths[nextAnyLength] {
                    nextAnyLength += 1
                    probe(anyHash, isAnyMethod: true, bytes: bytes, length: length)
                }
                if length < bytes.count {
                    methodHash = Self.mix(methodHash, bytes[length])
                    anyHash = Self.mix(anyHash, bytes[length])
                }
            }
        }
        if let first { return body(first.item, first.isMethodKnown, first.isPathKnown) }
        found.sort { $0.item < $1.item }
        for candidate in found { body(candidate.item, candidate.isMethodKnown, candidate.isPathKnown) }
    }

    /// Items whose bucket admits the request (item order); for tests and explanations.
    func candidates(method: String, path: String) -> [Int] {
        var result: [Int] = []
        forEachCandidate(method: method, path: path) { item, _, _ in result.append(item) }
        return result
    }

    // MARK: Hashing (FNV-1a over the method, a separator byte no method has, then the prefix)

    private static func mix(_ hash: UInt64, _ byte: UInt8) -> UInt64 {
        (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
    }

    /// `hashSeed(method: nil)`, a constant.
    @inline(__always) private static var anyMethodSeed: UInt64 { mix(0xCBF2_9CE4_8422_2325, 0xFF) }

    private static func hashSeed(method: String?) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        if let method { for byte in method.utf8 { hash = mix(hash, byte) } }
        return mix(hash, 0xFF)
    }

    private static func hash(method: String?, prefix: ArraySlice<UInt8>) -> UInt64 {
        var hash = hashSeed(method: method)
        for byte in prefix { hash = mix(hash, byte) }
        return hash
    }

    // MARK: Literal analysis

    /// A method pattern made only of letters matches exactly that method.
    static func literalMethod(_ pattern: String) -> String? {
        !pattern.isEmpty && pattern.utf8.allSatisfy({ (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) }) ? pattern : nil
    }
}

/// Open addressing from a 64-bit bucket hash to bucket positions (several buckets may
/// share a hash; callers compare the bucket's method and prefix). Sized at build time
/// to at most half full; never grows after.
private struct BucketTable: Sendable {
    private struct Slot {
        var key: UInt64 = 0
        /// Bucket position + 1; 0 = empty slot.
        var value: Int32 = 0
    }
    /// Key and value side by side: one cache line per probe.
    private var slots: [Slot] = []
    private var count = 0

    mutating func insert(_ key: UInt64, bucket: Int) {
        if (count + 1) * 2 > slots.count { grow() }
        place(key, Int32(bucket + 1))
        count += 1
        if count * 16 > filter.count * 64 { rebuildFilter() } else {
            let bit = Self.filterBit(key, filterShift)
            filter[bit >> 6] |= 1 << UInt64(bit & 63)
        }
    }

    private mutating func place(_ key: UInt64, _ value: Int32) {
        let mask = slots.count - 1
        var slot = Self.start(key, mask)
        while slots[slot].value != 0 { slot = (slot + 1) & mask }
        slots[slot] = Slot(key: key, value: value)
    }

    private mutating func grow() {
        let old = slots.filter { $0.value != 0 }
        slots = Array(repeating: Slot(), count: max(8, slots.count * 2))
        for entry in old { place(entry.key, entry.value) }
    }

    private static func start(_ key: UInt64, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    /// Hash bits of every key, 16 per key and a power of two: most probes are for
    /// lengths where no bucket has the path's prefix, and this answers them from a few
    /// KiB that stay in cache instead of touching the table.
    private var filter: [UInt64] = []
    private var filterShift: UInt64 = 64

    private static func filterBit(_ key: UInt64, _ shift: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0xD6E8_FEB8_6659_FD93) >> shift)
    }

    private mutating func rebuildFilter() {
        var bits = 1_024
        while bits < count * 16 { bits *= 2 }
        filterShift = UInt64(64 - bits.trailingZeroBitCount)
        filter = Array(repeating: 0, count: bits / 64)
        for slot in slots where slot.value != 0 {
            let bit = Self.filterBit(slot.key, filterShift)
            filter[bit >> 6] |= 1 << UInt64(bit & 63)
        }
    }

    func forEach(_ key: UInt64, _ body: (Int) -> Void) {
        guard !slots.isEmpty else { return }
        let bit = Self.filterBit(key, filterShift)
        guard filter[bit >> 6] & (1 << UInt64(bit & 63)) != 0 else { return }
        let mask = slots.count - 1
        var slot = Self.start(key, mask)
        while slots[slot].value != 0 {
            if slots[slot].key == key { body(Int(slots[slot].value) - 1) }
            slot = (slot + 1) & mask
        }
    }
}

/// Rules whose path regex contains a required literal (text every match contains, such
/// as `/r42/` in `/(static|assets)/r42/.*`), found by sliding a four-byte window over
/// the request path: a rule is a candidate only when its literal occurs in the path.
/// A bit filter on the window's hash answers most positions without a table probe, so
/// the cost follows the path's length, not the number of rules.
struct LiteralPrefilter: Sendable {
    /// Literals shorter than this are not worth a window (they go to combined programs).
    static let minimumLiteral = 4

    private let filter: [UInt64]
    private let filterShift: UInt32
    private let byWindow: [UInt32: [(literal: [UInt8], item: Int)]]

    init(_ members: [(item: Int, literal: [UInt8])]) {
        var bits = 4_096
        while bits < members.count * 16 { bits *= 2 }
        var filter = [UInt64](repeating: 0, count: bits / 64)
        let shift = UInt32(32 - bits.trailingZeroBitCount)
        var byWindow: [UInt32: [(literal: [UInt8], item: Int)]] = [:]
        for member in members where member.literal.count >= Self.minimumLiteral {
            // `requiredLiteral` returns only literals this long; a shorter one is never a candidate.
            let window = member.literal.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            let bit = Int((window &* 0x9E37_79B1) >> shift)
            filter[bit >> 6] |= 1 << UInt64(bit & 63)
            byWindow[window, default: []].append((literal: member.literal, item: member.item))
        }
        self.filter = filter
        filterShift = shift
        self.byWindow = byWindow
    }

    /// Calls `body` once for each item whose literal occurs in `bytes`, in item order.
    func forEachCandidate(in bytes: UnsafeBufferPointer<UInt8>, _ body: (Int) -> Void) {
        guard bytes.count >= Self.minimumLiteral else { return }
        var found: [Int] = []
        let raw = UnsafeRawBufferPointer(bytes)
        for offset in 0...(bytes.count - Self.minimumLiteral) {
            let window = raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            let bit = Int((window &* 0x9E37_79B1) >> filterShift)
            guard filter[bit >> 6] & (1 << UInt64(bit & 63)) != 0, let members = byWindow[window] else { continue }
            for member in members where member.literal.count <= bytes.count - offset
                && member.literal.elementsEqual(UnsafeBufferPointer(rebasing: bytes[offset..<(offset + member.literal.count)])) {
                found.append(member.item)
            }
        }
        guard !found.isEmpty else { return }
        found.sort()
        var previous = -1
        for item in found where item != previous {
            body(item)
            previous = item
        }
    }

    /// The longest literal that every match of `pattern` contains, if one of at least
    /// `minimumLiteral` bytes is evident from the pattern's top level: runs of literal
    /// characters outside groups, classes and alternations, minus a character made
    /// optional by a following `?`, `*` or `{`. Conservative: nil for anything it does
    /// not fully understand (an escape it does not know, inline options that could make
    /// the text caseless, a top-level `|`, patterns `PCRE2Alternation` would not combine).
    static func requiredLiteral(of pattern: String) -> [UInt8]? {
        guard PCRE2Alternation.isCombinable(pattern), !pattern.contains("(?i"), !pattern.contains("(?-i") else { return nil }
        let bytes = Array(pattern.utf8)
        // Escapes of one letter that stand for a class or an assertion, never for text in a run.
        let simpleEscapes = Set("dDwWsShHvVRbBAzZGtnrfea".utf8)
        var best: [UInt8] = []
        var run: [UInt8] = []
        func dropLastCharacter() {
            // A quantifier applies to the last character, which may be several UTF-8 bytes.
            while let last = run.last, last & 0xC0 == 0x80 { run.removeLast() }
            if !run.isEmpty { run.removeLast() }
        }
        func endRun() {
            if run.count > best.count { best = run }
            run = []
        }
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\\"):
                guard index + 1 < bytes.count else { return nil }
                let next = bytes[index + 1]
                let isAlphanumeric = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(next) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(next)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(next)
                if isAlphanumeric {
                    guard simpleEscapes.contains(next) else { return nil }
                    endRun()
                } else {
                    run.append(next)
                }
                index += 2
            case UInt8(ascii: "["):
                endRun()
                guard let end = PCRE2Alternation.skipClass(bytes, from: index) else { return nil }
                index = end
            case UInt8(ascii: "("):
                endRun()
                guard let end = PCRE2Alternation.skipGroup(bytes, from: index) else { return nil }
                index = end
            case UInt8(ascii: "|"):
                return nil
            case UInt8(ascii: "?"), UInt8(ascii: "*"):
                dropLastCharacter()
                endRun()
                index += 1
            case UInt8(ascii: "{"):
                dropLastCharacter()
                endRun()
                while index < bytes.count, bytes[index] != UInt8(ascii: "}") { index += 1 }
                index += 1
            case UInt8(ascii: "+"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "$"):
                endRun()
                index += 1
            default:
                run.append(byte)
                index += 1
            }
        }
        endRun()
        return best.count >= minimumLiteral ? best : nil
    }
}
