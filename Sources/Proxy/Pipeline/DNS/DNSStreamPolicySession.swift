import L7Parsers
import PolicyEngine

/// DNS over TCP under policy (RFC 1035 §4.2.2, RFC 7766), one client's connection to one
/// resolver: `DNSStreamFraming` cuts each direction into messages behind their two-byte
/// length (any number per segment, one across any number of segments), and the connection's
/// `DNSExchangeJudge` judges each message exactly as the UDP session does.
///
/// Client to resolver:
/// - allowed query: passed whole, length prefix included;
/// - denied query: Sluice answers it (framed; REFUSED unless configured otherwise) and drops
///   it, so the resolver never sees it;
/// - unreadable query with a readable header: answered FORMERR, dropped; the connection goes on;
/// - a message too short for a header: the connection closes (nothing can be answered);
/// - a response sent by the client: dropped.
///
/// Resolver to client: an answer passes only when it answers an outstanding query (same ID
/// and question; RFC 7766 §7 lets pipelined answers come in any order), after its addresses
/// were handed to the learner. An answer that cannot be read or that answers nothing this
/// client asked ends the connection (the upstream at once; what was already queued for the
/// client still goes out): a resolver that says what was not asked is not trusted for the
/// rest of the connection, and the client retries on a new one (RFC 7766 §6.2.4). Nothing
/// of such an answer reaches the client.
///
/// When the resolver stays silent past `dns.responseTimeout` while a query is outstanding
/// (the connection's response clock, see `responseTimeout`), every outstanding query is
/// answered SERVFAIL and the connection closes.
public final class DNSStreamPolicySession: L7Session {
    private var judge: DNSExchangeJudge
    /// A client message already answered by Sluice, to drop at the next request step.
    private var answeredMessageBytes = 0

    public var allowedCount: UInt32 { judge.allowedCount }
    public var deniedCount: UInt32 { judge.deniedCount }

    /// Parameters as for `DNSPolicySession`.
    public init(context: SessionContext, deniedRCode: UInt8 = DNSAnswers.refused,
                responseTimeout: UInt64 = DNSSettings().responseTimeout, learner: FQDNLearning? = nil,
                clock: (() -> UInt64)? = nil) {
        judge = DNSExchangeJudge(context: context, deniedRCode: deniedRCode, responseTimeout: responseTimeout,
                                 learner: learner, clock: clock ?? context.clock.monotonic)
        self.responseTimeout = responseTimeout
    }

    /// The largest message and its length prefix.
    public var maximumMessageBytes: Int { 2 + Int(UInt16.max) }

    public let responseTimeout: UInt64?

    public func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        direction == .request ? requestStep(bytes) : responseStep(bytes)
    }

    private func requestStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if answeredMessageBytes > 0 {
            // The answer went first (it is queued for the client); now the query goes.
            defer { answeredMessageBytes = 0 }
            return .drop(answeredMessageBytes)
        }
        let message: Range<Int>
        switch DNSStreamFraming.next(bytes) {
        case .needMore(let minimum): return .needMore(minimumBytes: minimum)
        case .message(let range): message = range
        }
        switch judge.judgeQuery(UnsafeRawBufferPointer(rebasing: bytes[message])) {
        case .relay:
            return .pass(message.upperBound)
        case .answer(let answer):
            answeredMessageBytes = message.upperBound
            return .reply(DNSStreamFraming.framed(answer))
        case .discard:
            return .drop(message.upperBound)
        case .unreadable(let reason):
            return .close(reason: reason)
        }
    }

    private func responseStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        let message: Range<Int>
        switch DNSStreamFraming.next(bytes) {
        case .needMore(let minimum): return .needMore(minimumBytes: minimum)
        case .message(let range): message = range
        }
        switch judge.judgeAnswer(UnsafeRawBufferPointer(rebasing: bytes[message])) {
        case .relay: return .pass(message.upperBound)
        case .reject(let reason): return .close(reason: reason)
        }
    }

    public func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? { nil }

    /// A client that stops in the middle of a message is closed without a word.
    public func incompleteMessageTimedOut() -> [UInt8]? { nil }

    /// The resolver cannot be reached: SERVFAIL for every query judged so far.
    public func upstreamFailed(reason: String) -> [UInt8]? { serverFailures() }

    public var isAwaitingResponse: Bool { judge.isAwaitingAnswer }

    public func responseTimedOut() -> [UInt8]? { serverFailures() }

    public var isIdle: Bool { !judge.isAwaitingAnswer && answeredMessageBytes == 0 }

    /// SERVFAIL, framed, for every outstanding query (oldest first); nil when none is.
    private func serverFailures() -> [UInt8]? {
        let answers = judge.expireAll()
        return answers.isEmpty ? nil : answers.flatMap(DNSStreamFraming.framed)
    }
}
