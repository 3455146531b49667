import Testing
@testable import L7Parsers

/// Issue 9 items 2, 3, 5 and 12 on the request side: verdicts richer than allow/deny, no
/// trap on a driver out of step, and a 400 for a faulty body of a forwarded request.
@Suite struct HTTP1RequestDecisionTests {
    static let getA = HTTP1ConnectionTests.getA
    static let responseA = HTTP1ConnectionTests.responseA
    static let h2cUpgrade = "GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n"
        + "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nAccept: */*\r\n\r\n"
    static let switching = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"

    static func upgradeNotPermitted(_ head: HTTP1Head, _ bytes: UnsafeRawBufferPointer) -> HTTP1RequestDecision {
        head.upgradeRequested ? .forwardWithoutUpgrade : .forward
    }

    // MARK: Item 3: an upgrade the port does not permit never becomes a tunnel

    @Test func upgradeNotPermittedIsForwardedWithoutItAndTheConnectionStaysHTTP() {
        var driver = HTTP1Exchange(decide: Self.upgradeNotPermitted)
        driver.clientSends(Self.h2cUpgrade + Self.getA)
        let stripped = "GET /up HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n"
        #expect(driver.upstreamText == stripped + Self.getA, "no Upgrade reaches the server; the next request is not held")
        driver.serverSends(Self.responseA + Self.responseA)
        #expect(driver.clientText == Self.responseA + Self.responseA)
        #expect(!driver.connection.isTunnel)
        #expect(driver.closedReason == nil)
    }

    /// A hostile server that switches anyway: the relay is refused, the client gets 502.
    @Test func switchingProtocolsToAStrippedUpgradeIsAResponseError() {
        var driver = HTTP1Exchange(decide: Self.upgradeNotPermitted)
        driver.clientSends(Self.h2cUpgrade)
        driver.serverSends(Self.switching + "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        #expect(driver.closedReason?.contains("unexpectedSwitchingProtocols") == true)
        #expect(driver.answeredBadGateway)
        #expect(driver.clientText == String(decoding: HTTP1LocalResponses.rejection(status: 502), as: UTF8.self))
        #expect(!driver.connection.isTunnel)
    }

    @Test func permittedUpgradeStillSwitches() {
        var driver = HTTP1Exchange { _, _ in .forward }
        driver.clientSends(Self.h2cUpgrade + "opaque")
        driver.serverSends(Self.switching)
        #expect(driver.connection.isTunnel)
        #expect(driver.upstreamText == Self.h2cUpgrade + "opaque")
    }

    /// CONNECT switches on a 2xx, not on Upgrade: `.forwardWithoutUpgrade` leaves it as it is.
    @Test func connectIsNotAffectedByForwardWithoutUpgrade() {
        var driver = HTTP1Exchange { _, _ in .forwardWithoutUpgrade }
        let connect = "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"
        driver.clientSends(connect + "early")
        driver.serverSends("HTTP/1.1 200 OK\r\n\r\n")
        #expect(driver.connection.isTunnel)
        #expect(driver.upstreamText.hasSuffix("early"))
    }

    @Test func upgradeProtocolsAreListedLowerCased() throws {
        let text = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket, HTTP/2.0\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
        var parser = HTTP1Parser(direction: .request)
        let bytes = Array(text.utf8)
        guard case .head(let head) = parser.parse(bytes) else {
            Issue.record("no head")
            return
        }
        #expect(bytes.withUnsafeBytes { head.upgradeProtocols(in: $0) } == ["websocket", "http/2.0", "h2c"])
        // Without "upgrade" in Connection there is no upgrade request (RFC 9110 §7.8).
        var plain = HTTP1Parser(direction: .request)
        let noOption = Array("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n".utf8)
        guard case .head(let plainHead) = plain.parse(noOption) else {
            Issue.record("no head")
            return
        }
        #expect(noOption.withUnsafeBytes { plainHead.upgradeProtocols(in: $0) } == [])
    }

    @Test func headRewriteReplacesTargetAndFields() {
        let text = "\r\nPOST /a/../b?q HTTP/1.1\r\nHost: h\r\nX-Drop: 1\r\nconnection: upgrade\r\nUpgrade: websocket\r\n"
            + "Content-Length: 0\r\n\r\n"
        var parser = HTTP1Parser(direction: .request)
        let bytes = Array(text.utf8)
        guard case .head(let head) = parser.parse(bytes) else {
            Issue.record("no head")
            return
        }
        let rewrite = HTTP1HeadRewrite(target: Array("/b?q".utf8), removesUpgrade: true, removedFieldNames: ["x-DROP"],
                                       addedFields: [.init(name: "X-Added", value: "yes")])
        let rebuilt = bytes.withUnsafeBytes { rewrite.apply(to: head, in: $0) }
        #expect(String(decoding: rebuilt, as: UTF8.self)
                == "POST /b?q HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-Added: yes\r\n\r\n")
        // The rebuilt head is a valid request with the same framing.
        var check = HTTP1Parser(direction: .request)
        guard case .head(let again) = check.parse(rebuilt) else {
            Issue.record("rebuilt head does not parse")
            return
        }
        #expect(!again.upgradeRequested)
        #expect(again.framing == .none)
    }

