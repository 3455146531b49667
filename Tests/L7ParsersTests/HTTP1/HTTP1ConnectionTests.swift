import Testing
import Proxy
@testable import L7Parsers

/// `HTTP1Connection` under a test's own verdicts, as a session for the proxy's real driver
/// (`StreamDriver`, fed from memory by `MemoryConnection`): what these tests see reaching the
/// upstream and the client is what the live relay would send. Like the proxy's HTTP session,
/// it forwards a head rebuilt without the upgrade for `.forwardWithoutUpgrade`, and answers a
/// response `.error` with `502` when `answerInsteadOfServer` can.
final class DecidingHTTP1Session: L7Session {
    var connection: HTTP1Connection
    let decide: (HTTP1Head, UnsafeRawBufferPointer) -> HTTP1RequestDecision
    var verdicts: [String] = []
    var answeredBadGateway = false
    private var rebuiltHead: [UInt8]?
    private var dropAfterRebuild = 0
    private var responseFault: String?

    init(limits: HTTP1Limits, decide: @escaping (HTTP1Head, UnsafeRawBufferPointer) -> HTTP1RequestDecision) {
        connection = HTTP1Connection(limits: limits)
        self.decide = decide
    }

    var maximumMessageBytes: Int { 1 << 20 }

    func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if direction == .response {
            if let responseFault { return .close(reason: responseFault) }
            let operation = connection.responseStep(bytes).operation
            if case .error(let reason) = operation {
                guard let answer = connection.answerInsteadOfServer(status: 502) else { return .close(reason: reason) }
                answeredBadGateway = true
                responseFault = reason
                return .forward(answer)
            }
            return SessionOperation(operation)
        }
        if dropAfterRebuild > 0 {
            defer { dropAfterRebuild = 0 }
            return .drop(dropAfterRebuild)
        }
        while true {
            switch connection.requestStep(bytes) {
            case .verdictNeeded(let head):
                let decision = decide(head, bytes)
                verdicts.append("\(string(bytes, head.method)) \(string(bytes, head.target))")
                if decision == .forwardWithoutUpgrade {
                    rebuiltHead = HTTP1HeadRewrite(removesUpgrade: true).apply(to: head, in: bytes)
                }
                connection.resolve(decision)
            case .operation(let operation):
                if case .pass(let count) = operation, let rebuilt = rebuiltHead {
                    rebuiltHead = nil
                    dropAfterRebuild = count
                    return .forward(rebuilt)
                }
                return SessionOperation(operation)
            }
        }
    }

    func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? {
        direction == .response ? connection.responseEndOfInput(unconsumedBytes: unconsumed).map(SessionOperation.init) : nil
    }

    func incompleteMessageTimedOut() -> [UInt8]? { nil }
    func upstreamFailed(reason: String) -> [UInt8]? { nil }
    var isAwaitingResponse: Bool { connection.isAwaitingResponse }
    func responseTimedOut() -> [UInt8]? { nil }
    var isIdle: Bool { connection.inFlightCount == 0 }
}

/// One HTTP/1.1 connection run through the real driver from memory, with the test's verdicts.
struct HTTP1Exchange {
    let session: DecidingHTTP1Session
    var memory: MemoryConnection

    init(limits: HTTP1Limits = .standard, allow: @escaping (_ method: String, _ target: String) -> Bool) {
        self.init(limits: limits) { head, bytes in
            allow(string(bytes, head.method), string(bytes, head.target)) ? .forward : .deny
        }
    }

    init(limits: HTTP1Limits = .standard,
         decide: @escaping (_ head: HTTP1Head, _ bytes: UnsafeRawBufferPointer) -> HTTP1RequestDecision) {
        session = DecidingHTTP1Session(limits: limits, decide: decide)
        memory = MemoryConnection(session: session)
    }

    var connection: HTTP1Connection { session.connection }
    var verdicts: [String] { session.verdicts }
    var answeredBadGateway: Bool { session.answeredBadGateway }
    var closedReason: String? { memory.closedReason }
    /// What reached the upstream and the client.
    var upstream: [UInt8] { memory.deliveredToServer }
    var client: [UInt8] { memory.deliveredToClient }
    var upstreamText: String { String(decoding: upstream, as: UTF8.self) }
    var clientText: String { String(decoding: client, as: UTF8.self) }
    /// Bytes a side sent that the driver has not taken yet; append, then `pump()`.
    var fromClient: [UInt8] {
        get { memory.waitingFromClient }
        set { memory.waitingFromClient = newValue }
    }
    var fromServer: [UInt8] {
        get { memory.waitingFromServer }
        set { memory.waitingFromServer = newValue }
    }

