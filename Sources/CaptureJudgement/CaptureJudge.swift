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
        /// Connections first seen after their handshake and not judged: not HTTP (a stream
        /// cannot be entered at an arbitrary byte), or no request line found in them.
        public var skippedMidstream = 0
        /// HTTP connections first seen after their handshake, judged from the first whole
        /// request line their client sent.
        public var resynchronised = 0
        /// Connections with bytes missing from the capture (lost segments, snaplen): judged up
        /// to the gap, never on invented bytes.
        public var incomplete = 0
        /// UDP datagrams cut by the snaplen: not judged.
        public var truncatedDatagrams = 0
        public var capture = CaptureStatistics()
    }

    private let traffic: RecordedTraffic
    private let counting: CountingReporter
    /// The output, when it counts the records itself (see `init`).
    private var writer: RecordWriter?
    /// With `--compare`: the other policy set, judging the same events side by side.
    private let other: (traffic: RecordedTraffic, ledger: VerdictLedger, mine: VerdictLedger)?
    private var ids: [TCPConnection: Int] = [:]
    private var nextID = 0
    private var gapped = Set<Int>()
    private var summary = Summary()
    private var midstream = MidstreamResync()
    private let onChange: ((VerdictChange) -> Void)?
    public private(set) var changes = 0

    /// `registry`'s sessions judge each connection under `snapshot`; records go to `output`.
    /// With `comparedWith`, every request is judged under that policy set too, and
    /// `onChange` hears of each one whose verdict differs (records then go to `output` only
    /// for `snapshot`).
    public init(snapshot: PolicySnapshot, registry: SessionRegistry, output: L7FlowReporter?,
                comparedWith otherSnapshot: PolicySnapshot? = nil, onChange: ((VerdictChange) -> Void)? = nil) {
        // The first set's requests reach its ledger only when there is something to compare.
        let mine = otherSnapshot.map { _ in VerdictLedger(next: nil) }
        let reporter: L7FlowReporter
        if mine == nil, let writer = output as? RecordWriter {
            // Nothing else reads the records as they come: they are counted on the writer's
            // thread, as it serialises them, off the judging thread.
            counting = CountingReporter(next: nil, ledger: nil)
            writer.alsoReading = counting
            self.writer = writer
            reporter = writer
        } else {
            counting = CountingReporter(next: output, ledger: mine)
            reporter = counting
        }
        traffic = RecordedTraffic(policy: WorkerPolicy(holder: PolicySnapshotHolder(snapshot)), registry: registry,
                                  reporter: reporter)
        if let otherSnapshot, let mine {
            let ledger = VerdictLedger(next: nil)
            other = (RecordedTraffic(policy: WorkerPolicy(holder: PolicySnapshotHolder(otherSnapshot)), registry: registry,
                                     reporter: ledger), ledger, mine)
        } else {
            other = nil
        }
        self.onChange = onChange
    }

    /// How far a replay has got: the file being read (its index in the list), and how many of
    /// its bytes on disk have been read.
    public struct Progress: Sendable {
        public var file: String
        public var fileIndex: Int
        public var bytesRead: Int64
        public var fileSize: Int64
    }

    /// Reads every file in turn as one capture, then ends the connections still open.
    /// `progress` is called as each file starts and now and then while it is read.
    ///
    /// The captures are read, decoded and reassembled on a thread of their own, and the
    /// events judged on the calling thread (`progress` is called on the reading one): the two
    /// halves overlap, a few batches of events apart (`ReplayEventPipe`).
    public func judge(paths: [String], progress: (@Sendable (Progress) -> Void)? = nil) throws(CaptureError) -> Summary {
        defer { ids.removeAll(); outcomes.removeAll() }
        let pipe = ReplayEventPipe()
        let reading = ReadingOutcome()
        let reader = JoinableThread {
            var batch = pipe.take()
            let replay = CaptureReplay { event in
                batch.append(event)
                if batch.isFull {
                    pipe.send(batch)
                    batch = pipe.take()
                }
            }
            do throws(CaptureError) {
                try Self.read(paths, with: replay, progress: progress)
                replay.finish()
            } catch {
                reading.error = error
            }
            if batch.isEmpty { pipe.giveBack(batch) } else { pipe.send(batch) }
            reading.statistics = replay.statistics
            pipe.close()
        }
        let statistics: CaptureStatistics
        if let reader {
            while let batch = pipe.receive() {
                batch.forEach { handle($0) }
                pipe.giveBack(batch)
            }
            reader.join()
            if let error = reading.error { throw error }
            statistics = reading.statistics
        } else {
            // No second thread to be had: read and judge on this one.
            let replay = CaptureReplay { [unowned self] event in self.handle(event) }
            try Self.read(paths, with: replay, progress: progress)
            replay.finish()
            statistics = replay.statistics
        }
        traffic.finish()
        if let other {
            other.traffic.finish()
            compare(other.mine.drain(), other.ledger.drain())
        }
        summary.connections = traffic.counters
        summary.capture = statistics
        writer?.flush() // every record counted
        summary.requests = counting.requests
        summary.deniedBy = counting.deniedBy
        return summary
    }

    private static func read(_ paths: [String], with replay: CaptureReplay,
                             progress: (@Sendable (Progress) -> Void)?) throws(CaptureError) {
        for (index, path) in paths.enumerated() {
            progress?(Progress(file: path, fileIndex: index, bytesRead: 0, fileSize: 0))
            try replay.read(path: path) { read, size in
                progress?(Progress(file: path, fileIndex: index, bytesRead: read, fileSize: size))
            }
        }
    }

    /// What the reading thread leaves for the judging one, read after joining it.
    private final class ReadingOutcome: @unchecked Sendable {
        var error: CaptureError?
        var statistics = CaptureStatistics()
    }

    private func handle(_ event: ReplayEvent) {
        switch event {
        case .tcp(let tcp, let time):
            traffic.now = time
            guard let replaced = resynchronise(tcp) else { break }
            for tcp in replaced { judge(.tcp(tcp, time: time)) }
            return
        case .datagram(_, _, _, _, let time):
            traffic.now = time
        }
        judge(event)
    }

    /// Judges one event under the policy set, then under the compared one.
    private func judge(_ event: ReplayEvent) {
        dispatch(event, to: traffic, counting: true)
        guard let other else { return }
        other.traffic.now = traffic.now
        dispatch(event, to: other.traffic, counting: false)
        compare(other.mine.drain(), other.ledger.drain())
    }

    /// The events to judge instead of `event` for a connection entered part-way (none while
    /// no request line is found); nil for every other event. An HTTP connection is opened
    /// when its client's first whole request line arrives, as if it started there.
    private func resynchronise(_ event: TCPEvent) -> [TCPEvent]? {
        switch event {
        case .opened(let connection, midstream: true):
            let client = Self.address(connection.client), server = Self.address(connection.server)
            guard traffic.carries(.http, client: client, server: server), midstream.track(connection) else { return nil }
            return []
        case .data(let connection, let direction, let bytes):
            guard midstream.isTracking(connection) else { return nil }
            guard let (from, entered) = midstream.data(connection, direction, bytes) else { return [] }
            let judged = UnsafeRawBufferPointer(rebasing: bytes[from...])
            if entered {
                summary.resynchronised += 1
                return [.opened(connection, midstream: false), .data(connection, direction, judged)]
            }
            return [.data(connection, direction, judged)]
        case .gap(let connection, _, _), .conflictingOverlap(let connection, _):
            guard midstream.isTracking(connection), ids[connection] == nil else { return nil }
            return [] // before the stream was entered: nothing of it judged
        case .closed(let connection, _):
            guard midstream.isTracking(connection) else { return nil }
            if midstream.end(connection) { return nil }
            summary.skippedMidstream += 1
            return []
        case .opened:
            return nil
        }
    }

    /// Requests judged under both sets are matched by key; one judged under only one set
    /// (its connection met another L3/L4 verdict or kind there) is compared with how that
    /// connection fared under the other.
    private func compare(_ before: [(key: String, connection: String, what: String, verdict: String)],
                         _ after: [(key: String, connection: String, what: String, verdict: String)]) {
        guard !before.isEmpty || !after.isEmpty else { return }
        var others: [String: String] = [:]
        for request in after { others[request.key] = request.verdict }
        for request in before {
            let verdict = others.removeValue(forKey: request.key) ?? "not judged at L7"
            if verdict != request.verdict { report(request.connection, request.what, request.verdict, verdict) }
        }
        for request in after where others[request.key] != nil {
            report(request.connection, request.what, "not judged at L7", request.verdict)
        }
    }

    private func report(_ connection: String, _ what: String, _ before: String, _ after: String) {
        changes += 1
        onChange?(VerdictChange(connection: connection, what: what, before: before, after: after))
    }

    /// The connection-level verdicts (L3/L4, kind) of a new connection under both sets.
    private var outcomes: [Int: RecordedTraffic.Outcome] = [:]

    private func dispatch(_ event: ReplayEvent, to traffic: RecordedTraffic, counting: Bool) {
        switch event {
        case .tcp(let tcp, _):
            dispatch(tcp, to: traffic, counting: counting)
        case .datagram(let source, let destination, let payload, let missing, _):
            guard missing == 0 else {
                if counting { summary.truncatedDatagrams += 1 }
                return
            }
            traffic.datagram(from: Self.address(source), to: Self.address(destination), payload)
        }
    }

    /// `counting`: the first set's pass, which keeps the connection table and the summary;
    /// the compared set's pass follows it for the same event.
    private func dispatch(_ event: TCPEvent, to traffic: RecordedTraffic, counting: Bool) {
        switch event {
        case .opened(let connection, let midstream):
            guard !midstream else {
                if counting { summary.skippedMidstream += 1 }
                return
            }
            if counting {
                ids[connection] = nextID
                nextID += 1
            }
            guard let id = ids[connection] else { return }
            let outcome = traffic.streamOpened(id, client: Self.address(connection.client), server: Self.address(connection.server))
            if counting {
                outcomes[id] = outcome
            } else if let first = outcomes.removeValue(forKey: id), Self.layer(first) != Self.layer(outcome) {
                report("\(connection.client) -> \(connection.server)", "connection", Self.layer(first), Self.layer(outcome))
            }
        case .data(let connection, let direction, let bytes):
            guard let id = ids[connection] else { return }
            traffic.streamData(id, fromClient: direction == .clientToServer, bytes)
        case .gap(let connection, _, _):
            guard counting, let id = ids[connection], gapped.insert(id).inserted else { return }
            summary.incomplete += 1
        case .conflictingOverlap:
            break // counted in the capture statistics; the first copy was judged
        case .closed(let connection, _):
            guard let id = ids[connection] else { return }
            traffic.streamEnded(id)
            // The compared set's pass comes second: it forgets the connection.
            if !counting || other == nil {
                ids[connection] = nil
                gapped.remove(id)
                outcomes[id] = nil
            }
        }
    }

    private static func layer(_ outcome: RecordedTraffic.Outcome) -> String {
        switch outcome {
        case .judged(let kind): return "judged at L7 (\(kind))"
        case .layer4: return "allowed at L3/L4, no L7 rules"
        case .deniedAtLayer4: return "denied at L3/L4"
        case .refused(let reason): return "refused (\(reason))"
        }
    }

    static func address(_ endpoint: TransportEndpoint) -> SocketAddress {
        SocketAddress(host: endpoint.address.description, port: endpoint.port)!
    }
}