    // MARK: Item 2: local answers other than 403

    @Test func localAnswerIsQueuedInRequestOrderLikeADenial() {
        let redirect = HTTP1LocalResponses.redirect(location: "/admin")
        var driver = HTTP1Exchange { head, bytes in
            string(bytes, head.target).contains("%2f") ? .answer(redirect, closes: false) : .forward
        }
        let escaped = "POST /public/..%2fadmin HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
        driver.clientSends(Self.getA + escaped + Self.getA)
        #expect(driver.upstreamText == Self.getA + Self.getA, "the answered request and its body never reach the server")
        #expect(driver.client.isEmpty, "not before the response to the first request")
        driver.serverSends(Self.responseA + Self.responseA)
        #expect(driver.clientText == Self.responseA + String(decoding: redirect, as: UTF8.self) + Self.responseA)
        #expect(driver.closedReason == nil)
        #expect(String(decoding: redirect, as: UTF8.self)
                == "HTTP/1.1 307 Temporary Redirect\r\nLocation: /admin\r\nContent-Length: 0\r\n\r\n")
    }

    @Test func closingLocalAnswerEndsTheConnectionAndLaterRequestsAreNotForwarded() {
        let badRequest = HTTP1LocalResponses.rejection(status: 400)
        var driver = HTTP1Exchange { head, bytes in
            string(bytes, head.target) == "/bad" ? .answer(badRequest, closes: true) : .forward
        }
        driver.clientSends("GET /bad HTTP/1.1\r\nHost: h\r\n\r\n" + Self.getA)
        #expect(driver.clientText == String(decoding: badRequest, as: UTF8.self))
        #expect(driver.upstream.isEmpty, "nothing after a closing answer is forwarded")
        #expect(driver.closedReason == "closed after a local answer")
    }

    @Test func localAnswerToARequestThatClosesClosesEvenWhenTheAnswerDoesNotSaySo() {
        var driver = HTTP1Exchange { _, _ in .answer(Array("HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\n\r\n".utf8), closes: false) }
        driver.clientSends("GET / HTTP/1.0\r\n\r\n")
        #expect(driver.clientText.hasPrefix("HTTP/1.1 418"))
        #expect(driver.closedReason != nil)
    }

    @Test func closesAfterLocalAnswerReflectsTheRequest() {
        func head(_ text: String) -> HTTP1Head? {
            var parser = HTTP1Parser(direction: .request)
            if case .head(let head) = parser.parse(Array(text.utf8)) { return head }
            return nil
        }
        #expect(head("GET / HTTP/1.1\r\nHost: h\r\n\r\n")?.closesAfterLocalAnswer == false)
        #expect(head("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")?.closesAfterLocalAnswer == true)
        #expect(head("GET / HTTP/1.0\r\n\r\n")?.closesAfterLocalAnswer == true)
        #expect(head("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")?.closesAfterLocalAnswer == true)
    }

    // MARK: Local answers the client can frame

    /// RFC 9110 §9.3.2: no content in a response to HEAD, local answers included; with it,
    /// the client would read "Access denied" as the start of the next response.
    @Test func localAnswersToHeadHaveNoContent() {
        var driver = HTTP1Exchange { head, _ in head.isHead ? .deny : .forward }
        driver.clientSends("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n" + Self.getA)
        driver.serverSends(Self.responseA)
        #expect(driver.clientText == "HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\nContent-Type: text/plain\r\n\r\n"
                + Self.responseA)
        var answered = HTTP1Exchange { _, _ in .answer(HTTP1LocalResponses.rejection(status: 400), closes: true) }
        answered.clientSends("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(answered.clientText.hasSuffix("Connection: close\r\n\r\n"))
    }

    /// Found by fuzz-http1: the 400 that replaces the 403 of a denied HEAD whose chunked body
    /// breaks must lose its content as well.
    @Test func badChunkInADeniedHeadIsAnsweredWithoutContent() {
        var driver = HTTP1Exchange { _, _ in .deny }
        driver.clientSends("HEAD /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\nGETkkk\r\n")
        #expect(driver.clientText == "HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
                + "Connection: close\r\n\r\n")
        #expect(driver.closedReason?.contains("invalidChunkSize") == true)
    }

    @Test func answerInsteadOfServerToHeadHasNoContent() {
        var driver = HTTP1Exchange { _, _ in .forward }
        driver.clientSends("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n")
        let answer = driver.connection.answerInsteadOfServer(status: 504).map { String(decoding: $0, as: UTF8.self) }
        #expect(answer == "HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 17\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        driver.serverSends("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        #expect(driver.connection.answerInsteadOfServer(status: 502) == nil, "nothing is owed")
    }

    /// RFC 9112 §9.6: after a response with `Connection: close` the client gets nothing more,
    /// not even a 403 queued for a later request; later requests are not forwarded.
    @Test func closingResponseIsTheLastThingTheClientGets() {
        var driver = HTTP1Exchange(allow: HTTP1ConnectionTests.denyB)
        driver.clientSends(Self.getA + HTTP1ConnectionTests.postB + Self.getA)
        #expect(driver.upstreamText == Self.getA + Self.getA)
        let closing = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nA"
        driver.serverSends(closing)
        #expect(driver.clientText == closing)
        #expect(driver.connection.inFlightCount == 0)
        #expect(!driver.connection.isAwaitingResponse)
        driver.clientSends(Self.getA)
        #expect(driver.upstreamText == Self.getA + Self.getA, "nothing more is forwarded")
        driver.serverSends(Self.responseA)
        #expect(driver.clientText == closing, "not even a 502 after the close")
        #expect(driver.closedReason != nil)
    }

    // MARK: Item 12: a driver out of step costs its connection, not the process

    @Test func resolveWithoutAPendingVerdictEndsTheConnection() {
        var connection = HTTP1Connection()
        connection.resolve(allowed: true)
        guard case .operation(.error(let reason)) = connection.requestStep(Array(Self.getA.utf8)) else {
            Issue.record("expected an error")
            return
        }
        #expect(reason.contains("no request head"))
        // Twice, and after the head was already resolved: still no trap.
        connection.resolve(.deny)
        var second = HTTP1Connection()
        _ = second.requestStep(Array(Self.getA.utf8))
        second.resolve(.forward)
        second.resolve(.forward)
        guard case .operation(.error) = second.requestStep(Array(Self.getA.utf8)) else {
            Issue.record("a second verdict must end the connection")
            return
        }
    }

    @Test func responseStepsWithNothingOwedNeverTrap() {
        var connection = HTTP1Connection()
        #expect(connection.responseStep([]).operation == .needMore(minimumBytes: 1))
        #expect(connection.responseEndOfInput(unconsumedBytes: 0) == nil)
        guard case .error = connection.responseStep(Array("x".utf8)).operation else {
            Issue.record("unsolicited bytes must be an error")
            return
        }
        guard case .error = connection.responseStep(Array("x".utf8)).operation,
              case .error? = connection.responseEndOfInput(unconsumedBytes: 1) else {
            Issue.record("the failure must stick")
            return
        }
    }

    // MARK: Item 5: a bad chunk in a forwarded request's body gets 400

    static let badChunked = "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    static let badRequest = String(decoding: HTTP1LocalResponses.rejection(status: 400), as: UTF8.self)

    @Test func badChunkSizeInAForwardedBodyIsAnswered400ThenCloses() {
        var driver = HTTP1Exchange { _, _ in .forward }
        driver.clientSends(Self.badChunked)
        #expect(driver.upstreamText == "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                "the valid part was forwarded, nothing after the fault")
        #expect(driver.clientText == Self.badRequest)
        #expect(driver.closedReason?.contains("invalidChunkSize") == true)
    }

    /// Better than cutting earlier responses: the 400 waits its turn.
    @Test func badChunkBehindAPipelinedRequestWaitsForTheEarlierResponse() {
        var driver = HTTP1Exchange { _, _ in .forward }
        driver.clientSends(Self.getA + Self.badChunked)
        #expect(driver.client.isEmpty)
        #expect(driver.closedReason == nil)
        #expect(driver.connection.isAwaitingResponse)
        driver.serverSends(Self.responseA)
        #expect(driver.clientText == Self.responseA + Self.badRequest)
        #expect(driver.closedReason != nil)
    }

    /// The server answered before the body broke: its response is relayed whole, then close
    /// (a 400 after it would be one answer too many).
    @Test func badChunkAfterTheServerBeganItsResponseRelaysItThenCloses() {
        var driver = HTTP1Exchange { _, _ in .forward }
        driver.clientSends("POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        driver.serverSends("HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nto")
        driver.clientSends("zz\r\n")
        #expect(driver.closedReason == nil, "the response in progress is finished first")
        #expect(driver.connection.isAwaitingResponse)
        #expect(!driver.connection.canAnswerInsteadOfServer)
        driver.serverSends("ob")
        #expect(driver.clientText == "HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\ntoob")
        #expect(driver.closedReason?.contains("invalidChunkSize") == true)
    }

    @Test func badChunkAfterTheServerAnsweredWholeCloses() {
        var driver = HTTP1Exchange { _, _ in .forward }
        driver.clientSends("POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        driver.serverSends("HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        driver.clientSends("zz\r\n")
        #expect(driver.clientText == "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        #expect(driver.closedReason != nil)
    }

    // MARK: Item 4 on the request side: when a response is owed

    @Test func awaitingResponseStartsWhenTheRequestWasSentWhole() {
        var driver = HTTP1Exchange { _, _ in .forward }
        #expect(!driver.connection.isAwaitingResponse)
        driver.clientSends("POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nsec")
        #expect(!driver.connection.isAwaitingResponse, "the client is still sending: no response timeout yet")
        #expect(driver.connection.canAnswerInsteadOfServer)
        driver.clientSends("ret")
        #expect(driver.connection.isAwaitingResponse)
        driver.serverSends("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
        #expect(driver.connection.isAwaitingResponse, "the response is not complete")
        #expect(!driver.connection.canAnswerInsteadOfServer, "its head already reached the client")
        driver.serverSends("k")
        #expect(!driver.connection.isAwaitingResponse)
        #expect(!driver.connection.canAnswerInsteadOfServer)
    }

    @Test func deniedRequestsOweNoResponse() {
        var driver = HTTP1Exchange { _, _ in .deny }
        driver.clientSends("POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nsec")
        #expect(!driver.connection.isAwaitingResponse)
        #expect(!driver.connection.canAnswerInsteadOfServer)
    }
}
