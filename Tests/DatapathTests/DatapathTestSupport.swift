import Foundation
import Testing
@testable import Datapath

/// Where the tests find the BPF object `make bpf` builds, and whether kernel tests may run.
enum DatapathTestSupport {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    static var objectPath: String { "\(packageRoot)/.build/bpf/sluice_tc.bpf.o" }

    static func requireObject() throws -> String {
        guard FileManager.default.fileExists(atPath: objectPath) else {
            throw DatapathError("find \(objectPath)", code: ENOENT, hint: "build it with 'make bpf' (make test does)")
        }
        return objectPath
    }

    /// Kernel tests need root. A developer without root skips them; under CI=true they run
    /// (and fail) regardless, because CI runs as root and a skip there would hide a break.
    static var kernelTestsEnabled: Bool {
        getuid() == 0 || ProcessInfo.processInfo.environment["CI"] == "true"
    }
}

/// Builds Ethernet + IPv4 + TCP/UDP frames for `BPF_PROG_TEST_RUN`.
struct PacketBuilder {
    static func ipv4(_ text: String) -> [UInt8] { text.split(separator: ".").map { UInt8($0)! } }

    static func frame(source: String, destination: String, protocol ipProtocol: UInt8 = 6, sourcePort: UInt16 = 40000,
                      destinationPort: UInt16 = 80, syn: Bool = true, ack: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes += [0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]
        let l4Length = ipProtocol == 17 ? 8 : 20
        let total = UInt16(20 + l4Length)
        bytes += [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1, 0x40, 0, 64, ipProtocol, 0, 0]
        bytes += ipv4(source) + ipv4(destination)
        bytes += [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff)]
        if ipProtocol == 17 {
            bytes += [0, 8, 0, 0]
        } else {
            var flags: UInt8 = 0
            if syn { flags |= 0x02 }
            if ack { flags |= 0x10 }
            bytes += [0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]
        }
        return bytes
    }

    static let arp: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06] + [UInt8](repeating: 0, count: 28)
}

/// Builds Ethernet + IPv6 frames, with extension headers, for `BPF_PROG_TEST_RUN`.
struct PacketBuilder6 {
    /// An extension header between the IPv6 header and the L4 header (8 bytes each).
    enum Extension {
        case hopByHop, destinationOptions, authentication
        case routing(segmentsLeft: UInt8)
        case fragment(offset: UInt16, more: Bool)

        var number: UInt8 {
            switch self {
            case .hopByHop: return 0
            case .destinationOptions: return 60
            case .authentication: return 51
            case .routing: return 43
            case .fragment: return 44
            }
        }

        func bytes(next: UInt8) -> [UInt8] {
            switch self {
            case .hopByHop, .destinationOptions:
                return [next, 0, 1, 4, 0, 0, 0, 0] // PadN over the rest
            case .authentication:
                return [next, 0, 0, 0, 0, 0, 0, 1] // length 0: (0 + 2) * 4 = 8 bytes
            case .routing(let segmentsLeft):
                return [next, 0, 4, segmentsLeft, 0, 0, 0, 0]
            case .fragment(let offset, let more):
                let field = offset << 3 | (more ? 1 : 0)
                return [next, 0, UInt8(field >> 8), UInt8(field & 0xff), 0, 0, 0, 7]
            }
        }
    }

    static func address(_ text: String) -> [UInt8] { IPv6Prefix(text)!.bytes }

    /// `l4Bytes` cuts the L4 header after that many bytes (a fragment hiding its header).
    static func frame(source: String, destination: String, extensions: [Extension] = [], protocol ipProtocol: UInt8 = 6,
                      sourcePort: UInt16 = 40000, destinationPort: UInt16 = 80, syn: Bool = true, ack: Bool = false,
                      hopLimit: UInt8 = 64, icmpType: UInt8 = 128, l4Bytes: Int? = nil) -> [UInt8] {
        var l4: [UInt8]
        switch ipProtocol {
        case 6:
            var flags: UInt8 = 0
            if syn { flags |= 0x02 }
            if ack { flags |= 0x10 }
            l4 = [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff),
                  0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]
        case 17:
            l4 = [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xff), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xff), 0, 8, 0, 0]
        case 58:
            l4 = [icmpType, 0, 0, 0, 0, 0, 0, 0] + address(destination)
        default:
            l4 = [UInt8](repeating: 0, count: 8)
        }
        if let l4Bytes { l4 = Array(l4.prefix(l4Bytes)) }
        var chain: [UInt8] = []
        for (index, header) in extensions.enumerated() {
            let next = index + 1 < extensions.count ? extensions[index + 1].number : ipProtocol
            chain += header.bytes(next: next)
        }
        let payload = UInt16(chain.count + l4.count)
        var bytes: [UInt8] = [0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd]
        bytes += [0x60, 0, 0, 0, UInt8(payload >> 8), UInt8(payload & 0xff), extensions.first?.number ?? ipProtocol, hopLimit]
        bytes += address(source) + address(destination)
        return bytes + chain + l4
    }
}
