/// The path of a connection through Sluice, phase by phase. Each phase names the type that
/// carries it out, so a reader can follow a request from the socket to its flow record.
///
/// 1. **Accept** — `StreamListener` (TCP) or `DatagramListener` (UDP) takes the connection
///    or datagram from the kernel. Transparent listeners receive traffic the datapath
///    diverted to them (`bpf_sk_assign` or nftables TPROXY); explicit listeners receive
///    traffic addressed to them.
/// 2. **Identify** — the original destination is the accepted socket's local address
///    (transparent) or the listener's configured upstream (explicit). Connections addressed
///    to the listener itself are refused: relaying them would loop. Both ends get their
///    identities from the worker's view of the current policy (`WorkerPolicy`).
/// 3. **Detect protocol** — `L7Detection` reads which L7 rules the policy puts on the
///    connection's peer and port (`ConnectionPolicy.l7Protocols`): none → an L4 relay (after
///    the L3/L4 verdict); HTTP → an `HTTPPolicySession`; a protocol this proxy cannot judge
///    yet (Kafka, DNS, HTTP over UDP) → the connection or datagram is refused and reported,
///    never relayed open. An explicit listener with `l7: http` always parses HTTP.
/// 4. **Parse** — (L7 ports) a per-direction parser from `L7Parsers` turns bytes into
///    requests and answers with an operation (pass N, drop N, inject, need more, blocked,
///    error).
/// 5. **Evaluate** — (L7 ports) each request goes to `PolicyEngine` with its identities; the
///    session takes fresh policies first when the policy changed, so a change applies to the
///    next request on every connection.
/// 6. **Act** — `RelayConnection` moves bytes between the two sockets with bounded buffers,
///    backpressure, half-close and reset propagation; the upstream connect carries the
///    proxy mark so the datapath does not divert it again. With an L7 session the upstream
///    is connected only once a request is allowed, and the header, response and idle clocks
///    run here.
/// 7. **Report** — the worker writes one flow record per finished connection or UDP session
///    (`FlowRecords`), and sessions one per request and response, to the configured `FlowLog`.
public enum PipelinePhase: String, CaseIterable, Sendable {
    case accept, identify, detectProtocol, parse, evaluate, act, report
}
