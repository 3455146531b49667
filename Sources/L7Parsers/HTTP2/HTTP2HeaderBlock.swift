#if canImport(Glibc)
import Glibc
#endif

/// The fields of one HTTP/2 header block (a request or response head, trailers), as bytes:
/// every name and value back to back in one buffer, and where each one is. A received block
/// is filled as nghttp2 decodes it and handed on as it is; a forwarded one is passed to
/// nghttp2 pointing into the same buffer. Reading a field copies nothing and counts no
/// references (an array of `HTTP2Header` would hold two slices, two references, a field).
///
/// Storage: one heap object, its spans and then its field bytes allocated in its tail (one
/// allocation a block; a block is built field by field from nghttp2's callbacks, the hottest
/// path of a proxied request). Filled with `memcpy`; replaced by one twice as large when
/// full. A value type: a block shared by two owners is copied before either changes it.
public struct HTTP2HeaderBlock: Equatable, @unchecked Sendable {
    @usableFromInline var storage: Storage?
    /// Every name is known to be lowercase: set by an endpoint on a block nghttp2 decoded and
    /// checked (RFC 9113 §8.2.1), cleared by any change. Such a block goes back to nghttp2
    /// without a scan of its names.
    @usableFromInline var namesAreLowercase = false

    @usableFromInline struct Span: Equatable {
        @usableFromInline var nameStart: UInt32
        @usableFromInline var nameCount: UInt32
        @usableFromInline var valueCount: UInt32

        @inlinable var valueStart: Int { Int(nameStart) + Int(nameCount) }

        @inlinable init(nameStart: UInt32, nameCount: UInt32, valueCount: UInt32) {
            self.nameStart = nameStart
            self.nameCount = nameCount
            self.valueCount = valueCount
        }
    }

    @usableFromInline struct Counts {
        @usableFromInline var byteCount = 0
        @usableFromInline var byteCapacity: Int
        @usableFromInline var spanCount = 0
        @usableFromInline var spanCapacity: Int
    }

    /// Counts in the header; `spanCapacity` spans then `byteCapacity` bytes in the tail.
    @usableFromInline final class Storage: ManagedBuffer<Counts, UInt8> {
        @usableFromInline static func make(fields: Int, bytes: Int) -> Storage {
            let spanCapacity = max(fields, 4), byteCapacity = max(bytes, 64)
            let buffer = Storage.create(minimumCapacity: spanCapacity * MemoryLayout<Span>.stride + byteCapacity) { _ in
                Counts(byteCapacity: byteCapacity, spanCapacity: spanCapacity)
            }
            return unsafeDowncast(buffer, to: Storage.self)
        }

        @inlinable var spanCount: Int { header.spanCount }
        @inlinable var byteCount: Int { header.byteCount }

        /// Valid while the storage lives (the caller keeps it alive).
        @inlinable var spans: UnsafeMutablePointer<Span> {
            withUnsafeMutablePointerToElements { UnsafeMutableRawPointer($0).assumingMemoryBound(to: Span.self) }
        }

        /// Valid while the storage lives (the caller keeps it alive).
        @inlinable var bytes: UnsafeMutablePointer<UInt8> {
            let offset = header.spanCapacity * MemoryLayout<Span>.stride
            return withUnsafeMutablePointerToElements { $0 + offset }
        }

        /// A copy with room for at least `fields` spans and `bytes` bytes.
        @usableFromInline func copy(fields: Int, bytes byteCapacity: Int) -> Storage {
            let counts = header
            let copy = Storage.make(fields: max(fields, counts.spanCount), bytes: max(byteCapacity, counts.byteCount))
            copy.spans.initialize(from: spans, count: counts.spanCount)
            copy.bytes.update(from: bytes, count: counts.byteCount)
            copy.header.spanCount = counts.spanCount
            copy.header.byteCount = counts.byteCount
            return copy
        }

