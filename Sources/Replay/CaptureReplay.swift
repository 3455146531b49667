/// What a replay hands its consumer: TCP stream events and UDP datagrams, in capture order.
public enum ReplayEvent {
    case tcp(TCPEvent, time: UInt64)
    /// A UDP datagram as captured; `payload` is valid only during the handler call.
    /// `missingPayloadBytes` > 0 means the snaplen cut it: the payload is incomplete.
    case datagram(source: TransportEndpoint, destination: TransportEndpoint,
                  payload: UnsafeRawBufferPointer, missingPayloadBytes: Int, time: UInt64)
}

/// Runs capture files through the reader, the decoder and the TCP reassembler.
///
/// Files are read one after another as one capture (connections carry across them, by
/// capture time); each file gets a decoder for its link type. Touches only the files
/// given. The handler must not call back into the replay.
public final class CaptureReplay {
    public let fragmentLimits: FragmentLimits
    private let handler: (ReplayEvent) -> Void
    private let reassembler: TCPReassembler
    private var decoderStatistics = CaptureStatistics()
    private var lastTime: UInt64 = 0

    public init(fragmentLimits: FragmentLimits = FragmentLimits(),
                tcpLimits: TCPReassemblyLimits = TCPReassemblyLimits(),
                handler: @escaping (ReplayEvent) -> Void) {
        self.fragmentLimits = fragmentLimits
        self.handler = handler
        reassembler = TCPReassembler(limits: tcpLimits) { event, time in handler(.tcp(event, time: time)) }
    }

    /// Everything counted so far, decoding and reassembly together.
    public var statistics: CaptureStatistics { decoderStatistics + reassembler.statistics }

    /// Reads one file to its end. Throws `CaptureError` (naming the file); what was read
    /// before the error has been delivered.
    /// `progress` hears, every few thousand packets and at the end, how many bytes of the
    /// file have been read and its size.
    public func read(path: String, progress: ((_ read: Int64, _ size: Int64) -> Void)? = nil) throws(CaptureError) {
        let reader = try CaptureReader(path: path)
        let decoder = PacketDecoder(linkType: reader.linkType, fragmentLimits: fragmentLimits)
        defer {
            decoderStatistics = decoderStatistics + decoder.statistics
            progress?(reader.bytesRead, reader.fileSize)
        }
        var sinceProgress = 0
        while let packet = try reader.next() {
            sinceProgress += 1
            if sinceProgress == 4096, let progress {
                sinceProgress = 0
                progress(reader.bytesRead, reader.fileSize)
            }
            lastTime = max(lastTime, packet.timestamp)
            switch decoder.decode(packet) {
            case .tcp(let segment):
                reassembler.process(segment)
            case .udp(let datagram):
                handler(.datagram(source: datagram.source, destination: datagram.destination,
                                  payload: datagram.payload, missingPayloadBytes: datagram.missingPayloadBytes,
                                  time: datagram.timestamp))
            case .skipped:
                break
            }
        }
    }

    /// Ends the capture: every open connection closes (`.endOfCapture`), gaps reported first.
    public func finish() {
        reassembler.finish(time: lastTime)
    }
}
