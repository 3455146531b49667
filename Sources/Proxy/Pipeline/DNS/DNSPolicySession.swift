import L7Parsers
import PolicyEngine

/// DNS over UDP under policy, one client's flow to one resolver: a datagram is a message,
/// judged by the flow's `DNSExchangeJudge` (see there: allowed queries relayed, denied ones
/// answered by Sluice and never relayed, unreadable ones answered FORMERR when a header can
/// be read, answers relayed only to an outstanding query, SERVFAIL when the resolver stays
/// silent). A query without even a header, a response from the client and an answer nobody
/// asked for are dropped. A truncated answer (TC) is relayed as it is: the client retries
/// over TCP (`DNSStreamPolicySession`).
public final class DNSPolicySession: L7DatagramSession {
    private var judge: DNSExchangeJudge

    public var allowedCount: UInt32 { judge.allowedCount }
    public var deniedCount: UInt32 { judge.deniedCount }

    /// Queries one flow may have in flight; past it the oldest is forgotten.
    public static var maximumOutstanding: Int { DNSExchangeJudge.maximumOutstanding }

    /// `deniedRCode`: what a denied query is answered (REFUSED by default; NXDOMAIN to look
    /// like a name that does not exist).
    /// `responseTimeout`: how long the resolver may take to answer an allowed query before
    /// the client is answered SERVFAIL (nanoseconds of `clock`).
    /// `learner` receives the addresses of each allowed answer before it is released (toFQDNs).
    public init(context: SessionContext, deniedRCode: UInt8 = DNSAnswers.refused,
                responseTimeout: UInt64 = DNSSettings().responseTimeout, learner: FQDNLearning? = nil,
                clock: (() -> UInt64)? = nil) {
        judge = DNSExchangeJudge(context: context, deniedRCode: deniedRCode, responseTimeout: responseTimeout,
                                 learner: learner, clock: clock ?? context.clock.monotonic)
    }

    public func clientDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        switch judge.judgeQuery(bytes) {
        case .relay: return .forward
        case .answer(let answer): return .answer(answer)
        case .discard(let reason), .unreadable(let reason): return .drop(reason: reason)
        }
    }

    public func serverDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict {
        switch judge.judgeAnswer(bytes) {
        case .relay: return .forward
        case .reject(let reason): return .drop(reason: reason)
        }
    }

    public var nextDeadline: UInt64? { judge.nextDeadline }

    public func timedOut(now: UInt64) -> [[UInt8]] { judge.expire(now: now) }

    public func flowEnded() {
        judge.end()
    }
}