        /// Appends a field when it fits (false: nothing changed). Offsets and lengths are kept
        /// as `UInt32`: a block (a head under an endpoint's header list limit, or one the proxy
        /// builds) stays far below 4 GiB.
        @inlinable @inline(__always)
        func appendIfRoom(_ name: UnsafePointer<UInt8>?, _ nameCount: Int,
                          _ value: UnsafePointer<UInt8>?, _ valueCount: Int) -> Bool {
            withUnsafeMutablePointers { counts, elements in
                let current = counts.pointee
                let added = nameCount &+ valueCount
                guard current.spanCount < current.spanCapacity,
                      added <= current.byteCapacity &- current.byteCount else { return false }
                let spans = UnsafeMutableRawPointer(elements).assumingMemoryBound(to: Span.self)
                spans[current.spanCount] = Span(nameStart: UInt32(truncatingIfNeeded: current.byteCount),
                                                nameCount: UInt32(truncatingIfNeeded: nameCount),
                                                valueCount: UInt32(truncatingIfNeeded: valueCount))
                let target = elements + (current.spanCapacity &* MemoryLayout<Span>.stride &+ current.byteCount)
                Self.copy(name, nameCount, to: target)
                Self.copy(value, valueCount, to: target + nameCount)
                counts.pointee.spanCount = current.spanCount &+ 1
                counts.pointee.byteCount = current.byteCount &+ added
                return true
            }
        }

