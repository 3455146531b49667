import Foundation
import Testing
import Replay

/// File formats and errors: pcap, pcapng, gzip, and what is not a capture.
@Suite struct CaptureReaderTests {
    func records() -> [Record] {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "ping"))
        return records
    }

    @Test func pcapngIsRead() throws {
        let path = CaptureFile.pcapng("basic.pcapng", linkType: 1, records())
        let reader = try CaptureReader(path: path)
        #expect(reader.linkType == 1)
        var timestamps: [UInt64] = []
        while let packet = try reader.next() { timestamps.append(packet.timestamp) }
        #expect(timestamps == records().map(\.time))
        let (recorder, _) = try ReplayRecorder.replay([path])
        #expect(recorder.request == "ping")
    }

    @Test func nanosecondTimestampsAndLengths() throws {
        let path = CaptureFile.pcap("lengths.pcap", linkType: 1, snaplen: 56, records())
        let reader = try CaptureReader(path: path)
        var packets: [(UInt64, Int, Int)] = []
        while let packet = try reader.next() { packets.append((packet.timestamp, packet.capturedLength, packet.originalLength)) }
        #expect(packets.map(\.0) == records().map(\.time))
        #expect(packets.last!.1 == 56 && packets.last!.2 == 58)  // 14 + 20 + 20 + "ping"
    }

    @Test func gzipCompressedCaptureIsRead() throws {
        let path = CaptureFile.pcap("compressed.pcap", linkType: 1, records())
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        gzip.arguments = ["gzip", "-f", path]
        try gzip.run()
        gzip.waitUntilExit()
        let reader = try CaptureReader(path: path + ".gz")
        #expect(reader.isCompressed)
        let (recorder, statistics) = try ReplayRecorder.replay([path + ".gz"])
        #expect(recorder.request == "ping")
        #expect(statistics.packets == 4)
    }

    @Test func notACaptureIsNamed() throws {
        let path = CaptureFile.path("notes.txt")
        FileManager.default.createFile(atPath: path, contents: Data("just some text, not packets\n".utf8))
        let error = #expect(throws: CaptureError.self) { try CaptureReader(path: path) }
        guard case .notACapture(let named, _)? = error else { Issue.record("got \(String(describing: error))"); return }
        #expect(named == path)
        #expect("\(error!)".contains(path))
    }

    @Test func missingFileAndTruncatedRecordAreNamed() throws {
        let missing = CaptureFile.path("missing.pcap")
        #expect(throws: CaptureError.cannotOpen(path: missing, reason: "No such file or directory")) { try CaptureReader(path: missing) }

        let path = CaptureFile.pcap("cut.pcap", linkType: 1, records())
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: path))
        let reader = try CaptureReader(path: path)
        let error = #expect(throws: CaptureError.self) { while try reader.next() != nil {} }
        guard case .truncated(let named, _)? = error else { Issue.record("got \(String(describing: error))"); return }
        #expect(named == path)
    }

    @Test func unsupportedLinkTypeIsNamed() throws {
        let path = CaptureFile.pcap("wifi.pcap", linkType: 105, records())  // IEEE 802.11
        #expect(throws: CaptureError.unsupportedLinkType(path: path, linkType: 105, name: "IEEE802_11")) { try CaptureReader(path: path) }
    }
}
