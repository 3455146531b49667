import CPcap
import CReplayGzip
#if canImport(Glibc)
import Glibc
#endif

/// Why a capture file could not be read. Every case names the file.
public enum CaptureError: Error, Equatable, CustomStringConvertible {
    /// The file could not be opened (missing, unreadable).
    case cannotOpen(path: String, reason: String)
    /// The file is neither pcap nor pcapng (nor a gzip-compressed one).
    case notACapture(path: String, reason: String)
    /// The file ends in the middle of a header or a packet record.
    case truncated(path: String, reason: String)
    /// The capture's link type is not one the decoder understands.
    case unsupportedLinkType(path: String, linkType: Int32, name: String)
    /// Any other read error libpcap reports.
    case readFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason): return "\(path): cannot open: \(reason)"
        case .notACapture(let path, let reason): return "\(path): not a pcap or pcapng capture (\(reason))"
        case .truncated(let path, let reason): return "\(path): truncated capture (\(reason))"
        case .unsupportedLinkType(let path, let linkType, let name):
            return "\(path): unsupported link type \(linkType) (\(name))"
        case .readFailed(let path, let reason): return "\(path): read failed: \(reason)"
        }
    }
}

/// One packet record of a capture.
///
/// `bytes` points into libpcap's read buffer: valid only until the next call to
/// `CaptureReader.next()` (or the reader's end); copy what must outlive it.
public struct CapturedPacket: @unchecked Sendable {
    /// Capture time, nanoseconds since the Unix epoch (libpcap's nanosecond precision,
    /// microsecond captures scaled up).
    public var timestamp: UInt64
    /// How many bytes of the packet the capture holds (`bytes.count`).
    public var capturedLength: Int { bytes.count }
    /// How long the packet was on the wire; larger than `capturedLength` when the snaplen
    /// cut it.
    public var originalLength: Int
    public var bytes: UnsafeRawBufferPointer

    public init(timestamp: UInt64, originalLength: Int, bytes: UnsafeRawBufferPointer) {
        self.timestamp = timestamp
        self.originalLength = originalLength
        self.bytes = bytes
    }
}

/// Reads the packets of one pcap or pcapng file through libpcap; a gzip-compressed file
/// (magic 1f 8b) is inflated on the fly through zlib (`CReplayGzip`), never whole.
///
/// Owns the `pcap_t` (closed on deinit). Touches only the file it was given. Packets are
/// handed out without copying: each is valid until the next `next()`. Not thread-safe;
/// one reader per file per thread.
public final class CaptureReader {
    /// The file being read, as given.
    public let path: String
    /// The capture's link type (a DLT_ value, as `pcap_datalink` maps it).
    public let linkType: Int32
    /// The capture's snapshot length (the largest `capturedLength` it may hold).
    public let snapshotLength: Int
    /// Whether the file was gzip-compressed.
    public let isCompressed: Bool

    private let handle: OpaquePointer
    /// zlib's handle of a compressed file, for `bytesRead`.
    private let compressedFile: UnsafeMutableRawPointer?
    /// The file's size on disk (0 when unknown), for progress.
    public let fileSize: Int64

    /// The link types `PacketDecoder` understands.
    public static let supportedLinkTypes: Set<Int32> = [
        PacketDecoder.LinkType.ethernet, PacketDecoder.LinkType.linuxCooked,
        PacketDecoder.LinkType.linuxCookedV2, PacketDecoder.LinkType.raw,
        PacketDecoder.LinkType.rawOpenBSD, PacketDecoder.LinkType.ipv4,
        PacketDecoder.LinkType.ipv6, PacketDecoder.LinkType.null, PacketDecoder.LinkType.loop,
    ]

    /// Opens `path`. Throws `CaptureError` naming the file: cannot open, not a capture,
    /// truncated header, or a link type the decoder does not support.
    public init(path: String) throws(CaptureError) {
        self.path = path
        var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
        guard let probe = fopen(path, "rb") else {
            throw .cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        var magic: (UInt8, UInt8) = (0, 0)
        let magicCount = withUnsafeMutableBytes(of: &magic) { fread($0.baseAddress, 1, 2, probe) }
        fclose(probe)
        let compressed = magicCount == 2 && magic == (0x1f, 0x8b)
        var compressedFile: UnsafeMutableRawPointer?
        let stream = compressed ? sluice_gzip_fopen(path, &compressedFile) : fopen(path, "rb")
        guard let stream else { throw .cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        // Large reads (stdio's default is a few KiB: a read call every few packets).
        setvbuf(stream, nil, _IOFBF, 1 << 20)
        // pcap_fopen_offline owns `stream` from here, closing it on failure too.
        let opened = pcap_fopen_offline_with_tstamp_precision(stream, UInt32(PCAP_TSTAMP_PRECISION_NANO), &errorBuffer)
        guard let handle = opened else {
            let reason = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            if reason.contains("truncated") { throw .truncated(path: path, reason: reason) }
            if reason.contains("unknown file format") || reason.contains("bad dump file format")
                || reason.contains("file header") || magicCount < 2 {
                throw .notACapture(path: path, reason: reason)
            }
            throw .readFailed(path: path, reason: reason)
        }
        let linkType = pcap_datalink(handle)
        guard Self.supportedLinkTypes.contains(linkType) else {
            pcap_close(handle)
            let name = pcap_datalink_val_to_name(linkType).map { String(cString: $0) } ?? "unknown"
            throw .unsupportedLinkType(path: path, linkType: linkType, name: name)
        }
        self.handle = handle
        self.linkType = linkType
        self.snapshotLength = Int(pcap_snapshot(handle))
        self.isCompressed = compressed
        self.compressedFile = compressedFile
        var status = stat()
        fileSize = stat(path, &status) == 0 ? Int64(status.st_size) : 0
    }

    /// How many bytes of the file (compressed, for a gzip file) have been read so far.
    public var bytesRead: Int64 {
        if let compressedFile { return max(0, sluice_gzip_offset(compressedFile)) }
        guard let file = pcap_file(handle) else { return 0 }
        return max(0, Int64(ftello(file)))
    }

    deinit { pcap_close(handle) }

    /// The next packet, or nil at the end of the file. Invalidates the previous packet's
    /// bytes. Throws `.truncated` when the file ends inside a record.
    public func next() throws(CaptureError) -> CapturedPacket? {
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        let result = pcap_next_ex(handle, &header, &data)
        switch result {
        case 1:
            guard let header, let data else { return nil }
            let record = header.pointee
            // With PCAP_TSTAMP_PRECISION_NANO, tv_usec holds nanoseconds.
            let timestamp = UInt64(max(0, record.ts.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, record.ts.tv_usec))
            return CapturedPacket(
                timestamp: timestamp, originalLength: Int(record.len),
                bytes: UnsafeRawBufferPointer(start: data, count: Int(record.caplen)))
        case PCAP_ERROR_BREAK:  // -2: no more packets
            return nil
        default:
            let reason = String(cString: pcap_geterr(handle))
            if reason.contains("truncated") { throw .truncated(path: path, reason: reason) }
            throw .readFailed(path: path, reason: reason)
        }
    }
}
