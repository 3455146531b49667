/// Decodes captured link-layer frames into TCP segments and UDP datagrams.
///
/// Understands Ethernet (with stacked 802.1Q / 802.1ad VLAN tags), Linux cooked capture
/// v1 and v2, raw IP, and BSD loopback (DLT_NULL in either byte order, DLT_LOOP); IPv4
/// (options skipped, header checksum not checked) and IPv6 (hop-by-hop, routing,
/// destination options, fragment and AH extension headers), with IP fragments of both
/// families reassembled within `FragmentLimits`.
///
/// Pure over bytes: no I/O, no policy. Owns a reassembly buffer; the payload of a decoded
/// segment points into the packet given or into that buffer, so it is valid until the
/// next `decode` call. Not thread-safe.
public final class PacketDecoder {
    /// The DLT_ values the decoder understands (pcap/dlt.h).
    public enum LinkType {
        public static let null: Int32 = 0
        public static let ethernet: Int32 = 1
        public static let raw: Int32 = 12
        /// DLT_RAW as OpenBSD numbers it (libpcap maps LINKTYPE_RAW to 12 or 14).
        public static let rawOpenBSD: Int32 = 14
        public static let loop: Int32 = 108
        public static let linuxCooked: Int32 = 113
        public static let ipv4: Int32 = 228
        public static let ipv6: Int32 = 229
        public static let linuxCookedV2: Int32 = 276
    }

    /// What one packet decoded to.
    public enum Outcome {
        case tcp(TCPSegment)
        case udp(UDPDatagram)
        /// Nothing to hand on: not IP, not TCP/UDP, malformed, or a fragment held for
        /// reassembly (or dropped by it). The statistics say which.
        case skipped
    }

    public let linkType: Int32
    /// Counters for what was decoded and skipped (packet and fragment fields only).
    public private(set) var statistics = CaptureStatistics()
    private var fragments: FragmentReassembler

    /// A decoder for one link type (one of `CaptureReader.supportedLinkTypes`).
    public init(linkType: Int32, fragmentLimits: FragmentLimits = FragmentLimits()) {
        self.linkType = linkType
        fragments = FragmentReassembler(limits: fragmentLimits)
    }

    deinit { fragments.deallocate() }

    /// IP datagrams currently held waiting for their fragments.
    public var fragmentedDatagramsInFlight: Int { fragments.datagramsInFlight }

    private static let etherTypeIPv4: UInt16 = 0x0800
    private static let etherTypeIPv6: UInt16 = 0x86DD
    private static let vlanEtherTypes: Set<UInt16> = [0x8100, 0x88A8, 0x9100]

    /// Decodes one captured packet.
    public func decode(_ packet: CapturedPacket) -> Outcome {
        statistics.packets += 1
        statistics.capturedBytes += packet.capturedLength
        // Bytes the snaplen removed from the end of the frame.
        let cutBytes = max(0, packet.originalLength - packet.capturedLength)
        let bytes = packet.bytes
        let outcome: Outcome
        switch linkType {
        case LinkType.ethernet:
            guard bytes.count >= 14 else { return malformed() }
            outcome = decodeEtherType(bytes.uint16(at: 12), bytes, from: 14, cutBytes: cutBytes, time: packet.timestamp)
        case LinkType.linuxCooked:
            // struct sll_header: packet type, ARPHRD type, address length, 8 address bytes, protocol.
            guard bytes.count >= 16 else { return malformed() }
            outcome = decodeEtherType(bytes.uint16(at: 14), bytes, from: 16, cutBytes: cutBytes, time: packet.timestamp)
        case LinkType.linuxCookedV2:
            // struct sll2_header: protocol, reserved, interface index, ARPHRD type, packet type,
            // address length, 8 address bytes.
            guard bytes.count >= 20 else { return malformed() }
            outcome = decodeEtherType(bytes.uint16(at: 0), bytes, from: 20, cutBytes: cutBytes, time: packet.timestamp)
        case LinkType.raw, LinkType.rawOpenBSD, LinkType.ipv4, LinkType.ipv6:
            outcome = decodeIP(bytes, from: 0, cutBytes: cutBytes, time: packet.timestamp)
        case LinkType.null, LinkType.loop:
            // A 4-byte address family: host byte order of the capturing machine for DLT_NULL
            // (so either), network byte order for DLT_LOOP. AF_INET is 2 everywhere; AF_INET6
            // is 10 (Linux), 24 (NetBSD, OpenBSD), 28 (FreeBSD), 30 (Darwin).
            guard bytes.count >= 4 else { return malformed() }
            var family = bytes.uint32(at: 0)
            if linkType == LinkType.null && family > 0xFFFF { family = family.byteSwapped }
            switch family {
            case 2, 10, 24, 28, 30: outcome = decodeIP(bytes, from: 4, cutBytes: cutBytes, time: packet.timestamp)
            default: statistics.nonIPPackets += 1; return .skipped
            }
        default:
            statistics.nonIPPackets += 1
            return .skipped
        }
        switch outcome {
        case .tcp: statistics.decodedPackets += 1; statistics.tcpSegments += 1
        case .udp: statistics.decodedPackets += 1; statistics.udpDatagrams += 1
        case .skipped: break
        }
        return outcome
    }

