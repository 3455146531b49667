import Testing
@testable import L7Parsers

/// The verifier must catch decoders that depend on how input is sliced; otherwise every
/// parser test built on it proves nothing.
@Suite struct SplitFeedVerifierSelfTests {
    /// Reports whatever bytes each call has as one unmergeable record: slicing shows.
    struct SliceSensitiveDecoder: SplitFeedDecoder {
        mutating func decode(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> SplitFeedOutcome<HTTP1Record> {
            guard !buffer.isEmpty else { return .needMore }
            return .consumed(buffer.count, [.chunkFraming(streamOffset..<(streamOffset + buffer.count))])
        }
        mutating func finish(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> [HTTP1Record] { [] }
    }

    /// Treats the end of each call's bytes as the end of the message: prefixes complete.
    struct EagerDecoder: SplitFeedDecoder {
        mutating func decode(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> SplitFeedOutcome<HTTP1Record> {
            guard !buffer.isEmpty else { return .needMore }
            return .consumed(buffer.count, [.complete(end: streamOffset + buffer.count, trailers: [])])
        }
        mutating func finish(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> [HTTP1Record] { [] }
    }

    @Test func flagsASliceSensitiveDecoder() {
        withKnownIssue {
            SplitFeedVerifier { SliceSensitiveDecoder() }.verify(Array("abcdef".utf8))
        }
    }

    @Test func flagsADecoderThatCompletesPrefixes() {
        withKnownIssue {
            SplitFeedVerifier { EagerDecoder() }.verify(Array("abcdef".utf8), backToBack: false)
        }
    }

    @Test func passesTheHTTP1Parser() {
        let records = SplitFeedVerifier { HTTP1SplitDecoder(direction: .request) }
            .verify(Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        #expect(records.count == 2)
    }
}
