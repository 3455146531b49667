/// The HTTP rules of one (direction, port, protocol) slot, indexed so that a request
/// runs the regexes of only the rules that can match it, at a cost that does not grow
/// with the number of rules.
///
/// Rules are bucketed by (literal method or "any method", literal path prefix):
/// `{method: GET, path: "/api/v1/products/[0-9]+"}` goes to (GET, `/api/v1/products/`),
/// `{method: "GET|HEAD", path: "/(static|assets)/.*"}` to (any, `/`). A request walks its
/// path once, hashing as it goes, and at each length that some prefix has probes the
/// buckets of its method and of "any method" (two table probes per distinct prefix
/// length, each O(1)).
///
/// Inside a bucket, rules are checked one by one while there are few; a bucket with
/// many path regexes (typically the rules with no useful literal prefix, which all land
/// in the same bucket) has them combined into `PCRE2Alternation` programs of up to 255
/// members, each reporting in one JIT pass every member whose path matches. Only those
/// rules' other fields are then checked. Rules whose pattern cannot be combined safely
/// stay single. Every combination is exact: a program that hits a matching limit makes
/// the caller check its members alone, as if they had never been combined.
struct HTTPRuleIndex: Sendable {
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
        var programs: [Program] = []
    }

    /// A bucket gets combined programs from this many combinable path regexes on.
    static let minimumCombined = 4

    let items: [Item]
    private(set) var buckets: [Bucket] = []
    private var table = BucketTable()
    /// Distinct prefix lengths, ascending.
    private var lengths: [Int] = []

    init(items: [Item]) {
        self.items = items
        var positions: [BucketKey: Int] = [:]
        var members: [[Int]] = []
        for (position, item) in items.enumerated() {
            let method = item.rule.method.flatMap { Self.literalMethod($0.source) }
            let prefix = Array((item.rule.path.map { Self.literalPrefix(of: $0.source) } ?? "").utf8)
            let key = BucketKey(method: method, prefix: prefix)
            if let existing = positions[key] {
                members[existing].append(position)
            } else {
                positions[key] = buckets.count
                buckets.append(Bucket(method: method, prefix: prefix))
                members.append([position])
            }
        }
        var lengthSet = Set<Int>()
        for (bucketIndex, bucketMembers) in members.enumerated() {
            let combinable = bucketMembers.filter { items[$0].rule.path.map { PCRE2Alternation.isCombinable($0.source) } ?? false }
            if combinable.count >= Self.minimumCombined {
                let combined = Set(combinable)
                buckets[bucketIndex].single = bucketMembers.filter { !combined.contains($0) }
                let (programs, refused) = Self.programs(for: combinable, items: items)
                buckets[bucketIndex].programs = programs
                buckets[bucketIndex].single = (buckets[bucketIndex].single + refused).sorted()
            } else {
                buckets[bucketIndex].single = bucketMembers
            }
            let bucket = buckets[bucketIndex]
            table.insert(Self.hash(method: bucket.method, prefix: bucket.prefix[...]), bucket: bucketIndex)
            lengthSet.insert(bucket.prefix.count)
        }
        lengths = lengthSet.sorted()
    }

    private struct BucketKey: Hashable {
        let method: String?
        let prefix: [UInt8]
    }

    /// Groups `members` into programs of at most 255 members and `maximumSourceBytes`;
    /// a program PCRE2 refuses is split in halves, and a single member it refuses is
    /// returned in `refused` (checked alone). No policy is ever rejected for size.
    static func programs(for members: [Int], items: [Item]) -> (programs: [Program], refused: [Int]) {
        var programs: [Program] = []
        var refused: [Int] = []
        func compile(_ chunk: [Int]) {
            guard !chunk.isEmpty else { return }
            if chunk.count == 1 {
                // One pattern alone is already as fast as its own PCRE2Pattern.
                refused.append(chunk[0])
                return
            }
            if let alternation = PCRE2Alternation(members: chunk.map { items[$0].rule.path!.source }) {
                programs.append(Program(alternation: alternation, members: chunk))
            } else {
                compile(Array(chunk[..<(chunk.count / 2)]))
                compile(Array(chunk[(chunk.count / 2)...]))
            }
        }
        var chunk: [Int] = []
        var bytes = 0
        for member in members {
            let size = items[member].rule.path!.source.utf8.count + 16
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
        var found: [(item: Int, isMethodKnown: Bool, isPathKnown: Bool)] = []
        func probe(_ hash: UInt64, isAnyMethod: Bool, bytes: UnsafeBufferPointer<UInt8>, length: Int) {
            table.forEach(hash) { bucketIndex in
                let bucket = buckets[bucketIndex]
                guard (bucket.method == nil) == isAnyMethod else { return }
                if let bucketMethod = bucket.method, bucketMethod != method { return }
                guard bucket.prefix.elementsEqual(UnsafeBufferPointer(rebasing: bytes[..<length])) else { return }
                let isMethodKnown = !isAnyMethod
                for item in bucket.single { found.append((item, isMethodKnown, false)) }
                for program in bucket.programs {
                    let finished = program.alternation.forEachMatch(in: bytes) { member in
                        found.append((program.members[member], isMethodKnown, true))
                    }
                    if !finished {
                        for item in program.members { found.append((item, isMethodKnown, false)) }
                    }
                }
            }
        }
        var path = path
        path.withUTF8 { bytes in
            var methodHash = Self.hashSeed(method: method)
            var anyHash = Self.hashSeed(method: nil)
            var nextLength = 0
            for length in 0...bytes.count {
                if nextLength == lengths.count { break }
                if length == lengths[nextLength] {
                    nextLength += 1
                    probe(methodHash, isAnyMethod: false, bytes: bytes, length: length)
                    if anyHash != methodHash { probe(anyHash, isAnyMethod: true, bytes: bytes, length: length) }
                }
                if length < bytes.count {
                    methodHash = Self.mix(methodHash, bytes[length])
                    anyHash = Self.mix(anyHash, bytes[length])
                }
            }
        }
        if found.count > 1 { found.sort { $0.item < $1.item } }
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
}

/// Open addressing from a 64-bit bucket hash to bucket positions (several buckets may
/// share a hash; callers compare the bucket's method and prefix). Sized at build time
/// to at most half full; never grows after.
private struct BucketTable: Sendable {
    private var keys: [UInt64] = []
    /// Bucket position + 1; 0 = empty slot.
    private var values: [Int32] = []
    private var count = 0

    mutating func insert(_ key: UInt64, bucket: Int) {
        if (count + 1) * 2 > keys.count { grow() }
        place(key, Int32(bucket + 1))
        count += 1
    }

    private mutating func place(_ key: UInt64, _ value: Int32) {
        let mask = keys.count - 1
        var slot = Self.start(key, mask)
        while values[slot] != 0 { slot = (slot + 1) & mask }
        keys[slot] = key
        values[slot] = value
    }

    private mutating func grow() {
        let old = zip(keys, values).filter { $0.1 != 0 }
        let capacity = max(8, keys.count * 2)
        keys = Array(repeating: 0, count: capacity)
        values = Array(repeating: 0, count: capacity)
        for (key, value) in old { place(key, value) }
    }

    private static func start(_ key: UInt64, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    func forEach(_ key: UInt64, _ body: (Int) -> Void) {
        guard !keys.isEmpty else { return }
        let mask = keys.count - 1
        var slot = Self.start(key, mask)
        while values[slot] != 0 {
            if keys[slot] == key { body(Int(values[slot]) - 1) }
            slot = (slot + 1) & mask
        }
    }
}
