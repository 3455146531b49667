import Foundation
import Replay

/// Builds packets and writes pcap / pcapng files for the tests, in a temporary directory.
/// Test-side only: the code under test reads these files through libpcap like any capture.
enum Frames {
    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
    static func be32(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)] }
    static func le32(_ value: UInt32) -> [UInt8] { be32(value).reversed() }
    static func le16(_ value: UInt16) -> [UInt8] { be16(value).reversed() }

    static func address(_ text: String) -> [UInt8] {
        let parsed = IPAddress(text)!
        if let v4 = parsed.ipv4Value { return be32(v4) }
        return be32(UInt32(parsed.high >> 32)) + be32(UInt32(truncatingIfNeeded: parsed.high))
            + be32(UInt32(parsed.low >> 32)) + be32(UInt32(truncatingIfNeeded: parsed.low))
    }

    static func tcp(_ sourcePort: UInt16, _ destinationPort: UInt16, seq: UInt32, ack: UInt32 = 0,
                    flags: TCPFlags, _ payload: [UInt8] = []) -> [UInt8] {
        be16(sourcePort) + be16(destinationPort) + be32(seq) + be32(ack)
            + [0x50, flags.rawValue] + be16(65535) + [0, 0, 0, 0] + payload
    }

    static func udp(_ sourcePort: UInt16, _ destinationPort: UInt16, _ payload: [UInt8]) -> [UInt8] {
        be16(sourcePort) + be16(destinationPort) + be16(UInt16(8 + payload.count)) + [0, 0] + payload
    }

    /// An IPv4 packet; `fragmentOffset` in bytes (a multiple of 8).
    static func ipv4(_ source: String, _ destination: String, protocolNumber: UInt8 = 6, _ payload: [UInt8],
                     identification: UInt16 = 1, moreFragments: Bool = false, fragmentOffset: Int = 0) -> [UInt8] {
        let flags = UInt16(moreFragments ? 0x2000 : 0) | UInt16(fragmentOffset / 8)
        return [0x45, 0] + be16(UInt16(20 + payload.count)) + be16(identification) + be16(flags)
            + [64, protocolNumber, 0, 0] + address(source) + address(destination) + payload
    }

    static func ipv6(_ source: String, _ destination: String, nextHeader: UInt8 = 6, _ payload: [UInt8]) -> [UInt8] {
        [0x60, 0, 0, 0] + be16(UInt16(payload.count)) + [nextHeader, 64] + address(source) + address(destination) + payload
    }

    /// An IPv6 fragment header (RFC 8200 §4.5) followed by the fragment's data.
    static func ipv6Fragment(nextHeader: UInt8, offset: Int, more: Bool, identification: UInt32, _ data: [UInt8]) -> [UInt8] {
        [nextHeader, 0] + be16(UInt16(offset) | (more ? 1 : 0)) + be32(identification) + data
    }

    static func ethernet(_ ip: [UInt8], vlanTags: [UInt16] = [], padTo minimum: Int = 0) -> [UInt8] {
        var frame: [UInt8] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]
        for (index, tag) in vlanTags.enumerated() {
            frame += be16(index == 0 && vlanTags.count > 1 ? 0x88A8 : 0x8100) + be16(tag)
        }
        frame += be16(ip.first.map { $0 >> 4 == 6 } == true ? 0x86DD : 0x0800) + ip
        while frame.count < minimum { frame.append(0) }
        return frame
    }
}

/// One record of a capture file.
struct Record {
    var time: UInt64
    var bytes: [UInt8]
    var originalLength: Int?
}

enum CaptureFile {
    static let directory: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("replay-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        // Removed when the test process exits: the tests leave nothing behind.
        atexit {
            try? FileManager.default.removeItem(
                at: FileManager.default.temporaryDirectory.appendingPathComponent("replay-tests-\(getpid())"))
        }
        return url
    }()

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// A classic pcap file (little-endian, nanosecond magic), records cut to `snaplen`.
    static func pcap(_ name: String, linkType: UInt32, snaplen: Int = 65535, _ records: [Record]) -> String {
        var data: [UInt8] = [0x4d, 0x3c, 0xb2, 0xa1] + Frames.le16(2) + Frames.le16(4) + Frames.le32(0) + Frames.le32(0)
            + Frames.le32(UInt32(snaplen)) + Frames.le32(linkType)
        for record in records {
            let kept = Array(record.bytes.prefix(snaplen))
            data += Frames.le32(UInt32(record.time / 1_000_000_000)) + Frames.le32(UInt32(record.time % 1_000_000_000))
            data += Frames.le32(UInt32(kept.count)) + Frames.le32(UInt32(record.originalLength ?? record.bytes.count)) + kept
        }
        let path = path(name)
        FileManager.default.createFile(atPath: path, contents: Data(data))
        return path
    }

