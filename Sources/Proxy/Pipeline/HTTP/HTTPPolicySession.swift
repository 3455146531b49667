import L7Parsers
import PolicyEngine

/// HTTP/1.1 under policy: `HTTP1Connection` frames the messages, the policy engine judges
/// each request head, denied requests are answered `403` by the proxy and never reach the
/// server, and every request and response is reported as a flow record.
public final class HTTPPolicySession: L7Session {
    private var http: HTTP1Connection
    private let settings: HTTPSettings
    /// The policy's HTTP rules for this connection's requests.
    private var judge: HTTPRequestJudge
    private var identities: ConnectionIdentities { judge.identities }
    private let reporter: L7FlowReporter?
    private let clock: () -> UInt64
    private let wallClock: () -> UInt64
    private var recordParts = L7RecordParts()
    /// Start times of forwarded requests whose final response has not begun, in order.
    /// Requests owed a response, oldest first (`allowed` false only in audit mode: judged
    /// denied and relayed anyway).
    private var pending: [(start: UInt64, method: String, url: String, direction: Direction, allowed: Bool)] = []
    /// Set once the response side met a fault and said so to the client (502): the next
    /// response step closes the connection.
    private var responseFault: String?
    /// Bytes of a head to drop after its rewritten replacement was forwarded.
    private var dropAfterRewrite = 0
    private var rewrite: [UInt8]?
    /// Requests judged on this connection (for tests and counters).
    public private(set) var allowedCount: UInt32 = 0
    public private(set) var deniedCount: UInt32 = 0

    /// `policy` is the worker's view of the current policy (nil: allow every request);
    /// `identities` are the connection's ends as that policy saw them at accept.
    /// Audit (`SessionContext.audit`): every request is judged and reported, and relayed as
    /// it was, denied or not (replaying recorded traffic).
    private let audit: Bool

    public init(limits: HTTP1Limits, settings: HTTPSettings = HTTPSettings(), policy: WorkerPolicy?,
                identities: ConnectionIdentities, reporter: L7FlowReporter?, audit: Bool = false,
                clock: @escaping () -> UInt64 = MonotonicClock.now,
                wallClock: @escaping () -> UInt64 = WallClock.nanosecondsNow) {
        http = HTTP1Connection(limits: limits)
        self.audit = audit
        self.settings = settings
        judge = HTTPRequestJudge(policy: policy, identities: identities)
        self.reporter = reporter
        self.clock = clock
        self.wallClock = wallClock
    }

