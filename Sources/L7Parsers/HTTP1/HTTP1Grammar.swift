/// Byte classes of RFC 9110/9112 and RFC 3986, as switch tables the compiler turns into
/// jumps; nothing here allocates.
@usableFromInline enum HTTP1Grammar {
    static let carriageReturn: UInt8 = 0x0D
    static let lineFeed: UInt8 = 0x0A
    static let space: UInt8 = 0x20
    static let horizontalTab: UInt8 = 0x09
    static let colon = UInt8(ascii: ":")

    /// RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
    /// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA.
    @inline(__always) static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"),
             UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// RFC 9110 §5.5: field-value = *field-content, field-vchar = VCHAR / obs-text, with SP
    /// and HTAB inside. Rejects every other control byte (NUL, CR, LF, DEL).
    @inline(__always) static func isFieldValueByte(_ byte: UInt8) -> Bool {
        byte == horizontalTab || (byte >= 0x20 && byte != 0x7F)
    }

    /// The offset of the first byte in `range` of `bytes` that is not a field-value byte, or
    /// nil when all are. Eight bytes are checked at a time while none of them is below 0x20
    /// or DEL (so a word holding HTAB, valid but below 0x20, is checked byte by byte, as is
    /// everything after a word that may hold an invalid byte).
    @inline(__always)
    static func firstInvalidFieldValueByte(_ bytes: UnsafeRawBufferPointer, in range: Range<Int>) -> Int? {
        var index = range.lowerBound
        if let base = bytes.baseAddress {
            let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
            while index + 8 <= range.upperBound {
                let word = base.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                let below20 = (word &- ones &* 0x20) & ~word
                let delete = word ^ (ones &* 0x7F)
                let isDelete = (delete &- ones) & ~delete
                if (below20 | isDelete) & highs != 0 { break }
                index += 8
            }
        }
        while index < range.upperBound {
            if !isFieldValueByte(bytes[index]) { return index }
            index += 1
        }
        return nil
    }

    @inline(__always) static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == space || byte == horizontalTab
    }

    @inline(__always) static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    @inline(__always) static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(byte - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    @inline(__always) static func isAlpha(_ byte: UInt8) -> Bool {
        (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z")
    }

    /// RFC 3986: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~".
    @inline(__always) static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// RFC 3986: sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "=".
    @inline(__always) static func isSubDelimiter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"),
             UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="):
            return true
        default:
            return false
        }
    }

    /// Bytes of origin-form (RFC 9112 §3.2.1: absolute-path [ "?" query ]): pchar, "/" and
    /// "?", where pchar = unreserved / pct-encoded / sub-delims / ":" / "@". "%" is checked
    /// for its two hex digits separately. No "#": a fragment is never sent.
    @inline(__always) static func isPathOrQueryByte(_ byte: UInt8) -> Bool {
        isUnreserved(byte) || isSubDelimiter(byte) || byte == UInt8(ascii: ":")
            || byte == UInt8(ascii: "@") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "?")
            || byte == UInt8(ascii: "%")
    }

    /// `isPathOrQueryByte` as two 64-bit masks over 0-127 (one shift and test a byte, for the
    /// per-request scan of every path; `HTTP1GrammarTests` checks both agree on all 256 bytes).
    @inline(__always) static func isPathOrQueryByteByMask(_ byte: UInt8) -> Bool {
        let low: UInt64 = 0xAFFF_FFF2_0000_0000, high: UInt64 = 0x47FF_FFFE_87FF_FFFF
        guard byte < 128 else { return false }
        return (byte < 64 ? low : high) &>> UInt64(byte & 63) & 1 == 1
    }

    /// pchar / "/" / "?" with every "%" followed by two hex digits (RFC 3986 §2.1).
    static func isValidPathAndQuery(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        var position = range.lowerBound
        while position < range.upperBound {
            let byte = bytes[position]
            guard isPathOrQueryByteByMask(byte) else { return false }
            if byte == UInt8(ascii: "%") {
                guard position + 2 < range.upperBound,
                      hexValue(bytes[position + 1]) != nil,
                      hexValue(bytes[position + 2]) != nil else { return false }
                position += 3
            } else {
                position += 1
            }
        }
        return true
    }

    /// RFC 9112 §7.1.1 quoted-string inside chunk extensions: qdtext (HTAB, SP, 0x21,
    /// 0x23-0x5B, 0x5D-0x7E, obs-text).
    @inline(__always) static func isQuotedTextByte(_ byte: UInt8) -> Bool {
        byte == horizontalTab || byte == space || byte == 0x21 || (byte >= 0x23 && byte <= 0x5B)
            || (byte >= 0x5D && byte <= 0x7E) || byte >= 0x80
    }

    /// Whether `bytes[range]` equals `lowercase` ignoring ASCII case. `lowercase` holds only
    /// lower-case letters, digits and "-", so folding with 0x20 cannot make a false match
    /// from a token byte.
    @inline(__always)
    static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>,
                                   _ lowercase: StaticString) -> Bool {
        guard range.count == lowercase.utf8CodeUnitCount else { return false }
        let literal = lowercase.utf8Start
        var index = 0
        for position in range {
            if bytes[position] | 0x20 != literal[index] | 0x20 { return false }
            index += 1
        }
        return true
    }

    /// Whether two ranges of `bytes` hold the same bytes ignoring ASCII letter case.
    static func equalIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ first: Range<Int>, _ second: Range<Int>) -> Bool {
        guard first.count == second.count else { return false }
        for offset in 0..<first.count {
            let a = bytes[first.lowerBound + offset], b = bytes[second.lowerBound + offset]
            if a != b && !(isAlpha(a) && a | 0x20 == b | 0x20) { return false }
        }
        return true
    }

    /// Whether `bytes[range]` equals `literal` exactly (methods are case-sensitive).
    @inlinable @inline(__always)
    static func equals(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ literal: StaticString) -> Bool {
        guard range.count == literal.utf8CodeUnitCount else { return false }
        let start = literal.utf8Start
        var index = 0
        for position in range {
            if bytes[position] != start[index] { return false }
            index += 1
        }
        return true
    }

    /// Calls `body` with each comma-separated element of `bytes[range]`, trimmed of OWS
    /// (RFC 9110 §5.6.1). Stops early and returns false when `body` does.
    @inline(__always)
    static func forEachListElement(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>,
                                   _ body: (Range<Int>) -> Bool) -> Bool {
        var elementStart = range.lowerBound
        var position = range.lowerBound
        while position <= range.upperBound {
            if position == range.upperBound || bytes[position] == UInt8(ascii: ",") {
                var start = elementStart, end = position
                while start < end && isWhitespace(bytes[start]) { start += 1 }
                while end > start && isWhitespace(bytes[end - 1]) { end -= 1 }
                if !body(start..<end) { return false }
                elementStart = position + 1
            }
            position += 1
        }
        return true
    }
}
