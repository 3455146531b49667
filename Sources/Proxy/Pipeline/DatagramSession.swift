/// What an L7 datagram session decides about one datagram. The session only decides; the
/// UDP listener's flow performs the decision on its sockets.
public enum DatagramVerdict: Equatable, Sendable {
    /// Relay the datagram unchanged (client's to the server, server's to the client).
    case forward
    /// Relay these bytes instead of the datagram (a rewritten query or answer).
    case forwardRewritten([UInt8])
    /// Relay nothing; send these bytes back to the datagram's sender instead. For a client
    /// datagram the answer comes from the address the client asked (a synthesized DNS
    /// REFUSED), and the server never sees the request.
    case answer([UInt8])
    /// Relay nothing; the flow reports the drop with `reason` (a flow record and the
    /// worker's drop counter). A session that wants an L7 record of its own reports it too.
    case drop(reason: String)
}

/// A protocol handler for one UDP flow (one client's exchange with one original
/// destination): a parser from `L7Parsers` joined with a policy decision, asked about every
/// datagram before it is relayed either way. The DNS proxy plugs in here.
///
/// Contract:
/// - The flow calls the session on the worker's thread, one datagram at a time, in arrival
///   order per direction. `bytes` is one whole datagram (UDP keeps message boundaries, so
///   there is no "need more"); it points into the worker's shared receive buffer and is
///   valid only during the call: copy what must outlive it.
/// - The session never touches sockets. It keeps its protocol state (DNS: the ids of queries
///   in flight, to learn the answered addresses from the responses) and reports flow records
///   of its messages through `SessionContext.reporter` (`L7FlowReporter`).
/// - The session judges each message under the current policy (`SessionContext.policy`:
///   check `isCurrent(_:)` with the version its policies came from). Whether the flow keeps
///   this session at all after a policy change is the worker's choice, made before the next
///   datagram (see `DatagramDelegate.datagramFlowChoice`).
public protocol L7DatagramSession: AnyObject {
    /// A datagram from the client, before it reaches the server.
    func clientDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict
    /// A datagram from the server, before it reaches the client. (`answer` sends the bytes
    /// back to the server.)
    func serverDatagram(_ bytes: UnsafeRawBufferPointer) -> DatagramVerdict
    /// The flow ended (idle, evicted, the policy no longer gives it this session, or the
    /// listener closed); the session is not called again. Report what is still open
    /// (queries never answered).
    func flowEnded()
    /// When the session wants `timedOut(now:)` called (`MonotonicClock` nanoseconds; nil:
    /// no clock of its runs). The flow reads it after every datagram it puts to the session
    /// and after `timedOut`; a call may come early (the session then returns nothing).
    var nextDeadline: UInt64? { get }
    /// The flow's clock reached `nextDeadline`: datagrams to send the client now (DNS: a
    /// SERVFAIL for a query the resolver left unanswered), from the address it asked.
    func timedOut(now: UInt64) -> [[UInt8]]
}

extension L7DatagramSession {
    public func flowEnded() {}
    public var nextDeadline: UInt64? { nil }
    public func timedOut(now: UInt64) -> [[UInt8]] { [] }
}
