import Testing
@testable import L7Parsers

/// Adapts `HTTP1Parser` to the shared split-feed verifier. Records hold the bytes a range
/// names (as strings) and absolute stream offsets, so a parser that reported different
/// ranges for different slicings of the same input fails the comparison.
struct HTTP1HeadRecord: Equatable, CustomStringConvertible {
    var start: Int
    var length: Int
    var method = ""
    var target = ""
    var version = ""
    var status = 0
    var reason = ""
    var fields: [[String]] = []
    var host: String? = nil
    var framing: HTTP1Framing = .none
    var keepAlive = true
    var expectsContinue = false
    var upgradeRequested = false
    var isConnect = false
    var switchesProtocol = false
    var isInformational = false
    var targetForm: HTTP1TargetForm = .origin
    var path = ""
    var authority: String? = nil

    var description: String {
        status == 0 ? "head(\(method) \(target) \(version) @\(start)+\(length) \(framing))"
                    : "head(\(version) \(status) @\(start)+\(length) \(framing))"
    }
}

enum HTTP1Record: SplitFeedRecord {
    case head(HTTP1HeadRecord)
    case body(Range<Int>)
    case chunkFraming(Range<Int>)
    case complete(end: Int, trailers: [[String]])
    case tunnel(Range<Int>)
    case error(HTTP1ParseError.Kind, status: Int, offset: Int)
    case truncated

    func merged(with next: HTTP1Record) -> HTTP1Record? {
        switch (self, next) {
        case (.body(let first), .body(let second)) where first.upperBound == second.lowerBound:
            return .body(first.lowerBound..<second.upperBound)
        case (.tunnel(let first), .tunnel(let second)) where first.upperBound == second.lowerBound:
            return .tunnel(first.lowerBound..<second.upperBound)
        default:
            return nil
        }
    }

    func shifted(by offset: Int) -> HTTP1Record {
        switch self {
        case .head(var head): head.start += offset; return .head(head)
        case .body(let range): return .body((range.lowerBound + offset)..<(range.upperBound + offset))
        case .chunkFraming(let range): return .chunkFraming((range.lowerBound + offset)..<(range.upperBound + offset))
        case .complete(let end, let trailers): return .complete(end: end + offset, trailers: trailers)
        case .tunnel(let range): return .tunnel((range.lowerBound + offset)..<(range.upperBound + offset))
        case .error(let kind, let status, let at): return .error(kind, status: status, offset: at + offset)
        case .truncated: return .truncated
        }
    }

    var completesMessage: Bool {
        if case .complete = self { return true }
        return false
    }

    var isFailure: Bool {
        switch self {
        case .error, .truncated: return true
        default: return false
        }
    }

    var description: String {
        switch self {
        case .head(let head): return head.description
        case .body(let range): return "body(\(range))"
        case .chunkFraming(let range): return "framing(\(range))"
        case .complete(let end, let trailers): return "complete(@\(end)\(trailers.isEmpty ? "" : " \(trailers)"))"
        case .tunnel(let range): return "tunnel(\(range))"
        case .error(let kind, let status, let offset): return "error(\(kind) \(status) @\(offset))"
        case .truncated: return "truncated"
        }
    }

    var head: HTTP1HeadRecord? {
        if case .head(let head) = self { return head }
        return nil
    }
}

func string(_ buffer: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
    String(decoding: UnsafeRawBufferPointer(rebasing: buffer[range]), as: UTF8.self)
}

struct HTTP1SplitDecoder: SplitFeedDecoder {
    var parser: HTTP1Parser

    init(direction: TrafficDirection, limits: HTTP1Limits = .standard, answering requests: [HTTP1RequestSummary] = []) {
        parser = HTTP1Parser(direction: direction, limits: limits)
        requests.forEach { parser.expectResponse(to: $0) }
    }

    mutating func decode(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> SplitFeedOutcome<HTTP1Record> {
        buffer.withUnsafeBytes { bytes in
            switch parser.parse(bytes) {
            case .needMore(let minimum):
                precondition(minimum >= 1, "needMore must ask for at least one byte")
                return .needMore
            case .head(let head):
                var record = HTTP1HeadRecord(start: streamOffset, length: head.length)
                record.method = string(bytes, head.method)
                record.target = string(bytes, head.target)
                record.version = head.version.description
                record.status = head.statusCode
                record.reason = string(bytes, head.reason)
                record.fields = head.fields.map { [string(bytes, $0.name), string(bytes, $0.value)] }
                record.host = head.host.map { string(bytes, $0) }
                record.framing = head.framing
                record.keepAlive = head.keepAlive
                record.expectsContinue = head.expectsContinue
                record.upgradeRequested = head.upgradeRequested
                record.isConnect = head.isConnect
                record.switchesProtocol = head.switchesProtocol
                record.isInformational = head.isInformational
                record.targetForm = head.targetForm
                record.path = string(bytes, head.path)
                record.authority = head.authority.map { string(bytes, $0) }
                // The field lines tile the header section exactly (the header-rewriting seam).
                var expectedLineStart = head.startLine.upperBound + 2
                for field in head.fields {
                    precondition(field.line.lowerBound == expectedLineStart, "field lines must tile the section")
                    expectedLineStart = field.line.upperBound
                }
                precondition(expectedLineStart + 2 == head.length, "the head ends with the empty line")
                return .consumed(head.length, [.head(record)])
            case .body(let count):
                return .consumed(count, [.body(streamOffset..<(streamOffset + count))])
            case .chunkFraming(let count):
                return .consumed(count, [.chunkFraming(streamOffset..<(streamOffset + count))])
            case .messageComplete(let consumed, let trailers):
                let fields = trailers.map { [string(bytes, $0.name), string(bytes, $0.value)] }
                return .consumed(consumed, [.complete(end: streamOffset + consumed, trailers: fields)])
            case .tunnel(let count):
                return .consumed(count, [.tunnel(streamOffset..<(streamOffset + count))])
            case .error(let error):
                return .failed(.error(error.kind, status: error.status, offset: streamOffset + error.offset))
            }
        }
    }

    mutating func finish(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> [HTTP1Record] {
        switch parser.endOfInput(unconsumedBytes: buffer.count) {
        case .cleanClose: return []
        case .messageComplete: return [.complete(end: streamOffset, trailers: [])]
        case .truncated: return [.truncated]
        }
    }
}

/// Runs `text` through every slicing as requests and returns the records of the whole input.
@discardableResult
func verifyRequests(_ text: String, limits: HTTP1Limits = .standard, backToBack: Bool = true,
                    sourceLocation: SourceLocation = #_sourceLocation) -> [HTTP1Record] {
    SplitFeedVerifier { HTTP1SplitDecoder(direction: .request, limits: limits) }
        .verify(Array(text.utf8), backToBack: backToBack, sourceLocation: sourceLocation)
}

/// Runs `text` through every slicing as responses to `requests` (repeated for back-to-back).
@discardableResult
func verifyResponses(_ text: String, to requests: [HTTP1RequestSummary], limits: HTTP1Limits = .standard,
                     backToBack: Bool = true, prefixesNeedMore: Bool = true,
                     sourceLocation: SourceLocation = #_sourceLocation) -> [HTTP1Record] {
    SplitFeedVerifier { HTTP1SplitDecoder(direction: .response, limits: limits, answering: requests + requests + requests) }
        .verify(Array(text.utf8), backToBack: backToBack, prefixesNeedMore: prefixesNeedMore, sourceLocation: sourceLocation)
}
