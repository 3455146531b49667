import Testing
import Replay

/// TCP reassembly through the real reader, decoder and reassembler, from hand-built captures.
@Suite struct TCPReassemblyTests {
    typealias Entry = ReplayRecorder.Entry

    @Test func handshakeDataBothWaysAndFin() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "GET / HTTP/1.1\r\n\r\n"))
        records.append(conversation.fromServer(at: 0, "HTTP/1.1 200 OK\r\n", ack: 18))
        records.append(conversation.fromServer(at: 17, "\r\n", ack: 18))
        records.append(conversation.fromClient(at: 18, flags: [.fin, .ack], ack: 19))
        records.append(conversation.fromServer(at: 19, flags: [.fin, .ack], ack: 19))
        records.append(conversation.fromClient(at: 19, flags: [.ack], ack: 20))  // the last ACK opens nothing
        let path = CaptureFile.pcap("basic.pcap", linkType: 1, records)
        let (recorder, statistics) = try ReplayRecorder.replay([path])
        #expect(recorder.entries == [.opened(client: "10.0.0.1:40000", server: "10.0.0.2:80", midstream: false), .closed(.fin)])
        #expect(recorder.request == "GET / HTTP/1.1\r\n\r\n")
        #expect(recorder.response == "HTTP/1.1 200 OK\r\n\r\n")
        #expect(statistics.packets == 9 && statistics.tcpSegments == 9 && statistics.tcpConnections == 1)
        #expect(statistics.gaps == 0 && statistics.deliveredBytes == 37)
    }

    @Test func outOfOrderSegmentsAreDeliveredInOrder() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        let third = conversation.fromClient(at: 10, "cccc")
        let second = conversation.fromClient(at: 5, "bbbbb")
        let first = conversation.fromClient(at: 0, "aaaaa")
        records += [third, second, first]
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("ooo.pcap", linkType: 1, records)])
        #expect(recorder.request == "aaaaabbbbbcccc")
        #expect(recorder.entries == [.opened(client: "10.0.0.1:40000", server: "10.0.0.2:80", midstream: false), .closed(.endOfCapture)])
    }

    @Test func identicalRetransmissionIsSilentDifferentOneReportedFirstCopyWins() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "hello"))
        records.append(conversation.fromClient(at: 0, "hello"))
        records.append(conversation.fromClient(at: 0, "HELLO world"))  // overlaps 5, adds 6
        // Out of order, then a conflicting overlap of the held bytes.
        records.append(conversation.fromClient(at: 16, "xyz"))
        records.append(conversation.fromClient(at: 16, "XYZ"))
        records.append(conversation.fromClient(at: 11, "12345"))
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("retx.pcap", linkType: 1, records)])
        #expect(recorder.request == "hello world12345xyz")
        #expect(recorder.entries.filter { $0 == .conflict(.clientToServer) }.count == 2)
        #expect(statistics.conflictingOverlaps == 2)
    }

    @Test func lostSegmentIsAGapAndNoBytesAreInvented() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "first"))
        // "second" (offset 5..<11) never captured.
        records.append(conversation.fromClient(at: 11, "third"))
        records.append(conversation.fromServer(at: 0, "ok", ack: 16))  // the server had it all
        records.append(conversation.fromClient(at: 16, "fourth"))
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("lost.pcap", linkType: 1, records)])
        #expect(recorder.request == "first")
        #expect(recorder.response == "ok")
        #expect(recorder.entries.contains(.gap(.clientToServer, 6)))
        #expect(statistics.gaps == 1)
    }

    @Test func lostSegmentAtCloseIsReported() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "first"))
        records.append(conversation.fromClient(at: 11, "third"))
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("lost-end.pcap", linkType: 1, records)])
        #expect(recorder.request == "first")
        #expect(recorder.entries.suffix(2) == [.gap(.clientToServer, 6), .closed(.endOfCapture)])
    }

    @Test func snaplenTruncationIsAGap() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, String(repeating: "a", count: 100)))
        records.append(conversation.fromClient(at: 100, "more"))
        // 14 Ethernet + 20 IPv4 + 20 TCP + 46 payload bytes kept.
        let path = CaptureFile.pcap("snap.pcap", linkType: 1, snaplen: 100, records)
        let (recorder, statistics) = try ReplayRecorder.replay([path])
        #expect(recorder.request == String(repeating: "a", count: 46))
        #expect(recorder.entries.contains(.gap(.clientToServer, 54)))
        #expect(statistics.truncatedPackets == 1)
    }

    @Test func midstreamStartIsReportedWithTheHigherPortAsClient() throws {
        var conversation = Conversation()
        let records = [
            conversation.fromServer(at: 100, "tail of a response", ack: 50),
            conversation.fromClient(at: 50, "next request", ack: 118),
            conversation.fromServer(at: 118, "next response", ack: 62),
        ]
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("mid.pcap", linkType: 1, records)])
        #expect(recorder.entries.first == .opened(client: "10.0.0.1:40000", server: "10.0.0.2:80", midstream: true))
        #expect(recorder.request == "next request")
        #expect(recorder.response == "tail of a responsenext response")
        #expect(statistics.midstreamConnections == 1 && statistics.gaps == 0)
    }

    @Test func midstreamDirectionStartsWhereThePeerAcknowledged() throws {
        var conversation = Conversation()
        let records = [
            conversation.fromServer(at: 100, "response", ack: 50),
            // The client's bytes at 50..<60 were not captured.
            conversation.fromClient(at: 60, "later", ack: 108),
            conversation.fromServer(at: 108, "more", ack: 65),
        ]
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("mid-gap.pcap", linkType: 1, records)])
        #expect(recorder.request == "")
        #expect(recorder.entries.contains(.gap(.clientToServer, 10)))
    }

    @Test func resetClosesTheConnection() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "hi"))
        records.append(conversation.fromServer(at: 0, flags: [.rst, .ack], ack: 2))
        records.append(conversation.fromServer(at: 0, flags: [.rst]))  // a second RST opens nothing
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("rst.pcap", linkType: 1, records)])
        #expect(recorder.entries == [.opened(client: "10.0.0.1:40000", server: "10.0.0.2:80", midstream: false), .closed(.rst)])
        #expect(recorder.request == "hi")
    }

    @Test func sequenceNumbersWrapAround() throws {
        var conversation = Conversation()
        conversation.clientISN = UInt32.max - 4
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "0123456789"))  // crosses 2^32
        records.append(conversation.fromClient(at: 15, "fghij"))      // out of order past the wrap
        records.append(conversation.fromClient(at: 10, "abcde"))
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("wrap.pcap", linkType: 1, records)])
        #expect(recorder.request == "0123456789abcdefghij")
        #expect(statistics.gaps == 0)
    }

    @Test func outOfOrderCapIsAGap() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "start"))
        for index in 0..<5 {  // hole at 5..<10, then 5 x 100 bytes waiting
            records.append(conversation.fromClient(at: UInt32(10 + index * 100), String(repeating: "x", count: 100)))
        }
        var limits = TCPReassemblyLimits()
        limits.maximumBufferedBytesPerDirection = 250
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("cap.pcap", linkType: 1, records)], tcpLimits: limits)
        #expect(recorder.request == "start")
        #expect(recorder.entries.contains(.gap(.clientToServer, 5)))
        #expect(recorder.entries.filter { if case .gap = $0 { true } else { false } }.count == 1)
    }

    @Test func outOfOrderSegmentCountCapIsAGap() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        for index in 0..<10 { records.append(conversation.fromClient(at: UInt32(1 + index * 2), "y")) }
        var limits = TCPReassemblyLimits()
        limits.maximumBufferedSegmentsPerDirection = 8
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("segcap.pcap", linkType: 1, records)], tcpLimits: limits)
        #expect(recorder.request == "")
        #expect(recorder.entries.contains(.gap(.clientToServer, 1)))
    }

    @Test func tooManyConnectionsEvictTheLeastRecentlyActive() throws {
        var records: [Record] = []
        var time: UInt64 = 1_700_000_000_000_000_000
        for port in UInt16(40000)..<40003 {
            var conversation = Conversation()
            conversation.clientPort = port
            conversation.time = time
            records += conversation.handshake()
            time = conversation.time
        }
        var limits = TCPReassemblyLimits()
        limits.maximumConnections = 2
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("evict.pcap", linkType: 1, records)], tcpLimits: limits)
        #expect(recorder.entries.prefix(3) == [
            .opened(client: "10.0.0.1:40000", server: "10.0.0.2:80", midstream: false),
            .opened(client: "10.0.0.1:40001", server: "10.0.0.2:80", midstream: false),
            .closed(.evicted),
        ])
        #expect(statistics.evictedConnections == 1 && statistics.tcpConnections == 3)
    }

    @Test func idleConnectionsExpireByCaptureTime() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "x"))
        var later = Conversation()
        later.clientPort = 40001
        later.time = conversation.time + 301_000_000_000
        records += later.handshake()
        let (recorder, _) = try ReplayRecorder.replay([CaptureFile.pcap("idle.pcap", linkType: 1, records)])
        #expect(recorder.entries.prefix(3) == [
            .opened(client: "10.0.0.1:40000", server: "10.0.0.2:80", midstream: false),
            .closed(.idle),
            .opened(client: "10.0.0.1:40001", server: "10.0.0.2:80", midstream: false),
        ])
    }
}
