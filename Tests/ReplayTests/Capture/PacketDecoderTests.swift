import Testing
import Replay

/// Link types, VLAN tags, IPv6 and fragment reassembly, through files read by libpcap.
@Suite struct PacketDecoderTests {
    /// One request over a short conversation wrapped by `wrap`, written with `linkType`.
    func replayConversation(_ name: String, linkType: UInt32, client: String = "10.0.0.1", server: String = "10.0.0.2",
                            wrap: @escaping ([UInt8]) -> [UInt8]) throws -> (ReplayRecorder, CaptureStatistics) {
        var conversation = Conversation()
        conversation.client = client
        conversation.server = server
        conversation.wrap = wrap
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 0, "ping"))
        records.append(conversation.fromServer(at: 0, "pong", ack: 4))
        return try ReplayRecorder.replay([CaptureFile.pcap(name, linkType: linkType, records)])
    }

    func expectPingPong(_ result: (ReplayRecorder, CaptureStatistics)) {
        #expect(result.0.request == "ping")
        #expect(result.0.response == "pong")
        #expect(result.1.decodedPackets == 5 && result.1.malformedPackets == 0 && result.1.nonIPPackets == 0)
    }

    @Test func ethernetWithPaddingAndVLANTags() throws {
        expectPingPong(try replayConversation("eth-pad.pcap", linkType: 1) { Frames.ethernet($0, padTo: 60) })
        expectPingPong(try replayConversation("vlan.pcap", linkType: 1) { Frames.ethernet($0, vlanTags: [100]) })
        expectPingPong(try replayConversation("qinq.pcap", linkType: 1) { Frames.ethernet($0, vlanTags: [200, 100]) })
    }

    @Test func linuxCookedCaptures() throws {
        expectPingPong(try replayConversation("sll.pcap", linkType: 113) { ip in
            [0, 0] + Frames.be16(1) + Frames.be16(6) + [2, 0, 0, 0, 0, 1, 0, 0] + Frames.be16(ip[0] >> 4 == 6 ? 0x86DD : 0x0800) + ip
        })
        expectPingPong(try replayConversation("sll2.pcap", linkType: 276) { ip in
            Frames.be16(0x0800) + [0, 0] + Frames.be32(2) + Frames.be16(1) + [0, 6] + [2, 0, 0, 0, 0, 1, 0, 0] + ip
        })
    }

    @Test func rawIPAndLoopback() throws {
        expectPingPong(try replayConversation("raw.pcap", linkType: 101) { $0 })  // LINKTYPE_RAW
        expectPingPong(try replayConversation("ipv4.pcap", linkType: 228) { $0 })
        // DLT_NULL in the capturing host's order: little-endian AF_INET, big-endian AF_INET6 (Darwin's 30).
        expectPingPong(try replayConversation("null.pcap", linkType: 0) { Frames.le32(2) + $0 })
        expectPingPong(try replayConversation("null6.pcap", linkType: 0, client: "fd00::1", server: "fd00::2") { Frames.be32(30) + $0 })
        expectPingPong(try replayConversation("loop.pcap", linkType: 108) { Frames.be32(2) + $0 })
    }

    @Test func ipv6WithExtensionHeaders() throws {
        let result = try replayConversation("ipv6.pcap", linkType: 1, client: "2001:db8::1", server: "2001:db8::2") { ip in
            // Insert a hop-by-hop header (8 bytes, PadN) before TCP.
            var packet = ip
            let nextHeader = packet[6]
            packet[6] = 0
            let length = Int(packet[4]) << 8 | Int(packet[5]) + 8
            packet[4] = UInt8(length >> 8); packet[5] = UInt8(length & 0xff)
            packet.insert(contentsOf: [nextHeader, 0, 1, 4, 0, 0, 0, 0], at: 40)
            return Frames.ethernet(packet)
        }
        expectPingPong(result)
        #expect(result.0.entries.first == .opened(client: "[2001:db8::1]:40000", server: "[2001:db8::2]:80", midstream: false))
    }

    @Test func ipv6FragmentsAreReassembled() throws {
        let payload = Array(repeating: UInt8(ascii: "q"), count: 100)
        let udp = Frames.udp(5353, 53, payload)  // 108 bytes: fragments of 56 and 52
        let first = Frames.ipv6Fragment(nextHeader: 17, offset: 0, more: true, identification: 7, Array(udp[0..<56]))
        let second = Frames.ipv6Fragment(nextHeader: 17, offset: 56, more: false, identification: 7, Array(udp[56...]))
        let records = [
            Record(time: 1_000, bytes: Frames.ethernet(Frames.ipv6("fd00::1", "fd00::2", nextHeader: 44, second))),
            Record(time: 2_000, bytes: Frames.ethernet(Frames.ipv6("fd00::1", "fd00::2", nextHeader: 44, first))),
        ]
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("frag6.pcap", linkType: 1, records)])
        #expect(recorder.entries == [.datagram("[fd00::1]:5353", "[fd00::2]:53", payload)])
        #expect(statistics.fragments == 2 && statistics.fragmentedDatagramsReassembled == 1)
    }

    @Test func ipv4FragmentsOutOfOrderAndOverlapsDropped() throws {
        let payload = Array((0..<60).map { UInt8($0) })
        let udp = Frames.udp(1000, 2000, payload)  // 68 bytes: 24 + 24 + 20
        func fragment(_ range: Range<Int>, more: Bool, id: UInt16) -> Record {
            Record(time: 1_000, bytes: Frames.ethernet(Frames.ipv4("10.0.0.1", "10.0.0.2", protocolNumber: 17, Array(udp[range]),
                                                                  identification: id, moreFragments: more, fragmentOffset: range.lowerBound)))
        }
        let records = [
            fragment(48..<68, more: false, id: 1), fragment(0..<24, more: true, id: 1), fragment(24..<48, more: true, id: 1),
            // Datagram 2: an overlapping fragment with other bytes drops it.
            fragment(0..<24, more: true, id: 2),
            Record(time: 1_000, bytes: Frames.ethernet(Frames.ipv4("10.0.0.1", "10.0.0.2", protocolNumber: 17, Array(repeating: 0xEE, count: 24),
                                                              identification: 2, moreFragments: true, fragmentOffset: 16))),
            fragment(24..<48, more: true, id: 2), fragment(48..<68, more: false, id: 2),
        ]
        let (recorder, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("frag4.pcap", linkType: 1, records)])
        #expect(recorder.entries == [.datagram("10.0.0.1:1000", "10.0.0.2:2000", payload)])
        #expect(statistics.fragmentedDatagramsReassembled == 1 && statistics.fragmentedDatagramsDropped == 1)
    }

    @Test func nonIPFramesAreCounted() throws {
        let arp = [UInt8](repeating: 0xff, count: 6) + [2, 0, 0, 0, 0, 1] + Frames.be16(0x0806) + [UInt8](repeating: 0, count: 28)
        let (_, statistics) = try ReplayRecorder.replay([CaptureFile.pcap("arp.pcap", linkType: 1, [Record(time: 1, bytes: arp)])])
        #expect(statistics.packets == 1 && statistics.nonIPPackets == 1 && statistics.decodedPackets == 0)
    }
}