        /// Copies `count` bytes, short runs (most names and values) with two overlapping
        /// word moves instead of a call to `memcpy`.
        @inlinable @inline(__always)
        static func copy(_ source: UnsafePointer<UInt8>?, _ count: Int, to target: UnsafeMutablePointer<UInt8>) {
            guard count > 0, let source else { return }
            let from = UnsafeRawPointer(source), to = UnsafeMutableRawPointer(target)
            switch count {
            case 8...16:
                let head = from.loadUnaligned(as: UInt64.self), tail = from.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self)
                to.storeBytes(of: head, as: UInt64.self)
                to.storeBytes(of: tail, toByteOffset: count &- 8, as: UInt64.self)
            case 4..<8:
                let head = from.loadUnaligned(as: UInt32.self), tail = from.loadUnaligned(fromByteOffset: count &- 4, as: UInt32.self)
                to.storeBytes(of: head, as: UInt32.self)
                to.storeBytes(of: tail, toByteOffset: count &- 4, as: UInt32.self)
            case 1..<4:
                target[0] = source[0]
                target[count &>> 1] = source[count &>> 1]
                target[count &- 1] = source[count &- 1]
            default:
                memcpy(to, from, count)
            }
        }
    }

    public init() {}

    /// Appends a field decoded by nghttp2 to the block an endpoint is receiving, whose storage
    /// nothing else refers to (from `HTTP2Recycler.takeBlock`; the endpoint moves a block out
    /// before anyone else sees it): copied in place when it fits, through `append` otherwise.
    @inline(__always)
    mutating func appendReceived(name: UnsafePointer<UInt8>?, nameCount: Int,
                                 value: UnsafePointer<UInt8>?, valueCount: Int) {
        if appendInPlace(name, nameCount, value, valueCount) {
            namesAreLowercase = false
            return
        }
        append(name: UnsafeBufferPointer(start: name, count: nameCount),
               value: UnsafeBufferPointer(start: value, count: valueCount))
    }

    /// Appends into the current storage when there is one and the field fits, without asking
    /// whether it is shared (the callers know it is not). The storage stays this block's
    /// during the call: no reference counted.
    @inlinable @inline(__always)
    mutating func appendInPlace(_ name: UnsafePointer<UInt8>?, _ nameCount: Int,
                                _ value: UnsafePointer<UInt8>?, _ valueCount: Int) -> Bool {
        guard storage != nil else { return false }
        return Unmanaged.passUnretained(storage.unsafelyUnwrapped)._withUnsafeGuaranteedRef {
            $0.appendIfRoom(name, nameCount, value, valueCount)
        }
    }

    /// Room a received block starts with: a typical head's fields and bytes. Storage of this
    /// size is kept for reuse (`HTTP2Recycler`); a block that grew past it is not.
    static let standardFields = 12
    static let standardBytes = 512

    /// An empty block with the standard room.
    init(standardCapacity: Void) {
        storage = Storage.make(fields: Self.standardFields, bytes: Self.standardBytes)
    }

    /// An empty block in `storage`, which nothing else refers to (from `takeStandardStorage`).
    init(emptied storage: Storage) {
        storage.header.spanCount = 0
        storage.header.byteCount = 0
        self.storage = storage
    }

    /// The block's storage, when it is of the standard size and the block holds the only
    /// reference to it; the block is left empty then.
    mutating func takeStandardStorage() -> Storage? {
        guard isKnownUniquelyReferenced(&storage) else { return nil }
        let counts = storage.unsafelyUnwrapped.header
        guard counts.spanCapacity == Self.standardFields && counts.byteCapacity == Self.standardBytes else {
            return nil
        }
        return storage.take()
    }

    public init(_ headers: [HTTP2Header]) {
        var total = 0
        for header in headers { total += header.name.count + header.value.count }
        reserveCapacity(fields: headers.count, bytes: total)
        for header in headers {
            header.name.withUnsafeBufferPointer { name in
                header.value.withUnsafeBufferPointer { value in append(name: name, value: value) }
            }
        }
    }

    /// Fields in the block.
    @inlinable public var count: Int { storage?.spanCount ?? 0 }
    @inlinable public var isEmpty: Bool { count == 0 }
    /// Bytes of all names and values.
    public var byteCount: Int { storage?.byteCount ?? 0 }

    public mutating func reserveCapacity(fields: Int, bytes: Int) {
        guard storage == nil else { return }
        storage = Storage.make(fields: fields, bytes: bytes)
    }

    @inlinable
    public mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        namesAreLowercase = false
        // Asked before any local reference to the storage exists (one would count as a sharer).
        if isKnownUniquelyReferenced(&storage),
           appendInPlace(name.baseAddress, name.count, value.baseAddress, value.count) { return }
        makeRoom(for: name.count + value.count)
        // Unshared now, with room for the field.
        _ = appendInPlace(name.baseAddress, name.count, value.baseAddress, value.count)
    }

    /// Unshared storage with room for one more field of `added` bytes: a copy (doubled where
    /// full) when the storage is shared or full, new storage when there is none.
    @usableFromInline mutating func makeRoom(for added: Int) {
        guard let counts = storage?.header else {
            storage = Storage.make(fields: 8, bytes: max(256, added))
            return
        }
        var byteCapacity = counts.byteCapacity
        while byteCapacity < counts.byteCount + added { byteCapacity *= 2 }
        let spanCapacity = counts.spanCount < counts.spanCapacity ? counts.spanCapacity : counts.spanCapacity * 2
        storage = storage.unsafelyUnwrapped.copy(fields: spanCapacity, bytes: byteCapacity)
    }

    public mutating func append<Name: Collection<UInt8>, Value: Collection<UInt8>>(name: Name, value: Value) {
        let name = Array(name), value = Array(value)
        name.withUnsafeBufferPointer { name in
            value.withUnsafeBufferPointer { value in append(name: name, value: value) }
        }
    }

    /// Calls `body` with the block's buffer and spans (valid during the call).
    @inlinable
    func withUnsafeFields<Result>(_ body: (_ bytes: UnsafePointer<UInt8>?, _ spans: UnsafeBufferPointer<Span>) -> Result)
        -> Result {
        guard let storage else { return body(nil, UnsafeBufferPointer(start: nil, count: 0)) }
        return withExtendedLifetime(storage) {
            body(UnsafePointer(storage.bytes), UnsafeBufferPointer(start: storage.spans, count: storage.spanCount))
        }
    }

    /// Whether `pointer` points into the block's buffer, its end included (where a
    /// zero-length field may point).
    func holds(_ pointer: UnsafePointer<UInt8>?) -> Bool {
        guard let pointer, let storage else { return false }
        let start = UnsafePointer(storage.bytes)
        return pointer >= start && pointer <= start + storage.byteCount
    }

    /// Calls `body` with every field's name and value, in order, until it returns false.
    @inlinable
    public func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool) {
        withUnsafeFields { bytes, spans in
            for span in spans {
                let name = UnsafeBufferPointer(start: bytes.map { $0 + Int(span.nameStart) }, count: Int(span.nameCount))
                let value = UnsafeBufferPointer(start: bytes.map { $0 + span.valueStart }, count: Int(span.valueCount))
                if !body(name, value) { return }
            }
        }
    }

    /// The same fields, whatever is known of them.
    public static func == (lhs: HTTP2HeaderBlock, rhs: HTTP2HeaderBlock) -> Bool {
        guard lhs.count == rhs.count, lhs.byteCount == rhs.byteCount else { return false }
        return lhs.withUnsafeFields { leftBytes, leftSpans in
            rhs.withUnsafeFields { rightBytes, rightSpans in
                guard leftSpans.elementsEqual(rightSpans) else { return false }
                guard let leftBytes, let rightBytes, lhs.byteCount > 0 else { return true }
                return memcmp(leftBytes, rightBytes, lhs.byteCount) == 0
            }
        }
    }

    /// Whether `bytes` (a field's name or value) are exactly `expected`: lengths first, then
    /// one `memcmp` (`elementsEqual` would compare byte by byte through iterators).
    @inlinable
    public static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ expected: [UInt8]) -> Bool {
        guard bytes.count == expected.count else { return false }
        guard let base = bytes.baseAddress else { return true }
        return expected.withUnsafeBufferPointer { memcmp(base, $0.baseAddress!, bytes.count) == 0 }
    }

    /// Whether `bytes` are exactly the text `expected` (a literal: its bytes are constant
    /// data, so nothing is loaded lazily or reference-counted to compare them).
    @inlinable
    public static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ expected: StaticString) -> Bool {
        HTTP1Grammar.equals(UnsafeRawBufferPointer(bytes), 0..<bytes.count, expected)
    }

    /// Whether `bytes` begin with the text `prefix` (a literal, see `equal`).
    @inlinable
    public static func starts(_ bytes: UnsafeBufferPointer<UInt8>, with prefix: StaticString) -> Bool {
        guard bytes.count >= prefix.utf8CodeUnitCount else { return false }
        return equal(UnsafeBufferPointer(rebasing: bytes[..<prefix.utf8CodeUnitCount]), prefix)
    }

    /// Whether `bytes` begin with `prefix` (see `equal`).
    @inlinable
    public static func starts(_ bytes: UnsafeBufferPointer<UInt8>, with prefix: [UInt8]) -> Bool {
        guard bytes.count >= prefix.count else { return false }
        return equal(UnsafeBufferPointer(rebasing: bytes[..<prefix.count]), prefix)
    }

    /// Whether `value` is a `:path` a request may carry (RFC 9113 §8.3.1: "the absolute-path
    /// production and optionally a '?' character followed by the query production", or `*`
    /// for a server-wide OPTIONS request), with the byte grammar HTTP/1.1 targets are held to
    /// (RFC 3986: pchar, "/", "?", "%" with two hex digits). nghttp2 only refuses controls and
    /// spaces, so raw non-ASCII, quotes or backslashes would otherwise be judged as text repaired
    /// into UTF-8 and forwarded as other bytes.
    public static func isValidPath(_ value: UnsafeBufferPointer<UInt8>, isOptions: Bool) -> Bool {
        let bytes = UnsafeRawBufferPointer(value)
        guard let first = bytes.first else { return false }
        if first == UInt8(ascii: "*") { return bytes.count == 1 && isOptions }
        return first == UInt8(ascii: "/") && HTTP1Grammar.isValidPathAndQuery(bytes, 0..<bytes.count)
    }

    /// The value of the first field named `name`.
    public func firstValue(named name: [UInt8]) -> [UInt8]? {
        withFirstValue(named: name) { $0.map(Array.init) }
    }

    /// Calls `body` with the value of the first field named `name` (nil: none), without copying it.
    public func withFirstValue<Result>(named name: [UInt8], _ body: (UnsafeBufferPointer<UInt8>?) -> Result) -> Result {
        var found: UnsafeBufferPointer<UInt8>?
        return withUnsafeFields { _, _ in
            forEachField { fieldName, value in
                guard Self.equal(fieldName, name) else { return true }
                found = value
                return false
            }
            return body(found)
        }
    }

    /// The `:status` of a response head as a number (nil: none, or not three digits).
    public var status: Int? {
        var found: UnsafeBufferPointer<UInt8>?
        return withUnsafeFields { _, _ in
            forEachField { name, value in
                guard Self.equal(name, ":status") else { return true }
                found = value
                return false
            }
            guard let value = found, value.count == 3 else { return nil }
            var status = 0
            for byte in value {
                guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                status = status * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return status
        }
    }

    /// The fields as `HTTP2Header`s (copies; for changing a block and for tests).
    public var headers: [HTTP2Header] {
        var result: [HTTP2Header] = []
        result.reserveCapacity(count)
        forEachField { name, value in
            result.append(HTTP2Header(name: Array(name), value: Array(value)))
            return true
        }
        return result
    }
}
