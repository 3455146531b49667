import L7Parsers

/// Fuzz harness for `HTTP1Connection` (both directions, with `HTTP1Parser`,
/// `HTTP1TargetNormalization` and `HTTP1HeadRewrite` underneath), driven the way the
/// contract tells a driver to drive it.
///
/// Input layout (see `Fuzz/seeds.py`, which writes the seed corpus):
/// - bytes 0-1: verdict bits; each request head takes the next 3 bits (cycling) to pick a
///   decision from `decisions`;
/// - byte 2 / byte 3: how many bytes the client / the server delivers per read (0 = all);
/// - byte 4: flags; bit 0 = small limits (to reach every limit quickly), bit 1 = the server
///   closes its side at the end (end of input);
/// - the rest: the client's bytes, then `separator`, then the server's bytes.
///
/// Invariants checked (a violation traps, which libFuzzer reports as a crash):
/// - every `.pass` / `.drop` is > 0 and within the bytes given; `.needMore` asks for >= 1;
///   `.inject` only on the request side; a head's ranges lie within the bytes given;
/// - progress: a bounded number of calls per byte;
/// - normalisation: a parsed target is never `.invalid` (the parser checked its
///   percent-encoding), results are fixed points, and a head rebuilt with the normalised
///   target (and without its upgrade) is again a valid head with the same framing;
/// - what reached the server, up to the point the connection became a relay, is a sequence
///   of valid requests (a fresh parser frames it without error): nothing smuggled;
/// - what reached the client, up to the relay, is a sequence of valid responses to those
///   requests in order (a fresh response parser told each request's method frames it, local
///   answers included): no answer the client would misread;
/// - `canAnswerInsteadOfServer` implies a request is owed.
public enum HTTP1ConnectionFuzzer {
    /// An invariant; its message survives an optimised build (`precondition`'s does not).
    static func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String = "",
                      file: StaticString = #file, line: UInt = #line) {
        if !condition() { fatalError("invariant violated: \(message())", file: file, line: line) }
    }

    static func fail(_ message: String, file: StaticString = #file, line: UInt = #line) -> Never {
        fatalError("invariant violated: \(message)", file: file, line: line)
    }

    public static let separator: [UInt8] = Array("\n--server--\n".utf8)

    /// The decisions verdict bits select (index 0-7).
    static let decisions: [HTTP1RequestDecision] = [
        .forward, .forward, .forward, .forwardWithoutUpgrade, .deny, .deny,
        .answer(Array("HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n".utf8), closes: false),
        .answer(HTTP1LocalResponses.rejection(status: 400), closes: true),
    ]

    static let smallLimits = HTTP1Limits(
        maximumRequestLineBytes: 64, maximumStatusLineBytes: 64, maximumHeaderBytes: 256, maximumHeaderCount: 6,
        maximumChunkSizeDigits: 4, maximumChunkLineBytes: 24, maximumTrailerBytes: 64, maximumLeadingEmptyLines: 2,
        maximumPipelinedRequests: 2, maximumInformationalResponses: 2)

    public static func run(_ input: UnsafeRawBufferPointer) {
        _ = outcome(input)
    }

    /// What one input did: the bytes that reached the server and the client, and whether
    /// the connection ended (for tests of the harness itself).
    public struct Outcome: Sendable {
        public var upstream: [UInt8]
        public var client: [UInt8]
        public var closed: Bool
    }

    public static func outcome(_ input: UnsafeRawBufferPointer) -> Outcome {
        guard input.count >= 5 else { return Outcome(upstream: [], client: [], closed: false) }
        let verdictBits = UInt16(input[0]) | UInt16(input[1]) << 8
        let clientRead = input[2] == 0 ? Int.max : Int(input[2])
        let serverRead = input[3] == 0 ? Int.max : Int(input[3])
        let flags = input[4]
        let rest = Array(input[5...])
        let client: ArraySlice<UInt8>
        let server: ArraySlice<UInt8>
        if let split = firstIndex(of: separator, in: rest) {
            client = rest[..<split]
            server = rest[(split + separator.count)...]
        } else {
            client = rest[...]
            server = []
        }
        var driver = Driver(limits: flags & 1 == 0 ? .standard : smallLimits, verdictBits: verdictBits)
        var clientOffset = client.startIndex
        var serverOffset = server.startIndex
        while !driver.closed && (clientOffset < client.endIndex || serverOffset < server.endIndex) {
            if clientOffset < client.endIndex {
                let end = clientOffset + min(clientRead, client.endIndex - clientOffset)
                driver.fromClient += client[clientOffset..<end]
                clientOffset = end
                driver.pump()
            }
            if serverOffset < server.endIndex && !driver.closed {
                let end = serverOffset + min(serverRead, server.endIndex - serverOffset)
                driver.fromServer += server[serverOffset..<end]
                serverOffset = end
                driver.pump()
            }
        }
        if flags & 2 != 0 && !driver.closed { driver.serverCloses() }
        driver.checkForwardedBytesAreValidRequests()
        driver.checkClientBytesAreValidResponses()
        return Outcome(upstream: driver.upstream, client: driver.client, closed: driver.closed)
    }

    static func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<(start + needle.count)].elementsEqual(needle) { return start }
        }
        return nil
    }

    /// The driver loop of `HTTP1Connection`'s contract, with invariant checks.
    struct Driver {
        var connection: HTTP1Connection
        let limits: HTTP1Limits
        var verdictBits: UInt16
        var verdictShift: UInt16 = 0
        var fromClient: [UInt8] = []
        var fromServer: [UInt8] = []
        var upstream: [UInt8] = []
        var client: [UInt8] = []
        var closed = false
        var serverEnded = false
        /// Where the relay began in `upstream` and in `client` (bytes after it are opaque).
        var tunnelStart: Int?
        var clientTunnelStart: Int?
        /// What each request that gets an answer asked, in order (for the client check).
        var answeredRequests: [HTTP1RequestSummary] = []
        var rebuiltHead: [UInt8]?

        init(limits: HTTP1Limits, verdictBits: UInt16) {
            connection = HTTP1Connection(limits: limits)
            self.limits = limits
            self.verdictBits = verdictBits
        }

        mutating func nextDecision() -> HTTP1RequestDecision {
            // The 16 bits repeated, so that a shift near the end still reads 3 bits.
            let doubled = UInt32(verdictBits) | UInt32(verdictBits) << 16
            let index = Int((doubled >> UInt32(verdictShift)) & 7)
            verdictShift = (verdictShift + 3) % 16
            return HTTP1ConnectionFuzzer.decisions[index]
        }

        mutating func pump() {
            var calls = 0
            let budget = 64 + 8 * (fromClient.count + fromServer.count + 64)
            var progressed = true
            while progressed && !closed {
                progressed = false
                requestSide: while !closed {
                    calls += 1
                    check(calls < budget, "HTTP1Connection makes no progress")
                    switch connection.requestStep(fromClient) {
                    case .verdictNeeded(let head):
                        judge(head)
                    case .operation(let operation):
                        switch operation {
                        case .needMore(let minimum):
                            check(minimum >= 1, "needMore must ask for at least one byte")
                            break requestSide
                        case .blocked:
                            break requestSide
                        case .pass(let count):
                            check(count > 0 && count <= fromClient.count, "request pass \(count) of \(fromClient.count)")
                            if tunnelStart == nil && connection.isTunnel { tunnelStart = upstream.count }
                            if let rebuilt = rebuiltHead {
                                upstream += rebuilt
                                rebuiltHead = nil
                            } else {
                                upstream += fromClient[..<count]
                            }
                            fromClient.removeFirst(count)
                        case .drop(let count):
                            check(count > 0 && count <= fromClient.count, "request drop \(count) of \(fromClient.count)")
                            check(rebuiltHead == nil, "a rebuilt head was not passed")
                            fromClient.removeFirst(count)
                        case .inject(let bytes):
                            check(!bytes.isEmpty, "empty injection")
                            client += bytes
                        case .error:
                            closed = true
                        }
                    }
                    progressed = true
                }
                responseSide: while !closed {
                    calls += 1
                    check(calls < budget, "HTTP1Connection makes no progress")
                    let operation = connection.responseStep(fromServer).operation
                    switch operation {
                    case .needMore(let minimum):
                        check(minimum >= 1, "needMore must ask for at least one byte")
                        break responseSide
                    case .blocked:
                        break responseSide
                    case .pass(let count):
                        check(count > 0 && count <= fromServer.count, "response pass \(count) of \(fromServer.count)")
                        if clientTunnelStart == nil && connection.isTunnel { clientTunnelStart = client.count }
                        client += fromServer[..<count]
                        fromServer.removeFirst(count)
                    case .drop, .inject:
                        fail("the response side only passes: \(operation)")
                    case .error:
                        if let answer = connection.answerInsteadOfServer(status: 502) {
                            check(connection.inFlightCount > 0, "an answer in place of the server needs a request")
                            client += answer
                        }
                        closed = true
                    }
                    progressed = true
                }
                if connection.canAnswerInsteadOfServer { check(connection.inFlightCount > 0) }
                _ = connection.isAwaitingResponse
            }
        }

        mutating func serverCloses() {
            guard !serverEnded else { return }
            serverEnded = true
            if connection.responseEndOfInput(unconsumedBytes: fromServer.count) != nil {
                closed = true
                return
            }
            pump()
        }

        mutating func judge(_ head: HTTP1Head) {
            check(head.length > 0 && head.length <= fromClient.count, "head of \(head.length) in \(fromClient.count) bytes")
            for range in [head.startLine, head.method, head.target, head.path] + head.fields.flatMap({ [$0.name, $0.value, $0.line] }) {
                check(range.lowerBound >= 0 && range.upperBound <= head.length, "range \(range) outside the head")
            }
            var decision = nextDecision()
            var newTarget: [UInt8]? = nil
            fromClient.withUnsafeBytes { bytes in
                switch HTTP1TargetNormalization.normalize(head, in: bytes) {
                case .unchanged:
                    break
                case .normalized(let target, let path):
                    check(HTTP1TargetNormalization.normalize(target: Array(target.utf8)) == .unchanged,
                                 "normalised target \(target) is not a fixed point")
                    check(target.hasSuffix(path), "path \(path) is not the end of target \(target)")
                    newTarget = Array(target.utf8)
                case .redirect(let location):
                    check(HTTP1TargetNormalization.normalize(target: Array(location.utf8)) == .unchanged,
                                 "redirect location \(location) is not a fixed point")
                    decision = .answer(HTTP1LocalResponses.redirect(location: location, closes: head.closesAfterLocalAnswer),
                                       closes: false)
                case .invalid(let reason):
                    fail("the parser accepted a target the normaliser rejects: \(reason)")
                }
                _ = head.upgradeProtocols(in: bytes)
                let removesUpgrade = decision == .forwardWithoutUpgrade
                if case .answer = decision {
                    rebuiltHead = nil
                } else if case .deny = decision {
                    rebuiltHead = nil
                } else if newTarget != nil || removesUpgrade {
                    let rebuilt = HTTP1HeadRewrite(target: newTarget, removesUpgrade: removesUpgrade).apply(to: head, in: bytes)
                    checkRebuilt(rebuilt, of: head, removesUpgrade: removesUpgrade)
                    rebuiltHead = rebuilt
                } else {
                    rebuiltHead = nil
                }
            }
            var summary = HTTP1RequestSummary(head)
            if decision != .forward { summary.upgradeRequested = false }
            answeredRequests.append(summary)
            connection.resolve(decision)
        }

        func checkRebuilt(_ rebuilt: [UInt8], of head: HTTP1Head, removesUpgrade: Bool) {
            var parser = HTTP1Parser(direction: .request, limits: HTTP1Limits(maximumRequestLineBytes: 1 << 20,
                                                                              maximumHeaderBytes: 1 << 20))
            guard case .head(let again) = parser.parse(rebuilt) else {
                fail("a rebuilt head does not parse: \(String(decoding: rebuilt, as: UTF8.self))")
            }
            check(again.length == rebuilt.count, "a rebuilt head has bytes after it")
            check(again.framing == head.framing && again.isConnect == head.isConnect && again.isHead == head.isHead,
                         "a rebuilt head frames differently")
            if removesUpgrade { check(!again.upgradeRequested, "the upgrade survived its removal") }
        }

        /// What reached the client before any relay is a sequence of valid responses to the
        /// requests answered, in order; an answer beyond them (to a request the parser
        /// rejected, which is the last) is framed as an answer to GET.
        func checkClientBytesAreValidResponses() {
            let framed = Array(client[..<(clientTunnelStart ?? client.count)])
            var parser = HTTP1Parser(direction: .response, limits: HTTP1Limits(
                maximumStatusLineBytes: 1 << 16, maximumHeaderBytes: 1 << 20, maximumHeaderCount: 1 << 10,
                maximumChunkSizeDigits: 16, maximumChunkLineBytes: 1 << 16, maximumTrailerBytes: 1 << 20))
            var told = 0
            var offset = 0
            var calls = 0
            while true {
                calls += 1
                check(calls < 4 * framed.count + 16, "the checking parser makes no progress")
                if parser.pendingResponseCount == 0 && parser.isAtMessageBoundary && offset < framed.count {
                    parser.expectResponse(to: told < answeredRequests.count ? answeredRequests[told] : HTTP1RequestSummary())
                    told += 1
                }
                let event = framed[offset...].withUnsafeBytes { parser.parse($0) }
                switch event {
                case .needMore:
                    return
                case .head(let head):
                    offset += head.length
                case .body(let count), .chunkFraming(let count), .tunnel(let count):
                    offset += count
                case .messageComplete(let consumed, _):
                    offset += consumed
                case .error(let error):
                    fail("the client received bytes that are not valid responses: \(error) at \(offset) of "
                                        + String(decoding: framed, as: UTF8.self).debugDescription)
                }
                if offset == framed.count && parser.isAtMessageBoundary { return }
            }
        }

        /// What reached the server before any relay is a sequence of valid requests.
        func checkForwardedBytesAreValidRequests() {
            let framed = Array(upstream[..<(tunnelStart ?? upstream.count)])
            var parser = HTTP1Parser(direction: .request, limits: HTTP1Limits(
                maximumRequestLineBytes: max(limits.maximumRequestLineBytes, 1 << 16),
                maximumHeaderBytes: max(limits.maximumHeaderBytes, 1 << 16),
                maximumHeaderCount: limits.maximumHeaderCount + 2,
                maximumLeadingEmptyLines: limits.maximumLeadingEmptyLines))
            var offset = 0
            var calls = 0
            while true {
                calls += 1
                check(calls < 4 * framed.count + 16, "the checking parser makes no progress")
                let event = framed[offset...].withUnsafeBytes { parser.parse($0) }
                switch event {
                case .needMore:
                    return
                case .head(let head):
                    offset += head.length
                case .body(let count), .chunkFraming(let count), .tunnel(let count):
                    offset += count
                case .messageComplete(let consumed, _):
                    offset += consumed
                case .error(let error):
                    fail("the server received bytes that are not valid HTTP/1.1 requests: \(error) at \(offset)")
                }
                if offset == framed.count {
                    // One more call reports a message end without bytes, if any.
                    if case .messageComplete = framed[offset...].withUnsafeBytes({ parser.parse($0) }) {}
                    return
                }
            }
        }
    }
}