    public func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        direction == .request ? requestStep(bytes) : responseStep(bytes)
    }

    public func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? {
        guard direction == .response else { return nil }
        return http.responseEndOfInput(unconsumedBytes: unconsumed).map(SessionOperation.init)
    }

    /// A head must be seen whole (leading empty lines, the start line, the fields and the
    /// blank line); bodies stream through once their request is judged.
    public var maximumMessageBytes: Int {
        let limits = http.limits
        return limits.maximumLeadingEmptyLines * 2 + max(limits.maximumRequestLineBytes, limits.maximumStatusLineBytes)
            + max(limits.maximumHeaderBytes, limits.maximumTrailerBytes) + 4
    }

    public func incompleteMessageTimedOut() -> [UInt8]? {
        // RFC 9110 §15.5.9: 408 "the server did not receive a complete request message within
        // the time that it was prepared to wait". Only when no earlier answer is owed, so
        // responses stay in request order.
        guard http.inFlightCount == 0 else { return nil }
        reporter?.report(draft(type: "RESPONSE", verdict: "FORWARDED", direction: .ingress, method: nil, url: nil,
                                code: 408, latency: nil, rules: [], allowed: false))
        return HTTP1LocalResponses.rejection(status: 408)
    }

    public func upstreamFailed(reason: String) -> [UInt8]? {
        // RFC 9110 §15.6.4: 503 "the server is currently unable to handle the request".
        reporter?.report(draft(type: "RESPONSE", verdict: "ERROR", direction: .ingress, method: nil, url: nil,
                                code: 503, latency: nil, rules: [], allowed: false))
        return Self.gatewayAnswer(status: 503, reason: "Service Unavailable", body: "upstream unavailable: \(reason)\r\n")
    }

    public var isAwaitingResponse: Bool { http.isAwaitingResponse }

    public var isIdle: Bool { http.inFlightCount == 0 && !http.isTunnel }

    public func responseTimedOut() -> [UInt8]? {
        // RFC 9110 §15.6.5: 504 "did not receive a timely response from an upstream server".
        answerInsteadOfServer(status: 504)
    }

    /// The proxy's answer in place of the server's response to the request at the front
    /// (502, 504), reported as that request's response; nil when part of the server's
    /// response already reached the client.
    private func answerInsteadOfServer(status: Int) -> [UInt8]? {
        guard let answer = http.answerInsteadOfServer(status: status), !pending.isEmpty else { return nil }
        let request = takePending()
        reporter?.report(draft(type: "RESPONSE", verdict: "ERROR", direction: request.direction, method: request.method,
                                url: request.url, code: status, latency: clock() &- request.start, rules: [], allowed: true))
        return answer
    }

    /// The oldest request still owed a response. The queue's storage goes when it empties: an
    /// idle keep-alive connection holds none.
    private func takePending() -> (start: UInt64, method: String, url: String, direction: Direction, allowed: Bool) {
        let request = pending.removeFirst()
        if pending.isEmpty { pending = [] }
        return request
    }

    /// A proxy-made answer that ends the connection (502, 503, 504).
    static func gatewayAnswer(status: Int, reason: String, body: String) -> [UInt8] {
        Array(("HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
               + "Connection: close\r\n\r\n" + body).utf8)
    }

    // MARK: Requests

    private func requestStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if dropAfterRewrite > 0 {
            defer { dropAfterRewrite = 0 }
            return .drop(dropAfterRewrite)
        }
        while true {
            switch http.requestStep(bytes) {
            case .verdictNeeded(let head):
                judgeRequest(head, bytes)
            case .operation(let operation):
                if case .pass(let count) = operation, let rebuilt = rewrite {
                    rewrite = nil
                    dropAfterRewrite = count
                    return .forward(rebuilt)
                }
                if case .inject(let answer) = operation { reportLocalAnswer(answer) }
                return SessionOperation(operation)
            }
        }
    }

    private func judgeRequest(_ head: HTTP1Head, _ bytes: UnsafeRawBufferPointer) {
        func text(_ range: Range<Int>) -> String {
            String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        }
        let method = text(head.method)
        var target = text(head.target)
        // An origin-form target is its own path: one string for both.
        var path = head.path == head.target ? target : text(head.path)
        var rewriteHead = HTTP1HeadRewrite()
        var rewrites = false
        if settings.normalizePaths {
            // The reference normalises before matching; the server receives what was judged.
            switch HTTP1TargetNormalization.normalize(head, in: bytes) {
            case .unchanged:
                break
            case .normalized(let normalTarget, let normalPath):
                target = normalTarget
                path = normalPath
                rewriteHead.target = Array(normalTarget.utf8)
                rewrites = true
            case .redirect(let location):
                return answerLocally(method: method, url: target,
                                     HTTP1LocalResponses.redirect(location: location, closes: head.closesAfterLocalAnswer),
                                     closes: false)
            case .invalid:
                return answerLocally(method: method, url: target, HTTP1LocalResponses.rejection(status: 400), closes: true)
            }
        }
        // RFC 9112 §3.2.2: with an absolute-form target, the authority in it is the host.
        let host = (head.authority ?? head.host).map(text)
        // Header fields become text only when a rule can read them: those a rule names.
        let reading = judge.fieldsToRead()
        var headers: [(name: String, value: String)] = []
        if !reading.isEmpty {
            for field in head.fields where reading.contains(UnsafeRawBufferPointer(rebasing: bytes[field.name])) {
                headers.append((name: text(field.name), value: text(field.value)))
            }
        }
        let facts = HTTPRequestFacts(method: method, path: path, host: host, headers: headers)

        let judgement = judge.judge(facts, references: reporter != nil)
        let (allowed, deciding, actions, direction) = (judgement.allowed, judgement.rules, judgement.actions,
                                                       judgement.direction)
        var decision = HTTP1RequestDecision.deny
        if audit {
            // Judged and reported below; relayed as recorded, so its recorded response follows.
            if allowed { allowedCount += 1 } else { deniedCount += 1 }
            pending.append((clock(), method, target, direction, allowed))
            decision = .forward
        } else if allowed {
            allowedCount += 1
            pending.append((clock(), method, target, direction, true))
            decision = .forward
            // Only upgrades the configuration allows may turn the connection into a relay; an
            // offer naming any other protocol (h2c above all) is stripped, and the request goes
            // on as an ordinary one.
            let offered = head.upgradeProtocols(in: bytes)
            if !offered.isEmpty && !offered.allSatisfy({ settings.allowedUpgrades.contains(Self.protocolName($0)) }) {
                decision = .forwardWithoutUpgrade
                rewriteHead.removesUpgrade = true
                rewrites = true
            }
            for action in actions {
                switch action {
                case .add(let header, let value):
                    rewriteHead.addedFields.append(.init(name: header, value: value.value))
                case .replace(let header, let value):
                    rewriteHead.removedFieldNames.append(header)
                    rewriteHead.addedFields.append(.init(name: header, value: value.value))
                case .remove(let header):
                    rewriteHead.removedFieldNames.append(header)
                }
                rewrites = true
            }
            if rewrites { rewrite = rewriteHead.apply(to: head, in: bytes) }
        } else {
            deniedCount += 1
        }
        http.resolve(decision)
        reporter?.report(draft(type: "REQUEST", verdict: allowed ? "FORWARDED" : "DROPPED", direction: direction,
                                method: method, url: target, code: nil, latency: nil, rules: deciding, allowed: allowed))
    }

    /// "websocket/13" -> "websocket": the configuration names protocols without versions.
    private static func protocolName(_ offered: String) -> String {
        offered.split(separator: "/", maxSplits: 1).first.map(String.init) ?? offered
    }

    /// Answers a request locally (a redirect, a 400) in its turn, without judging it.
    private func answerLocally(method: String, url: String, _ answer: [UInt8], closes: Bool) {
        deniedCount += 1
        if audit {
            pending.append((clock(), method, url, .ingress, false))
            http.resolve(.forward)
        } else {
            http.resolve(.answer(answer, closes: closes))
        }
        reporter?.report(draft(type: "REQUEST", verdict: "DROPPED", direction: .ingress, method: method, url: url,
                                code: nil, latency: nil, rules: [], allowed: false))
    }

    // MARK: Responses

    private func responseStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if let responseFault { return .close(reason: responseFault) }
        let step = http.responseStep(bytes)
        if case .error(let reason) = step.operation {
            // A response that cannot be relayed. When nothing of the owed response reached the
            // client yet, it gets 502 (as from HAProxy and the reference) after every valid
            // response before it; then the connection closes.
            guard let answer = answerInsteadOfServer(status: 502) else { return .close(reason: reason) }
            responseFault = reason
            return .forward(answer)
        }
        if let head = step.head, !head.isInformational || head.switchesProtocol, !pending.isEmpty {
            let request = takePending()
            // In audit mode the response to a denied request is one the client would not have had.
            reporter?.report(draft(type: "RESPONSE", verdict: request.allowed ? "FORWARDED" : "DROPPED",
                                    direction: request.direction, method: request.method, url: request.url,
                                    code: head.statusCode, latency: clock() &- request.start, rules: [],
                                    allowed: request.allowed))
        }
        return SessionOperation(step.operation)
    }

    private func reportLocalAnswer(_ answer: [UInt8]) {
        // "HTTP/1.1 403 Forbidden..." -> 403
        let status = answer.count > 12 ? Int(String(decoding: answer[9..<12], as: UTF8.self)) : nil
        reporter?.report(draft(type: "RESPONSE", verdict: "FORWARDED", direction: .ingress, method: nil, url: nil,
                                code: status, latency: nil, rules: [], allowed: false))
    }

    // MARK: Flow records

    private func draft(type: String, verdict: String, direction: Direction, method: String?, url: String?,
                       code: Int?, latency: UInt64?, rules: [RuleReference], allowed: Bool) -> L7RecordDraft {
        // The call sites pass the reference's spellings; anything else would be our bug, reported as an error.
        FlowRecords.httpDraft(verdict: FlowVerdict(rawValue: verdict) ?? .error, connection: identities,
                              parts: &recordParts, time: wallClock(), direction: direction,
                              type: type == "RESPONSE" ? .response : .request, method: method, url: url, code: code,
                              latency: latency, rules: rules, allowed: allowed)
    }
}