    /// A pcapng file: section header, one interface (nanosecond timestamps), enhanced packets.
    static func pcapng(_ name: String, linkType: UInt16, _ records: [Record]) -> String {
        func block(_ type: UInt32, _ body: [UInt8]) -> [UInt8] {
            var padded = body
            while padded.count % 4 != 0 { padded.append(0) }
            let length = UInt32(12 + padded.count)
            return Frames.le32(type) + Frames.le32(length) + padded + Frames.le32(length)
        }
        var data = block(0x0A0D0D0A, Frames.le32(0x1A2B3C4D) + Frames.le16(1) + Frames.le16(0) + [UInt8](repeating: 0xff, count: 8))
        // if_tsresol (option 9) = 9: nanoseconds.
        let options: [UInt8] = Frames.le16(9) + Frames.le16(1) + [9, 0, 0, 0] + Frames.le16(0) + Frames.le16(0)
        data += block(1, Frames.le16(linkType) + Frames.le16(0) + Frames.le32(65535) + options)
        for record in records {
            data += block(6, Frames.le32(0) + Frames.le32(UInt32(record.time >> 32)) + Frames.le32(UInt32(truncatingIfNeeded: record.time))
                + Frames.le32(UInt32(record.bytes.count)) + Frames.le32(UInt32(record.bytes.count)) + record.bytes)
        }
        let path = path(name)
        FileManager.default.createFile(atPath: path, contents: Data(data))
        return path
    }
}

/// Collects what a replay reports, with each direction's bytes joined.
final class ReplayRecorder {
    enum Entry: Equatable {
        case opened(client: String, server: String, midstream: Bool)
        case gap(TCPDirection, Int)
        case conflict(TCPDirection)
        case closed(TCPCloseReason)
        case datagram(String, String, [UInt8])
    }

    var entries: [Entry] = []
    var clientBytes: [UInt64: [UInt8]] = [:]
    var serverBytes: [UInt64: [UInt8]] = [:]

    func record(_ event: ReplayEvent) {
        switch event {
        case .tcp(let event, _): record(event)
        case .datagram(let source, let destination, let payload, _, _):
            entries.append(.datagram("\(source)", "\(destination)", Array(payload)))
        }
    }

    func record(_ event: TCPEvent) {
        switch event {
        case .opened(let connection, let midstream):
            entries.append(.opened(client: "\(connection.client)", server: "\(connection.server)", midstream: midstream))
        case .data(let connection, let direction, let bytes):
            if direction == .clientToServer { clientBytes[connection.id, default: []] += bytes } else { serverBytes[connection.id, default: []] += bytes }
        case .gap(_, let direction, let missing): entries.append(.gap(direction, missing))
        case .conflictingOverlap(_, let direction): entries.append(.conflict(direction))
        case .closed(_, let reason): entries.append(.closed(reason))
        }
    }

    /// The bytes each way of the first connection, as text.
    var request: String { String(decoding: clientBytes[1] ?? [], as: UTF8.self) }
    var response: String { String(decoding: serverBytes[1] ?? [], as: UTF8.self) }

    /// Replays files through the real CaptureReplay and records everything.
    static func replay(_ paths: [String], tcpLimits: TCPReassemblyLimits = TCPReassemblyLimits()) throws -> (ReplayRecorder, CaptureStatistics) {
        let recorder = ReplayRecorder()
        let replay = CaptureReplay(tcpLimits: tcpLimits) { recorder.record($0) }
        for path in paths { try replay.read(path: path) }
        replay.finish()
        return (recorder, replay.statistics)
    }
}

/// A client 10.0.0.1:40000 talking to a server 10.0.0.2:80 over Ethernet.
struct Conversation {
    var client = "10.0.0.1", server = "10.0.0.2"
    var clientPort: UInt16 = 40000, serverPort: UInt16 = 80
    var clientISN: UInt32 = 1000, serverISN: UInt32 = 5000
    var time: UInt64 = 1_700_000_000_000_000_000
    var wrap: ([UInt8]) -> [UInt8] = { Frames.ethernet($0) }

    mutating func next() -> UInt64 { time += 1_000_000; return time }

    /// A client segment; `at` is the offset in the client's stream (0 = first data byte).
    mutating func fromClient(at offset: UInt32, _ payload: String = "", flags: TCPFlags = [.ack, .psh], ack: UInt32 = 0) -> Record {
        let ip = client.contains(":") ? Frames.ipv6(client, server, Frames.tcp(clientPort, serverPort, seq: clientISN &+ 1 &+ offset, ack: serverISN &+ 1 &+ ack, flags: flags, Array(payload.utf8)))
            : Frames.ipv4(client, server, Frames.tcp(clientPort, serverPort, seq: clientISN &+ 1 &+ offset, ack: serverISN &+ 1 &+ ack, flags: flags, Array(payload.utf8)))
        return Record(time: next(), bytes: wrap(ip))
    }

    mutating func fromServer(at offset: UInt32, _ payload: String = "", flags: TCPFlags = [.ack, .psh], ack: UInt32 = 0) -> Record {
        let ip = client.contains(":") ? Frames.ipv6(server, client, Frames.tcp(serverPort, clientPort, seq: serverISN &+ 1 &+ offset, ack: clientISN &+ 1 &+ ack, flags: flags, Array(payload.utf8)))
            : Frames.ipv4(server, client, Frames.tcp(serverPort, clientPort, seq: serverISN &+ 1 &+ offset, ack: clientISN &+ 1 &+ ack, flags: flags, Array(payload.utf8)))
        return Record(time: next(), bytes: wrap(ip))
    }

    mutating func handshake() -> [Record] {
        [
            fromClient(at: UInt32.max, flags: [.syn]),            // seq = ISN
            fromServer(at: UInt32.max, flags: [.syn, .ack]),
            fromClient(at: 0, flags: [.ack]),
        ]
    }
}
