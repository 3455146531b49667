/// Where a recorded HTTP/1 stream that was entered part-way (a capture started while the
/// connection was open) can be picked up: the first line that is a whole request line, or a
/// whole status line, starting at a line boundary. A heuristic for recordings only (a body
/// may contain such a line); the live proxy always sees connections from their first byte.
public enum HTTP1Resync {
    /// The methods a request line may start with when entering a stream part-way: the
    /// registered ones clients send (an unknown token would make any text a candidate).
    static let methods: [[UInt8]] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        .map { Array($0.utf8) }

    /// The offset of the first whole request line (`METHOD SP target SP HTTP/1.x CRLF`)
    /// that starts a line in `bytes`; `atLineStart` tells whether `bytes` itself begins one
    /// (the stream's previous byte was a line feed).
    public static func requestStart(in bytes: UnsafeRawBufferPointer, atLineStart: Bool) -> Int? {
        firstLine(in: bytes, atLineStart: atLineStart, where: isRequestLine)
    }

    /// The offset of the first whole status line (`HTTP/1.x SP 3DIGIT ...CRLF`) that
    /// starts a line in `bytes`.
    public static func responseStart(in bytes: UnsafeRawBufferPointer, atLineStart: Bool) -> Int? {
        firstLine(in: bytes, atLineStart: atLineStart, where: isStatusLine)
    }

    private static func firstLine(in bytes: UnsafeRawBufferPointer, atLineStart: Bool,
                                  where matches: (UnsafeRawBufferPointer) -> Bool) -> Int? {
        var start = atLineStart ? 0 : nil as Int?
        var index = 0
        while index < bytes.count {
            guard let lineStart = start else {
                guard let feed = bytes[index...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
                start = feed + 1
                index = feed + 1
                continue
            }
            guard let feed = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            var end = feed
            if end > lineStart && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            if matches(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<end])) { return lineStart }
            start = feed + 1
            index = feed + 1
        }
        return nil
    }

    /// `METHOD SP target SP HTTP/1.x`, the target visible ASCII.
    static func isRequestLine(_ line: UnsafeRawBufferPointer) -> Bool {
        guard let method = methods.first(where: { line.starts(with: $0) && line.count > $0.count && line[$0.count] == 0x20 })
        else { return false }
        let targetStart = method.count + 1
        guard line.count >= targetStart + 1 + 9 else { return false }
        let versionStart = line.count - 8
        guard line[versionStart - 1] == 0x20, isVersion(UnsafeRawBufferPointer(rebasing: line[versionStart...])) else {
            return false
        }
        let target = line[targetStart..<(versionStart - 1)]
        return !target.isEmpty && target.allSatisfy { $0 > 0x20 && $0 < 0x7f }
    }

    /// `HTTP/1.x SP 3DIGIT` then a space or the end of the line.
    static func isStatusLine(_ line: UnsafeRawBufferPointer) -> Bool {
        guard line.count >= 12, isVersion(UnsafeRawBufferPointer(rebasing: line[0..<8])), line[8] == 0x20,
              line[9...11].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return false }
        return line.count == 12 || line[12] == 0x20
    }

    private static func isVersion(_ text: UnsafeRawBufferPointer) -> Bool {
        text.count == 8 && text.starts(with: Array("HTTP/1.".utf8)) && (text[7] == 0x30 || text[7] == 0x31)
    }
}
