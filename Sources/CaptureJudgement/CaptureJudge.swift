import PolicyEngine
import Proxy
import Replay

/// `sluice replay`'s engine: reads captures (`Replay`: decoding and TCP reassembly) and
/// judges what they carry with the live proxy's sessions (`RecordedTraffic`), writing the
/// same flow records and counting what it could not judge and why.
public final class CaptureJudge {
    /// What a replay found, for the summary at its end.
    public struct Summary: Sendable {
        /// L7 requests by protocol, then verdict ("FORWARDED", "DROPPED", ...).
        public var requests: [String: [String: Int]] = [:]
        /// L7 requests denied, by the policy that denied them ("namespace/name"), or "no rule
    /// allows it" for denials by default.
        public var deniedBy: [String: Int] = [:]
        public var connections = RecordedTraffic.Counters()
        /// Connections first seen after their handshake: not judged (a stream cannot be
        /// entered at an arbitrary byte), counted here.
        public var skippedMidstream = 0
        /// Connections with bytes missing from the capture (lost segments, snaplen): judged up
        /// to the gap, never on invented bytes.
        public var incomplete = 0
        /// UDP datagrams cut by the snaplen: not judged.
        public var truncatedDatagrams = 0
        public var capture = CaptureStatistics()
    }

    private let traffic: RecordedTraffic
    private let counting: CountingReporter
    private var ids: [TCPConnection: Int] = [:]
    private var nextID = 0
    private var gapped = Set<Int>()
    private var summary = Summary()

    /// `registry`'s sessions judge each connection under `snapshot`; records go to `output`.
    public init(snapshot: PolicySnapshot, registry: SessionRegistry, output: L7FlowReporter) {
        counting = CountingReporter(next: output)
        traffic = RecordedTraffic(policy: WorkerPolicy(holder: PolicySnapshotHolder(snapshot)), registry: registry,
                                  reporter: counting)
    }

    /// Reads every file in turn as one capture, then ends the connections still open.
    /// `progress` is called now and then with the file being read.
    public func judge(paths: [String], progress: ((String) -> Void)? = nil) throws(CaptureError) -> Summary {
        let replay = CaptureReplay { [unowned self] event in self.handle(event) }
        for path in paths {
            progress?(path)
            try replay.read(path: path)
        }
        replay.finish()
        traffic.finish()
        summary.connections = traffic.counters
        summary.capture = replay.statistics
        summary.requests = counting.requests
        summary.deniedBy = counting.deniedBy
        return summary
    }

    private func handle(_ event: ReplayEvent) {
        switch event {
        case .tcp(let tcp, _):
            handle(tcp)
        case .datagram(let source, let destination, let payload, let missing, _):
            guard missing == 0 else {
                summary.truncatedDatagrams += 1
                return
            }
            traffic.datagram(from: Self.address(source), to: Self.address(destination), payload)
        }
    }

    private func handle(_ event: TCPEvent) {
        switch event {
        case .opened(let connection, let midstream):
            guard !midstream else {
                summary.skippedMidstream += 1
                return
            }
            let id = nextID
            nextID += 1
            ids[connection] = id
            traffic.streamOpened(id, client: Self.address(connection.client), server: Self.address(connection.server))
        case .data(let connection, let direction, let bytes):
            guard let id = ids[connection] else { return }
            traffic.streamData(id, fromClient: direction == .clientToServer, bytes)
        case .gap(let connection, _, _):
            guard let id = ids[connection], gapped.insert(id).inserted else { return }
            summary.incomplete += 1
        case .conflictingOverlap:
            break // counted in the capture statistics; the first copy was judged
        case .closed(let connection, _):
            guard let id = ids.removeValue(forKey: connection) else { return }
            gapped.remove(id)
            traffic.streamEnded(id)
        }
    }

    static func address(_ endpoint: TransportEndpoint) -> SocketAddress {
        SocketAddress(host: endpoint.address.description, port: endpoint.port)!
    }
}

/// Passes records on and counts the L7 requests among them by protocol, verdict and the
/// policy that denied them.
final class CountingReporter: L7FlowReporter {
    private let next: L7FlowReporter
    private(set) var requests: [String: [String: Int]] = [:]
    private(set) var deniedBy: [String: Int] = [:]

    init(next: L7FlowReporter) { self.next = next }

    func report(_ record: JSONObject) {
        next.report(record)
        guard case .object(let l7)? = record["l7"], case .string("REQUEST")? = l7["type"],
              case .string(let verdict)? = record["verdict"] else { return }
        let kind = ["http", "dns", "kafka"].first { l7[$0] != nil } ?? "other"
        requests[kind, default: [:]][verdict, default: 0] += 1
        guard verdict == "DROPPED" else { return }
        guard case .array(let policies)? = record["ingress_denied_by"] ?? record["egress_denied_by"], !policies.isEmpty else {
            // Denied because no rule of the L7 kind allows it (default deny at L7).
            deniedBy["no rule allows it", default: 0] += 1
            return
        }
        for case .object(let policy) in policies {
            if case .string(let namespace)? = policy["namespace"], case .string(let name)? = policy["name"] {
                deniedBy["\(namespace)/\(name)", default: 0] += 1
            } else if case .string(let name)? = policy["name"] {
                deniedBy[name, default: 0] += 1
            }
        }
    }
}
