import Testing
@testable import L7Parsers

/// What the response side of `HTTP1Connection` does for each byte a server sends, as
/// split-feed records: the bytes passed to the client (merged), each final response
/// completed, and a failure with whether the proxy may still answer 502 in the server's place.
enum HTTP1RelayRecord: SplitFeedRecord {
    case passed(Range<Int>)
    case responseCompleted(at: Int)
    case failed(canAnswerInsteadOfServer: Bool)
    case truncated

    func merged(with next: HTTP1RelayRecord) -> HTTP1RelayRecord? {
        if case .passed(let first) = self, case .passed(let second) = next, first.upperBound == second.lowerBound {
            return .passed(first.lowerBound..<second.upperBound)
        }
        return nil
    }

    func shifted(by offset: Int) -> HTTP1RelayRecord {
        switch self {
        case .passed(let range): return .passed((range.lowerBound + offset)..<(range.upperBound + offset))
        case .responseCompleted(let at): return .responseCompleted(at: at + offset)
        case .failed, .truncated: return self
        }
    }

    var completesMessage: Bool {
        if case .responseCompleted = self { return true }
        return false
    }

    var isFailure: Bool {
        switch self {
        case .failed, .truncated: return true
        default: return false
        }
    }

    var description: String {
        switch self {
        case .passed(let range): return "passed(\(range))"
        case .responseCompleted(let at): return "completed(@\(at))"
        case .failed(let canAnswer): return canAnswer ? "failed(502)" : "failed(close)"
        case .truncated: return "truncated"
        }
    }
}

/// The response side of a connection on which `requests` were forwarded (each resolved with
/// its decision), fed through the split-feed verifier.
struct HTTP1RelayDecoder: SplitFeedDecoder {
    var connection: HTTP1Connection

    init(requests: [(String, HTTP1RequestDecision)], limits: HTTP1Limits = .standard) {
        connection = HTTP1Connection(limits: limits)
        for (text, decision) in requests {
            var bytes = Array(text.utf8)
            while !bytes.isEmpty {
                switch connection.requestStep(bytes) {
                case .verdictNeeded: connection.resolve(decision)
                case .operation(.pass(let count)), .operation(.drop(let count)): bytes.removeFirst(count)
                case let other: preconditionFailure("request setup: \(other)")
                }
            }
            // The message end of a request without a body is reported on the next call.
            _ = connection.requestStep([])
        }
    }

    mutating func decode(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> SplitFeedOutcome<HTTP1RelayRecord> {
        let before = connection.inFlightCount
        let operation = buffer.withUnsafeBytes { connection.responseStep($0).operation }
        let completed = connection.inFlightCount < before ? [HTTP1RelayRecord.responseCompleted(at: streamOffset)] : []
        switch operation {
        case .needMore, .blocked:
            return completed.isEmpty ? .needMore : .consumed(0, completed)
        case .pass(let count):
            precondition(count > 0 && count <= buffer.count, "pass within the bytes given")
            // A completion noticed on this call belongs before the bytes it passes.
            return .consumed(count, completed + [.passed(streamOffset..<(streamOffset + count))])
        case .error:
            // A completion noticed on the failing call is reported first; the failure sticks
            // and is reported on the next call.
            if !completed.isEmpty { return .consumed(0, completed) }
            return .failed(.failed(canAnswerInsteadOfServer: connection.canAnswerInsteadOfServer))
        case .drop, .inject:
            preconditionFailure("the response side only passes or fails: \(operation)")
        }
    }

    mutating func finish(_ buffer: ArraySlice<UInt8>, streamOffset: Int) -> [HTTP1RelayRecord] {
        let before = connection.inFlightCount
        if connection.responseEndOfInput(unconsumedBytes: buffer.count) != nil { return [.truncated] }
        return connection.inFlightCount < before ? [.responseCompleted(at: streamOffset)] : []
    }
}

/// Issue 9 item 9 (parser part): every upstream fault is `.error` on the response side after
/// the valid bytes before it were passed, and says whether the client can still get a 502.
@Suite struct HTTP1UpstreamFaultTests {
    static let get = "GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    static let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    static func verify(_ responses: String, after requests: [(String, HTTP1RequestDecision)],
                       limits: HTTP1Limits = .standard,
                       sourceLocation: SourceLocation = #_sourceLocation) -> [HTTP1RelayRecord] {
        SplitFeedVerifier { HTTP1RelayDecoder(requests: requests, limits: limits) }
            .verify(Array(responses.utf8), backToBack: false, sourceLocation: sourceLocation)
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var fault: String
        var testDescription: String { name }
    }

