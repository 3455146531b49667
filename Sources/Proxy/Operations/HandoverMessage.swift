import Foundation

/// A listening socket one sluice hands to the next, as the hand-over describes it (the
/// descriptor itself travels beside the description, `SCM_RIGHTS`).
public struct HandoverSocket: Codable, Sendable, Equatable, Hashable {
    /// What the socket is for.
    public enum Role: String, Codable, Sendable {
        /// A proxy listener (one per worker and address: workers share each address with
        /// `SO_REUSEPORT`).
        case listener
        /// The metrics address (`/metrics`, `/healthz`, `/readyz`).
        case metrics
        /// The control socket (`sluice observe`, `sluice status`).
        case control
        /// The hand-over socket itself, so the successor can hand over in its turn.
        case handover
    }

    public var role: Role
    /// `tcp`, `udp` or `unix`.
    public var transport: String
    /// `host:port`, or a path for `unix`.
    public var address: String
    /// The configured listener's name (listeners only).
    public var name: String?

    public init(role: Role, transport: String, address: String, name: String? = nil) {
        self.role = role
        self.transport = transport
        self.address = address
        self.name = name
    }

    /// The key listeners are matched by across a hand-over: transport and address.
    public var key: String { "\(transport) \(address)" }
}

/// The successor's first message.
public struct HandoverHello: Codable, Sendable, Equatable {
    public var pid: Int32
    /// Sluice's version (`sluice --version`), for the predecessor's log line.
    public var version: String
    /// The keys (`HandoverSocket.key`) of the listeners its configuration names: a
    /// predecessor with none of them is another instance and offers nothing.
    public var listeners: [String]?
    /// The inode of its network namespace: a predecessor in another one offers nothing.
    public var networkNamespace: UInt64?
    public init(pid: Int32, version: String, listeners: [String]? = nil, networkNamespace: UInt64? = nil) {
        self.pid = pid
        self.version = version
        self.listeners = listeners
        self.networkNamespace = networkNamespace
    }
}

/// The predecessor's last message of its offer, and of its life.
public struct HandoverSummary: Codable, Sendable, Equatable {
    public var pid: Int32
    public var version: String
    /// Offer: the sockets sent. Finished: the connections served in all.
    public var count: UInt64
    public init(pid: Int32, version: String, count: UInt64) {
        self.pid = pid
        self.version = version
        self.count = count
    }
}

/// One message of the hand-over protocol between a running sluice (the predecessor) and the
/// one started to replace it (the successor), over the hand-over Unix stream socket.
///
/// The conversation:
///
///     successor                       predecessor
///     hello            ->
///                      <-  refused                        (and the connection closes), or
///                      <-  socket ... (one descriptor each), state ..., offerEnd
///     (binds what it was not given, attaches the datapath, serves)
///     ready            ->
///                          (stops accepting, drains its connections)
///                      <-  state ..., finished            (and exits)
///
/// A frame is a 12-byte header then its payload: the magic `SLHO`, the protocol version
/// (UInt16, big endian), the kind (UInt8), a zero byte, and the payload's length (UInt32,
/// big endian). Payloads are JSON objects, except `state`'s: a section name, a zero byte
/// and bytes the section's owner reads (the FQDN learner's saved-file format). The header's
/// layout and `refused` never change between versions, so a sluice can always tell a peer
/// of another version why it will not hand over.
public enum HandoverMessage: Sendable, Equatable {
    case hello(HandoverHello)
    case refused(reason: String)
    /// Carries one descriptor, attached to the frame's first byte.
    case socket(HandoverSocket)
    case state(section: String, bytes: [UInt8])
    case offerEnd(HandoverSummary)
    case ready
    case finished(HandoverSummary)

    public static let magic: [UInt8] = Array("SLHO".utf8)
    /// The protocol this build speaks. A successor of another version is refused.
    public static let protocolVersion: UInt16 = 1
    public static let headerBytes = 12
    /// The largest payload accepted (learned addresses are the big one: 65,536 records).
    public static let maximumPayloadBytes = 64 << 20

    enum Kind: UInt8 {
        case hello = 1, refused = 2, socket = 3, state = 4, offerEnd = 5, ready = 6, finished = 7
    }

    var kind: Kind {
        switch self {
        case .hello: return .hello
        case .refused: return .refused
        case .socket: return .socket
        case .state: return .state
        case .offerEnd: return .offerEnd
        case .ready: return .ready
        case .finished: return .finished
        }
    }

    /// Whether the frame carries a descriptor.
    public var carriesDescriptor: Bool {
        if case .socket = self { return true }
        return false
    }