    mutating func clientSends(_ text: String) { memory.clientSends(text.utf8) }
    mutating func serverSends(_ text: String) { memory.serverSends(text.utf8) }
    mutating func pump() { memory.pump() }
}

@Suite struct HTTP1ConnectionTests {
    static let getA = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    static let postB = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nsecret"
    static let postBChunked = "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecret\r\n0\r\n\r\n"
    static let getC = "GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    static let responseA = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"
    static let responseC = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nC\r\n0\r\n\r\n"
    static let forbidden = String(decoding: HTTP1LocalResponses.standard.forbidden, as: UTF8.self)
    static let forbiddenClosing = String(decoding: HTTP1LocalResponses.standard.forbiddenClosing, as: UTF8.self)
    static func denyB(_ method: String, _ target: String) -> Bool { target != "/b" }

    @Test func allowedRequestIsForwardedAndItsResponseRelayed() {
        var driver = HTTP1Exchange { _, _ in true }
        driver.clientSends(Self.getA)
        #expect(driver.upstreamText == Self.getA)
        driver.serverSends(Self.responseA)
        #expect(driver.clientText == Self.responseA)
        #expect(driver.connection.inFlightCount == 0)
        #expect(driver.closedReason == nil)
    }

    /// The denial is answered only after the response to the request before it, and the
    /// response to the request after it comes after the denial.
    @Test(arguments: [postB, postBChunked])
    func pipelinedDenialKeepsResponsesInOrder(_ denied: String) {
        var driver = HTTP1Exchange(allow: Self.denyB)
        driver.clientSends(Self.getA + denied + Self.getC)
        #expect(driver.verdicts == ["GET /a", "POST /b", "GET /c"])
        #expect(driver.upstreamText == Self.getA + Self.getC, "the denied request never reaches upstream")
        #expect(driver.client.isEmpty, "no 403 before the response to /a")
        driver.serverSends(Self.responseA + Self.responseC)
        #expect(driver.clientText == Self.responseA + Self.forbidden + Self.responseC)
        #expect(driver.closedReason == nil)
        #expect(driver.connection.inFlightCount == 0)
    }

    @Test func sameOutcomeWhenEveryByteArrivesAlone() {
        var driver = HTTP1Exchange(allow: Self.denyB)
        for byte in (Self.getA + Self.postBChunked + Self.getC).utf8 { driver.fromClient.append(byte); driver.pump() }
        for byte in (Self.responseA + Self.responseC).utf8 { driver.fromServer.append(byte); driver.pump() }
        #expect(driver.upstreamText == Self.getA + Self.getC)
        #expect(driver.clientText == Self.responseA + Self.forbidden + Self.responseC)
    }

    @Test func denialAtTheFrontIsAnsweredAtOnceAndTheConnectionStays() {
        var driver = HTTP1Exchange(allow: Self.denyB)
        driver.clientSends(Self.postB)
        #expect(driver.clientText == Self.forbidden)
        #expect(driver.upstream.isEmpty)
        driver.clientSends(Self.getA)
        driver.serverSends(Self.responseA)
        #expect(driver.clientText == Self.forbidden + Self.responseA)
        #expect(driver.closedReason == nil)
    }

    @Test func denialOfAClosingRequestClosesAfterTheAnswer() {
        var driver = HTTP1Exchange(allow: Self.denyB)
        driver.clientSends("GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" + Self.getA)
        #expect(driver.clientText == Self.forbiddenClosing)
        #expect(driver.closedReason != nil)
        #expect(driver.upstream.isEmpty)
    }

