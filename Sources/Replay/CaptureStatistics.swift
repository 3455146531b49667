/// Counters for a replay's summary. The decoder fills the packet and fragment counters,
/// the TCP reassembler the connection counters; `+` combines them (and several files).
public struct CaptureStatistics: Sendable, Equatable {
    /// Packet records read.
    public var packets = 0
    /// Captured bytes read (sum of captured lengths).
    public var capturedBytes = 0
    /// Packets decoded to a TCP segment or UDP datagram (a reassembled datagram counts once).
    public var decodedPackets = 0
    /// Packets that were not IPv4 or IPv6 (ARP, LLDP, ...).
    public var nonIPPackets = 0
    /// IP packets carrying neither TCP nor UDP (ICMP, ...).
    public var otherTransportPackets = 0
    /// Packets whose headers were malformed or cut by the snaplen before the transport payload.
    public var malformedPackets = 0
    /// TCP or UDP packets whose payload the snaplen cut.
    public var truncatedPackets = 0
    /// IP fragments seen.
    public var fragments = 0
    /// Datagrams reassembled from fragments.
    public var fragmentedDatagramsReassembled = 0
    /// Datagrams dropped during reassembly (overlap, timeout, eviction, size, truncation).
    public var fragmentedDatagramsDropped = 0
    /// TCP segments and UDP datagrams decoded.
    public var tcpSegments = 0
    public var udpDatagrams = 0
    /// TCP connections opened, and how many of them were first seen mid-stream.
    public var tcpConnections = 0
    public var midstreamConnections = 0
    /// Connections evicted because the table was full.
    public var evictedConnections = 0
    /// Gaps reported (each ends one direction's delivery).
    public var gaps = 0
    /// Retransmissions or overlaps whose bytes differed from the first copy.
    public var conflictingOverlaps = 0
    /// Bytes delivered in order, both directions of all connections.
    public var deliveredBytes = 0

    public init() {}

    public static func + (left: CaptureStatistics, right: CaptureStatistics) -> CaptureStatistics {
        var sum = left
        sum.packets += right.packets
        sum.capturedBytes += right.capturedBytes
        sum.decodedPackets += right.decodedPackets
        sum.nonIPPackets += right.nonIPPackets
        sum.otherTransportPackets += right.otherTransportPackets
        sum.malformedPackets += right.malformedPackets
        sum.truncatedPackets += right.truncatedPackets
        sum.fragments += right.fragments
        sum.fragmentedDatagramsReassembled += right.fragmentedDatagramsReassembled
        sum.fragmentedDatagramsDropped += right.fragmentedDatagramsDropped
        sum.tcpSegments += right.tcpSegments
        sum.udpDatagrams += right.udpDatagrams
        sum.tcpConnections += right.tcpConnections
        sum.midstreamConnections += right.midstreamConnections
        sum.evictedConnections += right.evictedConnections
        sum.gaps += right.gaps
        sum.conflictingOverlaps += right.conflictingOverlaps
        sum.deliveredBytes += right.deliveredBytes
        return sum
    }
}
