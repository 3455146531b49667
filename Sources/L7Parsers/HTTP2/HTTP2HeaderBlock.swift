#if canImport(Glibc)
import Glibc
#endif

/// The fields of one HTTP/2 header block (a request or response head, trailers), as bytes:
/// every name and value back to back in one buffer, and where each one is. A received block
/// is filled as nghttp2 decodes it and handed on as it is; a forwarded one is passed to
/// nghttp2 pointing into the same buffer. Reading a field copies nothing and counts no
/// references (an array of `HTTP2Header` would hold two slices, two references, a field).
public struct HTTP2HeaderBlock: Equatable, Sendable {
    @usableFromInline var storage: [UInt8] = []
    @usableFromInline var spans: [Span] = []

    @usableFromInline struct Span: Equatable, Sendable {
        @usableFromInline var nameStart: UInt32
        @usableFromInline var nameCount: UInt32
        @usableFromInline var valueCount: UInt32

        @inlinable var valueStart: Int { Int(nameStart) + Int(nameCount) }
    }

    public init() {}

    public init(_ headers: [HTTP2Header]) {
        var total = 0
        for header in headers { total += header.name.count + header.value.count }
        storage.reserveCapacity(total)
        spans.reserveCapacity(headers.count)
        for header in headers { append(name: header.name, value: header.value) }
    }

    /// Fields in the block.
    @inlinable public var count: Int { spans.count }
    @inlinable public var isEmpty: Bool { spans.isEmpty }
    /// Bytes of all names and values.
    public var byteCount: Int { storage.count }

    public mutating func reserveCapacity(fields: Int, bytes: Int) {
        spans.reserveCapacity(fields)
        storage.reserveCapacity(bytes)
    }

    public mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        spans.append(Span(nameStart: UInt32(storage.count), nameCount: UInt32(name.count),
                          valueCount: UInt32(value.count)))
        storage.append(contentsOf: name)
        storage.append(contentsOf: value)
    }

    public mutating func append<Name: Collection<UInt8>, Value: Collection<UInt8>>(name: Name, value: Value) {
        spans.append(Span(nameStart: UInt32(storage.count), nameCount: UInt32(name.count),
                          valueCount: UInt32(value.count)))
        storage.append(contentsOf: name)
        storage.append(contentsOf: value)
    }

    /// Calls `body` with every field's name and value, in order, until it returns false.
    @inlinable
    public func forEachField(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Bool) {
        storage.withUnsafeBufferPointer { bytes in
            guard let base = bytes.baseAddress else {
                // Only fields with empty names and values: no buffer to point into.
                let empty = UnsafeBufferPointer<UInt8>(start: nil, count: 0)
                for _ in spans where !body(empty, empty) { return }
                return
            }
            for span in spans {
                let name = UnsafeBufferPointer(start: base + Int(span.nameStart), count: Int(span.nameCount))
                let value = UnsafeBufferPointer(start: base + span.valueStart, count: Int(span.valueCount))
                if !body(name, value) { return }
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

    /// Whether `bytes` begin with `prefix` (see `equal`).
    @inlinable
    public static func starts(_ bytes: UnsafeBufferPointer<UInt8>, with prefix: [UInt8]) -> Bool {
        guard bytes.count >= prefix.count else { return false }
        return equal(UnsafeBufferPointer(rebasing: bytes[..<prefix.count]), prefix)
    }

    /// The value of the first field named `name`.
    public func firstValue(named name: [UInt8]) -> [UInt8]? {
        var found: [UInt8]?
        forEachField { fieldName, value in
            guard Self.equal(fieldName, name) else { return true }
            found = Array(value)
            return false
        }
        return found
    }

    /// The fields as `HTTP2Header`s (copies; for changing a block and for tests).
    public var headers: [HTTP2Header] {
        var result: [HTTP2Header] = []
        result.reserveCapacity(spans.count)
        forEachField { name, value in
            result.append(HTTP2Header(name: Array(name), value: Array(value)))
            return true
        }
        return result
    }
}
