import Testing

/// The shared split-feed verifier every L7 parser test runs its cases through
/// (swift-nio's ByteToMessageDecoderVerifier, proxylib's multi-slice inputs).
///
/// A parser is adapted to `SplitFeedDecoder`: it is handed the unconsumed bytes at the front
/// of a growing buffer and answers "need more", "consumed n bytes, producing these records",
/// or "failed". The verifier plays the driver: it appends input in slices, calls until the
/// decoder needs more, and removes what was consumed. It then checks that the records do
/// not depend on how the input was sliced:
/// - the input whole;
/// - split in two at every offset;
/// - one byte at a time;
/// - for valid input, the input repeated back to back (records repeat, shifted);
/// - for valid input, every proper prefix ends in "need more": no failure, and fewer
///   completed messages than the whole input.
/// Records carry absolute stream offsets, so a decoder that reports different ranges for
/// different slicings fails the comparison.
protocol SplitFeedDecoder {
    associatedtype Record: SplitFeedRecord
    /// Decodes from the front of `buffer`, whose first byte is at `streamOffset` of the input.
    mutating func decode(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> SplitFeedOutcome<Record>
    /// The input ended with `buffer` still unconsumed; the records this produces (a body
    /// delimited by the close, a truncation error), or none.
    mutating func finish(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> [Record]
}

enum SplitFeedOutcome<Record> {
    case needMore
    /// `count` bytes consumed (possibly 0 when records were produced without bytes).
    case consumed(Int, [Record])
    /// The input is invalid; decoding stops.
    case failed(Record)
}

protocol SplitFeedRecord: Equatable, CustomStringConvertible {
    /// This record followed by `next` as one record, when a slicing may cut one into two
    /// (body bytes), else nil.
    func merged(with next: Self) -> Self?
    /// The same record for input that starts `offset` bytes later.
    func shifted(by offset: Int) -> Self
    /// Whether this record ends a message.
    var completesMessage: Bool { get }
    /// Whether this record is a failure.
    var isFailure: Bool { get }
}

struct SplitFeedVerifier<Decoder: SplitFeedDecoder> {
    typealias Record = Decoder.Record
    let makeDecoder: () -> Decoder

    /// The outcome of feeding one slicing.
    struct Run {
        var records: [Record] = []
        var endedNeedingMore = false
        var failed: Bool { records.last?.isFailure ?? false }
    }

    /// Feeds `slices` in order to a fresh decoder; `finish` when `callFinish`.
    func run(_ slices: [ArraySlice<UInt8>], callFinish: Bool) -> Run {
        var decoder = makeDecoder()
        var buffer: [UInt8] = []
        var consumedTotal = 0
        var run = Run()
        var calls = 0
        func append(_ record: Record) {
            if let last = run.records.last, let merged = last.merged(with: record) {
                run.records[run.records.count - 1] = merged
            } else {
                run.records.append(record)
            }
        }
        feeding: for slice in slices {
            buffer.append(contentsOf: slice)
            while true {
                calls += 1
                precondition(calls < 10_000_000, "decoder makes no progress")
                switch decoder.decode(buffer[...], streamOffset: consumedTotal) {
                case .needMore:
                    run.endedNeedingMore = true
                    continue feeding
                case .consumed(let count, let records):
                    precondition(count <= buffer.count, "decoder consumed more than it was given")
                    precondition(count > 0 || !records.isEmpty, "decoder made no progress")
                    records.forEach(append)
                    buffer.removeFirst(count)
                    consumedTotal += count
                    run.endedNeedingMore = false
                case .failed(let record):
                    append(record)
                    run.endedNeedingMore = false
                    return run
                }
            }
        }
        if callFinish {
            decoder.finish(buffer[...], streamOffset: consumedTotal).forEach(append)
        }
        return run
    }

    /// Runs every slicing of `input` and checks they agree; returns the records of the
    /// whole input for the test's own assertions. `backToBack` repeats valid input three
    /// times (turn it off where the framing is "until close"). `prefixesNeedMore` checks
    /// every proper prefix (turn it off only where the input is complete messages followed
    /// by bytes that are not messages, such as a relay after a protocol switch).
    @discardableResult
    func verify(_ input: [UInt8], backToBack: Bool = true, callFinish: Bool = true, prefixesNeedMore: Bool = true,
                sourceLocation: SourceLocation = #_sourceLocation) -> [Record] {
        let bytes = input[...]
        let whole = run([bytes], callFinish: callFinish)

        for split in 0...input.count {
            let halves = run([bytes[..<split], bytes[split...]], callFinish: callFinish)
            if halves.records != whole.records {
                Issue.record("split at \(split) differs:\n  whole: \(whole.records)\n  split: \(halves.records)",
                             sourceLocation: sourceLocation)
                break
            }
        }

        let byteByByte = run(input.indices.map { bytes[$0..<($0 + 1)] }, callFinish: callFinish)
        #expect(byteByByte.records == whole.records, "byte by byte differs:\n  whole: \(whole.records)\n  bytes: \(byteByByte.records)",
                sourceLocation: sourceLocation)

        guard !whole.failed else { return whole.records }
        let completions = whole.records.filter(\.completesMessage).count

        for length in 0..<input.count where prefixesNeedMore {
            let prefix = run([bytes[..<length]], callFinish: false)
            if prefix.failed || !prefix.endedNeedingMore || prefix.records.filter(\.completesMessage).count >= max(completions, 1) {
                Issue.record("prefix of \(length) bytes does not say need more: \(prefix.records)",
                             sourceLocation: sourceLocation)
                break
            }
        }

        if backToBack && completions > 0 {
            let repeated = run([bytes, bytes, bytes], callFinish: callFinish)
            var expected: [Record] = []
            for copy in 0..<3 {
                for record in whole.records.map({ $0.shifted(by: copy * input.count) }) {
                    if let last = expected.last, let merged = last.merged(with: record) {
                        expected[expected.count - 1] = merged
                    } else {
                        expected.append(record)
                    }
                }
            }
            #expect(repeated.records == expected, "back to back differs:\n  expected: \(expected)\n  got: \(repeated.records)",
                    sourceLocation: sourceLocation)
        }
        return whole.records
    }
}