    /// The whole frame, header and payload, in protocol `version` (tests write others).
    public func encoded(version: UInt16 = protocolVersion) -> [UInt8] {
        let payload: [UInt8]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        switch self {
        case .hello(let hello): payload = Array((try? encoder.encode(hello)) ?? Data())
        case .refused(let reason): payload = Array((try? encoder.encode(["reason": reason])) ?? Data())
        case .socket(let socket): payload = Array((try? encoder.encode(socket)) ?? Data())
        case .state(let section, let bytes): payload = Array(section.utf8) + [0] + bytes
        case .offerEnd(let summary), .finished(let summary): payload = Array((try? encoder.encode(summary)) ?? Data())
        case .ready: payload = Array("{}".utf8)
        }
        var frame = Self.magic
        frame += [UInt8(version >> 8), UInt8(version & 0xff), kind.rawValue, 0]
        let length = UInt32(payload.count)
        frame += [UInt8(length >> 24), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
        return frame + payload
    }

    /// What reading the front of a byte stream gave.
    public enum Decoded: Equatable {
        /// A whole message, `consumed` bytes long.
        case message(HandoverMessage, consumed: Int)
        /// Not a whole frame yet: at least `bytes` more are needed.
        case needMore(bytes: Int)
    }

    /// Reads the frame at the front of `bytes`. Throws `HandoverProtocolError` for what is
    /// not a frame of this protocol (a `refused` frame is read whatever its version).
    public static func decode(_ bytes: ArraySlice<UInt8>) throws -> Decoded {
        guard bytes.count >= headerBytes else {
            let present = Array(bytes.prefix(magic.count))
            guard present == Array(magic.prefix(present.count)) else { throw HandoverProtocolError.notHandover }
            return .needMore(bytes: headerBytes - bytes.count)
        }
        let start = bytes.startIndex
        guard Array(bytes[start..<start + 4]) == magic else { throw HandoverProtocolError.notHandover }
        let version = UInt16(bytes[start + 4]) << 8 | UInt16(bytes[start + 5])
        let rawKind = bytes[start + 6]
        let length = Int(UInt32(bytes[start + 8]) << 24 | UInt32(bytes[start + 9]) << 16
                         | UInt32(bytes[start + 10]) << 8 | UInt32(bytes[start + 11]))
        guard length <= maximumPayloadBytes else { throw HandoverProtocolError.tooLarge(length) }
        guard bytes.count >= headerBytes + length else { return .needMore(bytes: headerBytes + length - bytes.count) }
        let payload = Data(bytes[(start + headerBytes)..<(start + headerBytes + length)])
        guard let kind = Kind(rawValue: rawKind) else {
            if version != protocolVersion { throw HandoverProtocolError.unsupportedVersion(version) }
            throw HandoverProtocolError.unknownKind(rawKind)
        }
        let decoder = JSONDecoder()
        func read<T: Decodable>(_ type: T.Type) throws -> T {
            do {
                return try decoder.decode(type, from: payload)
            } catch {
                throw HandoverProtocolError.malformed(kind: "\(kind)", detail: "\(error)")
            }
        }
        let message: HandoverMessage
        if kind == .refused {
            // Readable at every version: how peers of different versions say no.
            message = .refused(reason: try read([String: String].self)["reason"] ?? "no reason given")
            return .message(message, consumed: headerBytes + length)
        }
        guard version == protocolVersion else { throw HandoverProtocolError.unsupportedVersion(version) }
        switch kind {
        case .hello: message = .hello(try read(HandoverHello.self))
        case .refused: message = .refused(reason: "")
        case .socket: message = .socket(try read(HandoverSocket.self))
        case .state:
            guard let zero = payload.firstIndex(of: 0) else {
                throw HandoverProtocolError.malformed(kind: "state", detail: "no section name")
            }
            message = .state(section: String(decoding: payload[payload.startIndex..<zero], as: UTF8.self),
                             bytes: Array(payload[(zero + 1)...]))
        case .offerEnd: message = .offerEnd(try read(HandoverSummary.self))
        case .ready: message = .ready
        case .finished: message = .finished(try read(HandoverSummary.self))
        }
        return .message(message, consumed: headerBytes + length)
    }
}

/// Bytes on the hand-over socket that are not what this protocol allows.
public enum HandoverProtocolError: Error, Equatable, CustomStringConvertible {
    case notHandover
    case unsupportedVersion(UInt16)
    case unknownKind(UInt8)
    case tooLarge(Int)
    case malformed(kind: String, detail: String)

    public var description: String {
        switch self {
        case .notHandover: return "not a sluice hand-over message (no SLHO magic)"
        case .unsupportedVersion(let version):
            return "hand-over protocol version \(version), this sluice speaks version \(HandoverMessage.protocolVersion)"
        case .unknownKind(let kind): return "unknown hand-over message kind \(kind)"
        case .tooLarge(let length):
            return "hand-over message of \(length) bytes, more than \(HandoverMessage.maximumPayloadBytes)"
        case .malformed(let kind, let detail): return "malformed hand-over \(kind) message: \(detail)"
        }
    }
}
