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
