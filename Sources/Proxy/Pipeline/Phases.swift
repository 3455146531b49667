/// The path of a connection through Sluice, phase by phase. Each phase names the type that
/// carries it out, so a reader can follow a request from the socket to its flow record.
///
/// 1. **Accept** — `StreamListener` (TCP) or `DatagramListener` (UDP) takes the connection
///    or datagram from the kernel. Transparent listeners receive traffic the datapath
///    diverted to them (`bpf_sk_assign` or nftables TPROXY); explicit listeners receive
///    traffic addressed to them.
/// 2. **Identify** — the original destination is the accepted socket's local address
///    (transparent) or the listener's configured upstream (explicit). Connections addressed
///    to the listener itself are refused: relaying them would loop.
/// 3. **Detect protocol** — the listener's configuration says what the port carries. Today
///    every listener is an L4 relay; L7 parsers plug in here per port.
/// 4. **Parse** — (L7 ports) a per-direction parser from `L7Parsers` turns bytes into
///    requests and answers with an operation (pass N, drop N, inject, need more, error).
/// 5. **Evaluate** — (L7 ports) the request goes to `PolicyEngine` with its identities and
///    gets a verdict.
/// 6. **Act** — `RelayConnection` moves bytes between the two sockets with bounded buffers,
///    backpressure, half-close and reset propagation; the upstream connect carries the
///    proxy mark so the datapath does not divert it again.
/// 7. **Report** — the worker writes one flow record per finished connection or UDP session
///    (`FlowRecords`) to the configured `FlowLog`.
public enum PipelinePhase: String, CaseIterable, Sendable {
    case accept, identify, detectProtocol, parse, evaluate, act, report
}
