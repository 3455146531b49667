import Testing
@testable import L7Parsers

/// The word-at-a-time scan of field values against the byte-wise definition (RFC 9110 §5.5:
/// field-value bytes are VCHAR, obs-text, SP and HTAB), on every byte value at every
/// position of words and tails, and on random lines.
@Suite struct HTTP1GrammarTests {
    static func naive(_ bytes: [UInt8], _ range: Range<Int>) -> Int? {
        range.first { !HTTP1Grammar.isFieldValueByte(bytes[$0]) }
    }

    @Test func everyByteValueAtEveryPositionIsFoundWhereTheByteWiseScanFindsIt() {
        for length in [1, 7, 8, 9, 16, 23] {
            for position in 0..<length {
                for byte in 0...255 {
                    var line = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    line[position] = UInt8(byte)
                    for start in [0, min(1, length)] {
                        let found = line.withUnsafeBytes { HTTP1Grammar.firstInvalidFieldValueByte($0, in: start..<length) }
                        #expect(found == Self.naive(line, start..<length), "byte \(byte) at \(position) of \(length)")
                    }
                }
            }
        }
    }

    @Test func randomLinesAgreeWithTheByteWiseScan() {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x41, 0x7E, 0x7F, 0x80, 0xFF]
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...48, using: &generator)
            let line = (0..<length).map { _ in
                Int.random(in: 0..<4, using: &generator) == 0 ? alphabet.randomElement(using: &generator)!
                    : UInt8.random(in: 0x20...0x7E, using: &generator)
            }
            let start = length == 0 ? 0 : Int.random(in: 0...length, using: &generator)
            let found = line.withUnsafeBytes { HTTP1Grammar.firstInvalidFieldValueByte($0, in: start..<length) }
            #expect(found == Self.naive(line, start..<length), "\(line) from \(start)")
        }
    }

    @Test func thePathByteMasksAgreeWithTheGrammarOnEveryByte() {
        for byte in 0...255 {
            #expect(HTTP1Grammar.isPathOrQueryByteByMask(UInt8(byte)) == HTTP1Grammar.isPathOrQueryByte(UInt8(byte)),
                    "byte \(byte)")
        }
    }
}