/// Passes records on and counts the L7 requests among them by protocol, verdict and the
/// policy that denied them. (Unchecked Sendable: used by one thread at a time, the judging
/// one or the record writer's, whose queue its owner waits for before reading the counts.)
final class CountingReporter: L7FlowReporter, @unchecked Sendable {
    private let next: L7FlowReporter?
    private let ledger: VerdictLedger?
    private(set) var requests: [String: [String: Int]] = [:]
    private(set) var deniedBy: [String: Int] = [:]

    /// Records go on to `next`; each request, once read, to `ledger` too (`--compare`).
    init(next: L7FlowReporter?, ledger: VerdictLedger?) {
        self.next = next
        self.ledger = ledger
    }

    func report(_ record: JSONObject) {
        next?.report(record)
        let tally: RequestRecord.Tally
        if let ledger {
            guard let request = RequestRecord(record) else { return }
            ledger.add(request)
            tally = RequestRecord.Tally(protocolName: request.protocolName, verdict: request.verdict,
                                        deniedBy: request.deniedBy)
        } else {
            guard let counted = RequestRecord.tally(record) else { return }
            tally = counted
        }
        requests[tally.protocolName, default: [:]][tally.verdict, default: 0] += 1
        guard tally.verdict == "DROPPED" else { return }
        // Denied because no rule of the L7 kind allows it (default deny at L7) names no policy.
        for policy in tally.deniedBy.isEmpty ? ["no rule allows it"] : tally.deniedBy {
            deniedBy[policy, default: 0] += 1
        }
    }
}