    private func malformed() -> Outcome {
        statistics.malformedPackets += 1
        return .skipped
    }

    private func decodeEtherType(_ etherType: UInt16, _ bytes: UnsafeRawBufferPointer, from start: Int,
                                 cutBytes: Int, time: UInt64) -> Outcome {
        var etherType = etherType
        var offset = start
        // 802.1Q / 802.1ad tags, possibly stacked: 2 bytes of tag control, then the next type.
        while Self.vlanEtherTypes.contains(etherType) {
            guard bytes.count >= offset + 4 else { return malformed() }
            etherType = bytes.uint16(at: offset + 2)
            offset += 4
        }
        guard etherType == Self.etherTypeIPv4 || etherType == Self.etherTypeIPv6 else {
            statistics.nonIPPackets += 1
            return .skipped
        }
        return decodeIP(bytes, from: offset, cutBytes: cutBytes, time: time)
    }

    private func decodeIP(_ bytes: UnsafeRawBufferPointer, from offset: Int, cutBytes: Int, time: UInt64) -> Outcome {
        guard bytes.count > offset else { return malformed() }
        switch bytes[offset] >> 4 {
        case 4: return decodeIPv4(bytes.slice(offset, bytes.count), cutBytes: cutBytes, time: time)
        case 6: return decodeIPv6(bytes.slice(offset, bytes.count), cutBytes: cutBytes, time: time)
        default:
            statistics.nonIPPackets += 1
            return .skipped
        }
    }

    /// RFC 791 §3.1. `packet` starts at the IPv4 header and runs to the end of the capture
    /// (which may hold link-layer padding, or be cut short by `cutBytes`).
    private func decodeIPv4(_ packet: UnsafeRawBufferPointer, cutBytes: Int, time: UInt64) -> Outcome {
        guard packet.count >= 20 else { return malformed() }
        let headerLength = Int(packet[0] & 0x0F) * 4
        let totalLength = Int(packet.uint16(at: 2))
        guard headerLength >= 20, totalLength >= headerLength, packet.count >= headerLength else { return malformed() }
        // Ethernet pads short frames: the total length says where the datagram ends. When
        // the capture is cut, the bytes held are what is left of the total.
        let heldEnd = min(packet.count, totalLength)
        let missing = totalLength - heldEnd
        if missing > 0 && cutBytes == 0 { return malformed() }  // shorter than it claims, not by snaplen
        let flagsAndOffset = packet.uint16(at: 6)
        let moreFragments = flagsAndOffset & 0x2000 != 0
        let fragmentOffset = Int(flagsAndOffset & 0x1FFF) * 8
        let protocolNumber = packet[9]
        let source = IPAddress(ipv4: packet.uint32(at: 12))
        let destination = IPAddress(ipv4: packet.uint32(at: 16))
        let payload = packet.slice(headerLength, heldEnd)
        if moreFragments || fragmentOffset > 0 {
            statistics.fragments += 1
            let key = FragmentReassembler.Key(source: source, destination: destination,
                                              identification: UInt32(packet.uint16(at: 4)), protocolNumber: protocolNumber)
            return reassemble(key: key, offset: fragmentOffset, isLast: !moreFragments, payload: payload,
                              nextHeader: protocolNumber, truncated: missing > 0, time: time,
                              source: source, destination: destination, isIPv6: false)
        }
        return decodeTransport(protocolNumber, payload, missing: missing, source: source, destination: destination, time: time)
    }

    /// RFC 8200 §3 and §4. Extension headers are walked up to the transport header.
    private func decodeIPv6(_ packet: UnsafeRawBufferPointer, cutBytes: Int, time: UInt64) -> Outcome {
        guard packet.count >= 40 else { return malformed() }
        let payloadLength = Int(packet.uint16(at: 4))
        guard payloadLength > 0 else { return malformed() }  // a jumbogram (RFC 2675): not supported
        let datagramEnd = 40 + payloadLength
        let heldEnd = min(packet.count, datagramEnd)
        let missing = datagramEnd - heldEnd
        if missing > 0 && cutBytes == 0 { return malformed() }
        let source = IPAddress(ipv6High: packet.uint64(at: 8), low: packet.uint64(at: 16))
        let destination = IPAddress(ipv6High: packet.uint64(at: 24), low: packet.uint64(at: 32))
        return walkIPv6Headers(packet[6], packet.slice(40, heldEnd), missing: missing,
                               source: source, destination: destination, time: time, reassembled: false)
    }

