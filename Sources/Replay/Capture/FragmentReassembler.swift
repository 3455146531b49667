/// Limits on IP fragment reassembly, owned by the caller.
public struct FragmentLimits: Sendable {
    /// Datagrams being reassembled at once; past it the oldest is dropped.
    public var maximumDatagramsInFlight: Int = 4096
    /// A datagram whose fragments do not all arrive within this much capture time is
    /// dropped (RFC 791's reassembly timer; Linux's ipfrag_time is 30 s).
    public var timeoutNanoseconds: UInt64 = 30_000_000_000
    /// The largest reassembled payload accepted (an IPv4 total length is 16 bits).
    public var maximumDatagramBytes: Int = 65535
    /// Fragment bytes held across all datagrams; past it the oldest datagrams are dropped.
    public var maximumBufferedBytes: Int = 32 << 20

    public init() {}
}

/// Reassembles fragmented IPv4 and IPv6 datagrams from captured fragments.
///
/// Pure bookkeeping over bytes: no I/O. Bounded by `FragmentLimits`. Overlapping
/// fragments are handled conservatively: an exact duplicate (same offset, same bytes) is
/// ignored; any other overlap drops the whole datagram (RFC 5722 for IPv6, and the
/// teardrop lesson for IPv4), and later fragments of it are discarded until it times out.
struct FragmentReassembler {
    struct Key: Hashable {
        var source: IPAddress
        var destination: IPAddress
        var identification: UInt32
        /// The IPv4 protocol field; for IPv6 0 (the protocol comes from the first fragment).
        var protocolNumber: UInt8
    }

    private struct Fragment {
        var offset: Int
        var bytes: [UInt8]
    }

    private struct Datagram {
        var fragments: [Fragment] = []
        var totalLength: Int?
        var receivedBytes = 0
        var firstSeen: UInt64
        /// For IPv6: the next header after the fragment header of the offset-0 fragment.
        var nextHeader: UInt8?
        var isPoisoned = false
    }

    /// What adding a fragment did.
    enum Outcome {
        /// The fragment is held; the datagram is not complete yet.
        case held
        /// The datagram is complete: its payload is in `buffer[0..<length]`; for IPv6 the
        /// payload starts with `nextHeader`'s header.
        case complete(length: Int, nextHeader: UInt8)
        /// The fragment (and its datagram) was dropped.
        case dropped
    }

    let limits: FragmentLimits
    private var datagrams: [Key: Datagram] = [:]
    private var lastSweep: UInt64 = 0
    /// Datagrams dropped (overlap, too large, timed out, evicted, truncated fragment).
    private(set) var droppedDatagrams = 0
    private(set) var reassembledDatagrams = 0
    /// Fragment bytes held now, across all datagrams.
    private(set) var bufferedBytes = 0
    /// Where complete datagrams are assembled; reused, so a payload is valid until the next add.
    let buffer: UnsafeMutableRawBufferPointer

    init(limits: FragmentLimits) {
        self.limits = limits
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(limits.maximumDatagramBytes, 1), alignment: 8)
    }

    func deallocate() { buffer.deallocate() }

    var datagramsInFlight: Int { datagrams.count }

    /// Drops datagrams older than the timeout; called with each fragment's time, sweeps at
    /// most once per second of capture time.
    private mutating func dropOldest() {
        guard let oldest = datagrams.min(by: { $0.value.firstSeen < $1.value.firstSeen }) else { return }
        datagrams[oldest.key] = nil
        bufferedBytes -= oldest.value.receivedBytes
        if !oldest.value.isPoisoned { droppedDatagrams += 1 }
    }

    mutating func expire(now: UInt64) {
        guard now >= lastSweep &+ 1_000_000_000 || now < lastSweep else { return }
        lastSweep = now
        let timeout = limits.timeoutNanoseconds
        for (key, datagram) in datagrams where now >= datagram.firstSeen && now - datagram.firstSeen > timeout {
            datagrams[key] = nil
            bufferedBytes -= datagram.receivedBytes
            if !datagram.isPoisoned { droppedDatagrams += 1 }  // a poisoned one was counted then
        }
    }

    /// Adds one fragment: `payload` is the fragment's data (after the IPv4 header or the
    /// IPv6 fragment header), at byte `offset` of the datagram's payload; `isLast` is the
    /// More Fragments bit cleared. `truncated` fragments (snaplen) poison the datagram.
    mutating func add(key: Key, offset: Int, isLast: Bool, payload: UnsafeRawBufferPointer,
                      nextHeader: UInt8?, truncated: Bool, time: UInt64) -> Outcome {
        expire(now: time)
        var datagram: Datagram
        if let existing = datagrams.removeValue(forKey: key) {
            datagram = existing
        } else {
            if datagrams.count >= limits.maximumDatagramsInFlight { dropOldest() }
            datagram = Datagram(firstSeen: time)
        }
        while bufferedBytes + payload.count > limits.maximumBufferedBytes && !datagrams.isEmpty { dropOldest() }
        if datagram.isPoisoned {
            datagrams[key] = datagram
            return .dropped
        }
        let end = offset + payload.count
        var isBad = truncated || end > limits.maximumDatagramBytes || (!isLast && payload.count % 8 != 0)
        if isLast {
            if let total = datagram.totalLength, total != end { isBad = true }
        } else if let total = datagram.totalLength, end > total {
            isBad = true
        }
        var isDuplicate = false
        if !isBad {
            for existing in datagram.fragments where offset < existing.offset + existing.bytes.count && existing.offset < end {
                if existing.offset == offset && existing.bytes.count == payload.count
                    && existing.bytes.elementsEqual(payload) {
                    isDuplicate = true  // an exact duplicate: ignored
                } else {
                    isBad = true
                }
                break
            }
        }
        if isBad {
            // Kept, emptied, so the datagram's later fragments are discarded until it times out.
            datagram.isPoisoned = true
            datagram.fragments = []
            bufferedBytes -= datagram.receivedBytes
            datagram.receivedBytes = 0
            datagrams[key] = datagram
            droppedDatagrams += 1
            return .dropped
        }
        if isDuplicate {
            datagrams[key] = datagram
            return .held
        }
        if isLast { datagram.totalLength = end }
        if offset == 0, let nextHeader { datagram.nextHeader = nextHeader }
        datagram.fragments.append(Fragment(offset: offset, bytes: Array(payload)))
        datagram.receivedBytes += payload.count
        bufferedBytes += payload.count
        guard let total = datagram.totalLength, datagram.receivedBytes == total else {
            datagrams[key] = datagram
            return .held
        }
        // Non-overlapping fragments whose sizes add up to the total cover it exactly.
        for fragment in datagram.fragments {
            fragment.bytes.withUnsafeBytes { bytes in
                UnsafeMutableRawBufferPointer(rebasing: buffer[fragment.offset..<(fragment.offset + bytes.count)])
                    .copyMemory(from: bytes)
            }
        }
        bufferedBytes -= datagram.receivedBytes
        reassembledDatagrams += 1
        return .complete(length: total, nextHeader: datagram.nextHeader ?? key.protocolNumber)
    }
}
