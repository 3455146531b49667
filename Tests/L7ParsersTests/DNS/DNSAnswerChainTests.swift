import Testing
@testable import L7Parsers

/// What an answer teaches toFQDNs: only the chain from the question's name counts.
@Suite struct DNSAnswerChainTests {
    static let question = DNSWire.name("api.example.com") + DNSWire.u16(DNSRecordType.a) + DNSWire.u16(1)

    /// A NOERROR answer to "api.example.com A" carrying `records` (uncompressed owners).
    static func answer(_ records: [[UInt8]], rcode: UInt16 = 0) -> [UInt8] {
        DNSWire.header(flags: 0x8180 | rcode, answers: UInt16(records.count)) + question + records.flatMap { $0 }
    }

    static func cname(_ owner: String, _ target: String, ttl: UInt32 = 300) -> [UInt8] {
        DNSWire.record(DNSWire.name(owner), type: DNSRecordType.cname, ttl: ttl, data: DNSWire.name(target))
    }

    static func a(_ owner: String, _ address: [UInt8], ttl: UInt32 = 300) -> [UInt8] {
        DNSWire.record(DNSWire.name(owner), type: address.count == 16 ? DNSRecordType.aaaa : DNSRecordType.a, ttl: ttl,
                       data: address)
    }

    /// The chain's names and its addresses as bytes.
    static func chain(_ bytes: [UInt8]) throws -> (names: [String], addresses: [[UInt8]], ttl: UInt32?)? {
        try bytes.withUnsafeBytes { raw in
            let message = try DNSMessage.parse(raw)
            guard let chain = DNSAnswerChain(message, in: raw) else { return nil }
            return (chain.names, chain.addresses.map { Array(bytes[$0]) }, chain.ttl)
        }
    }

    @Test func aCNAMEChainIsFollowedInAnyRecordOrder() throws {
        let records = [Self.cname("api.example.com", "edge.example.net"), Self.cname("edge.example.net", "pop.cdn.test"),
                       Self.a("pop.cdn.test", [192, 0, 2, 7])]
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let chain = try #require(try Self.chain(Self.answer(order.map { records[$0] })))
            #expect(chain.names == ["api.example.com.", "edge.example.net.", "pop.cdn.test."], "order \(order)")
            #expect(chain.addresses == [[192, 0, 2, 7]])
        }
    }

    @Test func aCNAMELoopEndsTheChain() throws {
        let chain = try #require(try Self.chain(Self.answer([
            Self.cname("api.example.com", "b.example.com"), Self.cname("b.example.com", "API.example.com"),
            Self.a("b.example.com", [192, 0, 2, 8]),
        ])))
        #expect(chain.names == ["api.example.com.", "b.example.com."], "the loop back (any case) is not followed")
        #expect(chain.addresses == [[192, 0, 2, 8]])
    }

    @Test func recordsOffTheChainAreIgnored() throws {
        let chain = try #require(try Self.chain(Self.answer([
            Self.a("bank.example.org", [203, 0, 113, 1]),        // nobody asked for this name
            Self.cname("other.example.com", "api.example.com"),  // a CNAME to the name, not from it
            Self.a("api.example.com", [192, 0, 2, 9]),
        ])))
        #expect(chain.names == ["api.example.com."])
        #expect(chain.addresses == [[192, 0, 2, 9]])
    }

    @Test func theTTLIsTheSmallestAlongTheChain() throws {
        let chain = try #require(try Self.chain(Self.answer([
            Self.cname("api.example.com", "edge.example.net", ttl: 600), Self.a("edge.example.net", [192, 0, 2, 1], ttl: 90),
            Self.a("edge.example.net", [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1], ttl: 120),
            Self.a("elsewhere.example.net", [192, 0, 2, 2], ttl: 5),   // off the chain: its TTL does not count
        ])))
        #expect(chain.ttl == 90)
        #expect(chain.addresses.count == 2, "A and AAAA")
    }

    @Test func aNameErrorTeachesNothing() throws {
        #expect(try Self.chain(Self.answer([Self.a("api.example.com", [192, 0, 2, 7])], rcode: 3)) == nil)
    }

    /// The parser already refuses such records (`badRecordData`); the chain does not rely on
    /// it: a message whose A and AAAA records have other lengths yields no address.
    @Test func anAddressRecordOfTheWrongLengthIsIgnored() throws {
        let bytes = Self.answer([
            DNSWire.record(DNSWire.name("api.example.com"), type: 16, data: [192, 0, 2, 7, 1]),
            DNSWire.record(DNSWire.name("api.example.com"), type: 16, data: [192, 0, 2, 7]),
            Self.a("api.example.com", [192, 0, 2, 10]),
        ])
        let addresses = try bytes.withUnsafeBytes { raw in
            var message = try DNSMessage.parse(raw)
            message.answers[0].type = DNSRecordType.a       // 5 bytes
            message.answers[1].type = DNSRecordType.aaaa    // 4 bytes
            return try #require(DNSAnswerChain(message, in: raw)).addresses.map { Array(bytes[$0]) }
        }
        #expect(addresses == [[192, 0, 2, 10]])
    }
}