    private func walkIPv6Headers(_ firstHeader: UInt8, _ payload: UnsafeRawBufferPointer, missing: Int,
                                 source: IPAddress, destination: IPAddress, time: UInt64, reassembled: Bool) -> Outcome {
        var nextHeader = firstHeader
        var offset = 0
        while true {
            switch nextHeader {
            case 0, 43, 60:  // hop-by-hop options, routing, destination options: (length + 1) * 8 bytes
                guard payload.count >= offset + 2 else { return malformed() }
                let length = (Int(payload[offset + 1]) + 1) * 8
                guard payload.count >= offset + length else { return malformed() }
                nextHeader = payload[offset]
                offset += length
            case 51:  // authentication header: (length + 2) * 4 bytes
                guard payload.count >= offset + 2 else { return malformed() }
                let length = (Int(payload[offset + 1]) + 2) * 4
                guard payload.count >= offset + length else { return malformed() }
                nextHeader = payload[offset]
                offset += length
            case 44:  // fragment: next header, reserved, offset (13 bits) + M, identification
                guard !reassembled, payload.count >= offset + 8 else { return malformed() }
                statistics.fragments += 1
                let offsetAndFlags = payload.uint16(at: offset + 2)
                let key = FragmentReassembler.Key(source: source, destination: destination,
                                                  identification: payload.uint32(at: offset + 4), protocolNumber: 0)
                return reassemble(key: key, offset: Int(offsetAndFlags & 0xFFF8), isLast: offsetAndFlags & 1 == 0,
                                  payload: payload.slice(offset + 8, payload.count), nextHeader: payload[offset],
                                  truncated: missing > 0, time: time, source: source, destination: destination, isIPv6: true)
            default:
                return decodeTransport(nextHeader, payload.slice(offset, payload.count), missing: missing,
                                       source: source, destination: destination, time: time)
            }
        }
    }

    private func reassemble(key: FragmentReassembler.Key, offset: Int, isLast: Bool, payload: UnsafeRawBufferPointer,
                            nextHeader: UInt8, truncated: Bool, time: UInt64,
                            source: IPAddress, destination: IPAddress, isIPv6: Bool) -> Outcome {
        let droppedBefore = fragments.droppedDatagrams
        let result = fragments.add(key: key, offset: offset, isLast: isLast, payload: payload,
                                   nextHeader: nextHeader, truncated: truncated, time: time)
        statistics.fragmentedDatagramsDropped += fragments.droppedDatagrams - droppedBefore
        switch result {
        case .held, .dropped:
            return .skipped
        case .complete(let length, let protocolNumber):
            statistics.fragmentedDatagramsReassembled += 1
            let datagram = UnsafeRawBufferPointer(rebasing: fragments.buffer[0..<length])
            if isIPv6 {
                return walkIPv6Headers(protocolNumber, datagram, missing: 0, source: source,
                                       destination: destination, time: time, reassembled: true)
            }
            return decodeTransport(protocolNumber, datagram, missing: 0, source: source, destination: destination, time: time)
        }
    }

    /// `payload` starts at the transport header; `missing` bytes of it were cut by the snaplen.
    private func decodeTransport(_ protocolNumber: UInt8, _ payload: UnsafeRawBufferPointer, missing: Int,
                                 source: IPAddress, destination: IPAddress, time: UInt64) -> Outcome {
        switch protocolNumber {
        case 6:  // RFC 9293 §3.1
            guard payload.count >= 20 else { return malformed() }
            let dataOffset = Int(payload[12] >> 4) * 4
            guard dataOffset >= 20, payload.count >= dataOffset else { return malformed() }
            if missing > 0 { statistics.truncatedPackets += 1 }
            return .tcp(TCPSegment(
                source: TransportEndpoint(address: source, port: payload.uint16(at: 0)),
                destination: TransportEndpoint(address: destination, port: payload.uint16(at: 2)),
                sequenceNumber: payload.uint32(at: 4), acknowledgementNumber: payload.uint32(at: 8),
                flags: TCPFlags(rawValue: payload[13] & 0x3F), payload: payload.slice(dataOffset, payload.count),
                missingPayloadBytes: missing, timestamp: time))
        case 17:  // RFC 768
            guard payload.count >= 8 else { return malformed() }
            if missing > 0 { statistics.truncatedPackets += 1 }
            let udpLength = Int(payload.uint16(at: 4))
            let end = udpLength >= 8 ? min(payload.count, udpLength) : payload.count
            return .udp(UDPDatagram(
                source: TransportEndpoint(address: source, port: payload.uint16(at: 0)),
                destination: TransportEndpoint(address: destination, port: payload.uint16(at: 2)),
                payload: payload.slice(8, end), missingPayloadBytes: missing, timestamp: time))
        default:
            statistics.otherTransportPackets += 1
            return .skipped
        }
    }
}