    /// The faults of the issue, each as the whole answer to the second of two requests,
    /// after a valid response to the first in the same bytes.
    static let faults: [Case] = [
        Case(name: "garbage", fault: "\u{0}\u{1}garbage that is not HTTP\r\n\r\n"),
        Case(name: "CL and TE", fault: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        Case(name: "bare LF", fault: "HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
        Case(name: "negative Content-Length", fault: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
        Case(name: "header over the limit", fault: "HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "b", count: 3000) + "\r\n\r\n"),
        Case(name: "bad status", fault: "HTTP/1.1 2OO OK\r\n\r\n"),
        Case(name: "101 without an upgrade", fault: "HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    ]

    @Test(arguments: faults)
    func faultAfterAValidResponseFailsAfterPassingItWhole(_ testCase: Case) {
        let records = Self.verify(Self.ok + testCase.fault, after: [(Self.get, .forward), (Self.get, .forward)],
                                  limits: HTTP1Limits(maximumHeaderBytes: 1024))
        let valid = Self.ok.utf8.count
        #expect(records == [.passed(0..<valid), .responseCompleted(at: valid), .failed(canAnswerInsteadOfServer: true)],
                "\(records)")
    }

    /// The same faults when they are all the server says: nothing passed, 502.
    @Test(arguments: faults)
    func faultAloneIsAnsweredByTheProxy(_ testCase: Case) {
        let records = Self.verify(testCase.fault, after: [(Self.get, .forward)], limits: HTTP1Limits(maximumHeaderBytes: 1024))
        #expect(records == [.failed(canAnswerInsteadOfServer: true)], "\(records)")
    }

    /// A 204 with a body: the 204 passes, its "body" is the fault. With a second request in
    /// flight the bytes are a bad response to it (502); with none they are unsolicited.
    @Test func bodyAfterA204() {
        let noContent = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
        let length = noContent.utf8.count
        let twoInFlight = Self.verify(noContent + "hello", after: [(Self.get, .forward), (Self.get, .forward)])
        #expect(twoInFlight == [.passed(0..<length), .responseCompleted(at: length), .failed(canAnswerInsteadOfServer: true)])
        let oneInFlight = Self.verify(noContent + "hello", after: [(Self.get, .forward)])
        #expect(oneInFlight == [.passed(0..<length), .responseCompleted(at: length), .failed(canAnswerInsteadOfServer: false)])
    }

    /// An unsolicited extra response: the owed one passes whole, the extra one is an error
    /// and nothing is owed to answer it with.
    @Test func unsolicitedExtraResponse() {
        let records = Self.verify(Self.ok + Self.ok, after: [(Self.get, .forward)])
        let valid = Self.ok.utf8.count
        #expect(records == [.passed(0..<valid), .responseCompleted(at: valid), .failed(canAnswerInsteadOfServer: false)])
        let beforeAnyRequest = Self.verify(Self.ok, after: [])
        #expect(beforeAnyRequest == [.failed(canAnswerInsteadOfServer: false)])
    }

    /// A fault in the middle of a response whose head reached the client: close, no 502.
    @Test func faultInsideABodyCannotBeAnswered() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
        let records = Self.verify(head + "zz\r\n", after: [(Self.get, .forward)])
        #expect(records == [.passed(0..<head.utf8.count), .failed(canAnswerInsteadOfServer: false)])
    }

    @Test func interimResponsesAreCapped() {
        let early = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        let limits = HTTP1Limits(maximumInformationalResponses: 3)
        let allowed = Self.verify(String(repeating: early, count: 3) + Self.ok, after: [(Self.get, .forward)], limits: limits)
        let total = 3 * early.utf8.count + Self.ok.utf8.count
        #expect(allowed == [.passed(0..<total), .responseCompleted(at: total)])
        let tooMany = Self.verify(String(repeating: early, count: 4) + Self.ok, after: [(Self.get, .forward)], limits: limits)
        #expect(tooMany == [.passed(0..<(3 * early.utf8.count)), .failed(canAnswerInsteadOfServer: true)])
        // The count is per request: three before each of two final responses is fine.
        let perRequest = Self.verify(String(repeating: early, count: 3) + Self.ok + String(repeating: early, count: 3) + Self.ok,
                                     after: [(Self.get, .forward), (Self.get, .forward)], limits: limits)
        #expect(!perRequest.contains { $0.isFailure })
        #expect(HTTP1Limits.standard.maximumInformationalResponses == 10)
    }

    /// The issue's 200 KB header with the default limits, fed whole and in 4 KiB reads.
    @Test func responseHeadOf200KilobytesIsAnError() {
        let huge = Array(("HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "b", count: 200_000) + "\r\n\r\n").utf8)
        for sliceSize in [huge.count, 4096] {
            var decoder = HTTP1RelayDecoder(requests: [(Self.get, .forward)])
            var buffer: [UInt8] = []
            var outcome: HTTP1RelayRecord? = nil
            feeding: for start in stride(from: 0, to: huge.count, by: sliceSize) {
                buffer += huge[start..<min(start + sliceSize, huge.count)]
                switch decoder.decode(buffer[...], streamOffset: 0) {
                case .needMore: continue
                case .failed(let record): outcome = record; break feeding
                case .consumed(let count, let records): Issue.record("consumed \(count): \(records)"); break feeding
                }
            }
            #expect(outcome == .failed(canAnswerInsteadOfServer: true))
            if sliceSize < huge.count {
                #expect(buffer.count <= HTTP1Limits.standard.maximumHeaderBytes + 4096 + 64, "the proxy never holds the whole head")
            }
        }
    }

    /// The split-feed decoder agrees with the driver the proxy runs (same connection type).
    @Test func simulatedDriverAnswers502() {
        var driver = HTTP1Exchange { _, _ in true }
        driver.clientSends(Self.get + Self.get)
        driver.serverSends(Self.ok + "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        #expect(driver.clientText == Self.ok + String(decoding: HTTP1LocalResponses.rejection(status: 502), as: UTF8.self))
        #expect(driver.answeredBadGateway)
    }
}
