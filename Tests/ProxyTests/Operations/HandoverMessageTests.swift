import Foundation
import Testing
@testable import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// The hand-over protocol's frames (`HandoverMessage`) and their passage, descriptors
/// included, over a real Unix socket pair (`HandoverChannel`).
@Suite struct HandoverMessageTests {
    static let every: [HandoverMessage] = [
        .hello(HandoverHello(pid: 42, version: "0.1.0")),
        .hello(HandoverHello(pid: 43, version: "0.1.0", listeners: ["tcp 127.0.0.1:15001", "udp [::1]:15053"],
                             networkNamespace: 4_026_531_840)),
        .refused(reason: "this sluice is stopping"),
        .socket(HandoverSocket(role: .listener, transport: "udp", address: "[::1]:15053", name: "l7-udp")),
        .socket(HandoverSocket(role: .control, transport: "unix", address: "/run/sluice/sluice.sock")),
        .state(section: "fqdn", bytes: Array("{\"version\":1,\"records\":[]}".utf8)),
        .state(section: "empty", bytes: []),
        .offerEnd(HandoverSummary(pid: 7, version: "0.1.0", count: 9)),
        .ready,
        .finished(HandoverSummary(pid: 7, version: "0.1.0", count: 12_345)),
    ]

    @Test func everyMessageReadsBackAsItWasWritten() throws {
        for message in Self.every {
            let frame = message.encoded()
            #expect(Array(frame.prefix(4)) == Array("SLHO".utf8))
            #expect(try HandoverMessage.decode(frame[...]) == .message(message, consumed: frame.count))
        }
    }

    @Test func everyProperPrefixNeedsMoreAndSaysHowMuchAtLeast() throws {
        for message in Self.every {
            let frame = message.encoded()
            for end in 0..<frame.count {
                guard case .needMore(let bytes) = try HandoverMessage.decode(frame[..<end]) else {
                    Issue.record("\(message): a prefix of \(end) bytes read as a message")
                    continue
                }
                #expect(bytes >= 1 && end + bytes <= frame.count)
            }
        }
    }

    @Test func messagesBackToBackAreReadOneByOne() throws {
        var stream = Self.every.flatMap { $0.encoded() }[...]
        var read: [HandoverMessage] = []
        while !stream.isEmpty {
            guard case .message(let message, let consumed) = try HandoverMessage.decode(stream) else { break }
            read.append(message)
            stream = stream.dropFirst(consumed)
        }
        #expect(read == Self.every)
    }

    @Test func anotherVersionIsRefusedButItsRefusalIsRead() throws {
        let hello = HandoverMessage.hello(HandoverHello(pid: 1, version: "9")).encoded(version: 2)
        #expect(throws: HandoverProtocolError.unsupportedVersion(2)) { try HandoverMessage.decode(hello[...]) }
        let refusal = HandoverMessage.refused(reason: "speaks 2").encoded(version: 2)
        #expect(try HandoverMessage.decode(refusal[...]) == .message(.refused(reason: "speaks 2"), consumed: refusal.count))
        #expect("\(HandoverProtocolError.unsupportedVersion(2))" == "hand-over protocol version 2, this sluice speaks version 1")
    }

    @Test func whatIsNotThisProtocolIsRefusedEarly() throws {
        #expect(throws: HandoverProtocolError.notHandover) { try HandoverMessage.decode(Array("GET / HTTP/1.1\r\n".utf8)[...]) }
        #expect(throws: HandoverProtocolError.notHandover) { try HandoverMessage.decode(Array("SLX".utf8)[...]) }
        var unknown = HandoverMessage.ready.encoded()
        unknown[6] = 99
        #expect(throws: HandoverProtocolError.unknownKind(99)) { try HandoverMessage.decode(unknown[...]) }
        // A length past the limit is refused from the header alone, before any payload.
        let huge: [UInt8] = Array("SLHO".utf8) + [0, 1, 3, 0, 0x7f, 0xff, 0xff, 0xff]
        #expect(throws: HandoverProtocolError.tooLarge(0x7fff_ffff)) { try HandoverMessage.decode(huge[...]) }
        let badJSON: [UInt8] = Array("SLHO".utf8) + [0, 1, 1, 0, 0, 0, 0, 2] + Array("{x".utf8)
        #expect(throws: HandoverProtocolError.self) { try HandoverMessage.decode(badJSON[...]) }
        let noSection: [UInt8] = Array("SLHO".utf8) + [0, 1, 4, 0, 0, 0, 0, 3] + Array("abc".utf8)
        #expect(throws: HandoverProtocolError.malformed(kind: "state", detail: "no section name")) {
            try HandoverMessage.decode(noSection[...])
        }
    }

    @Test func aSocketMessageCarriesItsDescriptorAcrossAUnixSocket() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        let sender = HandoverChannel(descriptor: pair[0])
        let receiver = HandoverChannel(descriptor: pair[1])
        receiver.setTimeout(nanoseconds: 5_000_000_000)
        // A pipe stands for a listening socket: what arrives must be the same open file.
        var pipeEnds: [Int32] = [-1, -1]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        let description = HandoverSocket(role: .listener, transport: "tcp", address: "127.0.0.1:15001", name: "l7-tcp")
        try sender.send(.hello(HandoverHello(pid: 1, version: "t")))
        try sender.send(.socket(description), attaching: pipeEnds[1])
        try sender.send(.socket(description), attaching: pipeEnds[1])
        try sender.send(.state(section: "fqdn", bytes: [UInt8](repeating: 7, count: 200_000)))
        try sender.send(.ready)
        sender.close()
        #expect(try receiver.receive()?.0 == .hello(HandoverHello(pid: 1, version: "t")))
        var received: [Int32] = []
        for _ in 0..<2 {
            let (message, descriptor) = try #require(try receiver.receive())
            #expect(message == .socket(description))
            received.append(try #require(descriptor))
        }
        #expect(received[0] != received[1], "each message its own descriptor")
        for descriptor in received {
            var byte: UInt8 = 0x5a
            #expect(write(descriptor, &byte, 1) == 1)
            var back: UInt8 = 0
            #expect(read(pipeEnds[0], &back, 1) == 1 && back == 0x5a)
            close(descriptor)
        }
        guard case .state(let section, let bytes)? = try receiver.receive()?.0 else {
            Issue.record("expected the state section")
            return
        }
        #expect(section == "fqdn" && bytes.count == 200_000)
        #expect(try receiver.receive()?.0 == .ready)
        #expect(try receiver.receive() == nil, "the end of the stream")
    }

    @Test func theKeyMatchesListenersByTransportAndAddress() {
        #expect(HandoverSocket(role: .listener, transport: "udp", address: "127.0.0.1:15053", name: "x").key == "udp 127.0.0.1:15053")
        #expect(ControlSettings.derivedHandover("/run/sluice/sluice.sock") == "/run/sluice/sluice.handover.sock")
        #expect(ControlSettings.derivedHandover("/tmp/control") == "/tmp/control.handover")
    }
}
