/// Values by HTTP/2 stream ID: an open-addressing table with linear probing and Fibonacci
/// hashing of the ID, for the few dozen lookups each request makes on a proxied connection
/// (a `Dictionary` would hash every one with SipHash).
///
/// Stream IDs are positive (RFC 9113 §5.1.1: "Streams are identified by an unsigned 31-bit
/// integer"; 0 is the connection), so 0 marks a free slot. The table holds at most half its
/// slots, doubles when it would hold more, and halves when a quarter of a large table's slots
/// would be left used, so its memory follows the streams open now, not those seen before. A
/// peer chooses its stream IDs, but they only grow (§5.1.1) and the hash spreads runs of them.
public struct HTTP2StreamTable<Value> {
    // Inlinable throughout, so the proxy's uses are specialised for their value types (a
    // generic call across modules would look up type metadata at run time on every access).
    @usableFromInline var keys: [Int32] = []
    @usableFromInline var values: [Value?] = []
    /// log2 of the slot count (0 while nothing is allocated).
    @usableFromInline var shift = 0
    @usableFromInline var occupied = 0

    /// The smallest table allocated (slots).
    @usableFromInline static var minimumSlots: Int { 8 }

    @inlinable public init() {}

    /// Streams in the table.
    @inlinable public var count: Int { occupied }

    /// Slots allocated (for tests of the table's memory).
    var slotCount: Int { keys.count }

    @inlinable public var isEmpty: Bool { occupied == 0 }

    @inlinable public func contains(_ stream: Int32) -> Bool { find(stream) != nil }

    @inlinable public subscript(stream: Int32) -> Value? {
        get {
            guard let index = find(stream) else { return nil }
            return values[index]
        }
        set {
            guard let newValue else {
                _ = removeValue(forKey: stream)
                return
            }
            insert(stream, newValue)
        }
    }

    /// Changes the value of `stream` in place (nothing when absent); returns whether it was there.
    @inlinable @discardableResult
    public mutating func update(_ stream: Int32, _ change: (inout Value) -> Void) -> Bool {
        guard let index = find(stream) else { return false }
        change(&values[index]!)
        return true
    }

    /// What `body` reads from the value of `stream`, without copying the value out (nil
    /// when absent).
    @inlinable
    public func read<Result>(_ stream: Int32, _ body: (Value) -> Result) -> Result? {
        guard let index = find(stream) else { return nil }
        return body(values[index].unsafelyUnwrapped)
    }

    @inlinable @discardableResult
    public mutating func removeValue(forKey stream: Int32) -> Value? {
        guard var index = find(stream) else { return nil }
        let removed = values[index].take()
        let mask = keys.count - 1
        // Backward-shift deletion: each following entry of the run moves into the hole when
        // its home slot does not lie between the hole and itself (cyclically).
        var next = (index + 1) & mask
        while keys[next] != 0 {
            let home = slot(keys[next])
            let fromHome = (next - home) & mask, fromHole = (next - index) & mask
            if fromHome >= fromHole {
                keys[index] = keys[next]
                values[index] = values[next].take()
                index = next
            }
            next = (next + 1) & mask
        }
        keys[index] = 0
        values[index] = nil
        occupied -= 1
        if keys.count > 64 && occupied * 4 < keys.count / 2 { resize(to: shift - 1) }
        return removed
    }

    /// Every entry, in no particular order (a copy: the table may change while it is used).
    @inlinable public var entries: [(stream: Int32, value: Value)] {
        var result: [(stream: Int32, value: Value)] = []
        result.reserveCapacity(occupied)
        for index in keys.indices where keys[index] != 0 { result.append((keys[index], values[index]!)) }
        return result
    }

    @inlinable public mutating func removeAll() {
        keys = []
        values = []
        shift = 0
        occupied = 0
    }

    // MARK: Slots

    @inlinable @inline(__always)
    func slot(_ stream: Int32) -> Int {
        Int(truncatingIfNeeded: (UInt32(bitPattern: stream) &* 0x9E37_79B1) >> UInt32(32 - shift))
    }

    @inlinable @inline(__always)
    func find(_ stream: Int32) -> Int? {
        guard occupied > 0, stream > 0 else { return nil }
        let mask = keys.count - 1
        var index = slot(stream)
        while true {
            let key = keys[index]
            if key == stream { return index }
            if key == 0 { return nil }
            index = (index + 1) & mask
        }
    }

    /// Taken over (`consuming`): a caller's last use of a value moves it in, counting no reference.
    @inlinable
    mutating func insert(_ stream: Int32, _ value: consuming Value) {
        precondition(stream > 0, "HTTP/2 stream IDs are positive")
        if (occupied + 1) * 2 > keys.count {
            resize(to: max(shift + 1, Self.minimumSlots.trailingZeroBitCount))
        }
        let mask = keys.count - 1
        var index = slot(stream)
        while keys[index] != 0 && keys[index] != stream { index = (index + 1) & mask }
        if keys[index] == 0 { occupied += 1 }
        keys[index] = stream
        values[index] = consume value
    }

    @inlinable
    mutating func resize(to newShift: Int) {
        let oldKeys = keys, oldValues = values
        shift = newShift
        keys = Array(repeating: 0, count: 1 << newShift)
        values = Array(repeating: nil, count: 1 << newShift)
        let mask = keys.count - 1
        for index in oldKeys.indices where oldKeys[index] != 0 {
            var target = slot(oldKeys[index])
            while keys[target] != 0 { target = (target + 1) & mask }
            keys[target] = oldKeys[index]
            values[target] = oldValues[index]
        }
    }
}