    /// RFC 9110 §10.1.1: the client may hold the body until it sees 100 Continue; we answer
    /// the denial with close rather than wait for a body that may never come.
    @Test func denialOfAnExpectContinueRequestDoesNotWaitForTheBody() {
        var driver = HTTP1Exchange(allow: Self.denyB)
        driver.clientSends("PUT /b HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
        #expect(driver.clientText == Self.forbiddenClosing)
        #expect(driver.closedReason != nil)
    }

    @Test func malformedRequestIsAnsweredInOrderWithNothingForwarded() {
        var driver = HTTP1Exchange { _, _ in true }
        driver.clientSends(Self.getA + "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        #expect(driver.upstreamText == Self.getA)
        #expect(driver.client.isEmpty)
        #expect(driver.closedReason == nil, "held until the response to /a is relayed")
        driver.serverSends(Self.responseA)
        #expect(driver.clientText == Self.responseA + String(decoding: HTTP1LocalResponses.rejection(status: 400), as: UTF8.self))
        #expect(driver.closedReason?.contains("contentLengthWithTransferEncoding") == true)
    }

    @Test func oversizedHeadIsAnswered431() {
        var driver = HTTP1Exchange(limits: HTTP1Limits(maximumHeaderBytes: 64)) { _, _ in true }
        driver.clientSends("GET / HTTP/1.1\r\nHost: h\r\nCookie: " + String(repeating: "c", count: 100))
        #expect(driver.clientText.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        #expect(driver.upstream.isEmpty)
        #expect(driver.closedReason != nil)
    }

    @Test func websocketUpgradeBecomesARelay() {
        var driver = HTTP1Exchange { _, _ in true }
        let upgrade = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        driver.clientSends(upgrade + "\u{81}\u{02}hi")
        #expect(driver.upstreamText == upgrade, "frames wait for the server's answer")
        let switching = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        driver.serverSends(switching + "\u{81}\u{02}yo")
        #expect(driver.upstreamText == upgrade + "\u{81}\u{02}hi")
        #expect(driver.clientText == switching + "\u{81}\u{02}yo")
        #expect(driver.connection.isTunnel)
        driver.clientSends("GET / not http at all")
        #expect(driver.upstreamText.hasSuffix("GET / not http at all"))
    }

    @Test func refusedUpgradeReturnsToHTTP() {
        var driver = HTTP1Exchange { _, _ in true }
        let upgrade = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        driver.clientSends(upgrade + Self.getA)
        #expect(driver.upstreamText == upgrade)
        driver.serverSends("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
        #expect(driver.upstreamText == upgrade + Self.getA)
        #expect(!driver.connection.isTunnel)
    }

    @Test func connectBecomesARelayAfterA2xx() {
        var driver = HTTP1Exchange { _, _ in true }
        let connect = "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"
        driver.clientSends(connect + "early")
        #expect(driver.upstreamText == connect)
        driver.serverSends("HTTP/1.1 200 OK\r\n\r\n")
        #expect(driver.upstreamText == connect + "early")
        #expect(driver.connection.isTunnel)
    }

    @Test func deniedUpgradeStaysHTTP() {
        var driver = HTTP1Exchange { _, target in target != "/ws" }
        driver.clientSends("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + Self.getA)
        #expect(driver.clientText == Self.forbidden)
        #expect(driver.upstreamText == Self.getA)
    }

    @Test func pipelineDepthIsBounded() {
        var driver = HTTP1Exchange(limits: HTTP1Limits(maximumPipelinedRequests: 2)) { _, _ in true }
        driver.clientSends(Self.getA + Self.getA + Self.getC)
        #expect(driver.upstreamText == Self.getA + Self.getA, "the third waits")
        driver.serverSends(Self.responseA)
        #expect(driver.upstreamText == Self.getA + Self.getA + Self.getC)
    }

    @Test func responseBeforeAnyRequestIsAnError() {
        var driver = HTTP1Exchange { _, _ in true }
        driver.serverSends(Self.responseA)
        #expect(driver.closedReason != nil)
        #expect(driver.client.isEmpty)
    }

    @Test func headResponseHasNoBodyAndInterimResponsesPass() {
        var driver = HTTP1Exchange { _, _ in true }
        driver.clientSends("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n" + Self.getC)
        driver.serverSends("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + Self.responseC)
        #expect(driver.clientText == "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + Self.responseC)
        #expect(driver.connection.inFlightCount == 0)
    }

    @Test func responseDelimitedByCloseEndsCleanly() {
        var connection = HTTP1Connection()
        guard case .verdictNeeded = connection.requestStep(Array(Self.getA.utf8)) else {
            Issue.record("no verdict asked")
            return
        }
        connection.resolve(allowed: true)
        #expect(connection.requestStep(Array(Self.getA.utf8)) == .operation(.pass(Self.getA.utf8.count)))
        let response = Array("HTTP/1.1 200 OK\r\n\r\nuntil close".utf8)
        #expect(connection.responseStep(response).operation == .pass(19))
        #expect(connection.responseStep(Array(response[19...])).operation == .pass(11))
        #expect(connection.responseEndOfInput(unconsumedBytes: 0) == nil)
        #expect(connection.inFlightCount == 0)
        var truncated = HTTP1Connection()
        _ = truncated.requestStep(Array(Self.getA.utf8))
        truncated.resolve(allowed: true)
        _ = truncated.requestStep(Array(Self.getA.utf8))
        _ = truncated.responseStep(Array("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n".utf8))
        guard case .error = truncated.responseEndOfInput(unconsumedBytes: 0) else {
            Issue.record("a cut body must be an error")
            return
        }
    }
}
