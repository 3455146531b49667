import Testing
@testable import L7Parsers

/// Seeded mutations of valid traffic: whatever the bytes, the parser must not trap, must
/// answer the same for every slicing (the verifier), and `HTTP1Connection` must only ever ask
/// a driver to pass or drop bytes it holds.
@Suite struct HTTP1MutationTests {
    /// SplitMix64: a small deterministic generator, so a failure replays.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var value = state
            value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
            value = (value ^ (value >> 27)) &* 0x94D1_049B_B133_111E
            return value ^ (value >> 31)
        }
    }

    static let seeds: [String] = [
        "GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
        "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ]

    static let interesting: [UInt8] = Array(" \t\r\n:;,\"\\0aFfz-+%/?#\u{7F}".utf8) + [0, 0x80, 0xFF]

    static func mutate(_ input: [UInt8], using generator: inout Generator) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...3, using: &generator) {
            let position = Int.random(in: 0..<bytes.count, using: &generator)
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: bytes[position] = interesting.randomElement(using: &generator)!
            case 1: bytes.insert(interesting.randomElement(using: &generator)!, at: position)
            case 2: if bytes.count > 1 { bytes.remove(at: position) }
            default: bytes[position] = UInt8.random(in: 0...255, using: &generator)
            }
        }
        return bytes
    }

    @Test func mutatedRequestsAreSliceInvariant() {
        var generator = Generator(state: 0x5_1_0_C_E)
        let verifier = SplitFeedVerifier { HTTP1SplitDecoder(direction: .request) }
        var rejected = 0, accepted = 0
        for round in 0..<240 {
            let seed = Array(Self.seeds[round % Self.seeds.count].utf8)
            let input = Self.mutate(seed + seed, using: &generator)
            let records = verifier.verify(input, backToBack: false)
            if records.last?.isFailure == true { rejected += 1 } else { accepted += 1 }
        }
        // The mutations must exercise both paths, or this test proves little.
        #expect(rejected > 20)
        #expect(accepted > 20)
    }

    @Test func connectionOnlyAsksForBytesItWasGiven() {
        var generator = Generator(state: 0xC0_FFEE)
        for round in 0..<300 {
            let seed = Array(Self.seeds[round % Self.seeds.count].utf8)
            let clientBytes = Self.mutate(seed + Array(Self.seeds[(round + 1) % Self.seeds.count].utf8), using: &generator)
            let serverBytes = Self.mutate(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 101 Switching Protocols\r\n\r\nzz".utf8),
                                          using: &generator)
            var verdicts = generator
            var allowedHeads = 0
            var driver = HTTP1Exchange { _, _ in
                let allowed = Bool.random(using: &verdicts)
                if allowed { allowedHeads += 1 }
                return allowed
            }
            var clientOffset = 0, serverOffset = 0
            while clientOffset < clientBytes.count || serverOffset < serverBytes.count {
                let clientSlice = Int.random(in: 0...8, using: &generator)
                let serverSlice = Int.random(in: 0...8, using: &generator)
                let clientEnd = min(clientOffset + clientSlice, clientBytes.count)
                let serverEnd = min(serverOffset + serverSlice, serverBytes.count)
                driver.fromClient += clientBytes[clientOffset..<clientEnd]
                driver.fromServer += serverBytes[serverOffset..<serverEnd]
                clientOffset = clientEnd
                serverOffset = serverEnd
                driver.pump()   // traps if an operation names bytes the driver does not hold
                if driver.closedReason != nil { break }
            }
            // Until a protocol switch, what reached the upstream is exactly the allowed
            // requests: it parses without error, with one head per allowed verdict.
            guard !driver.connection.isTunnel else { continue }
            var parser = HTTP1Parser(direction: .request)
            var upstream = driver.upstream[...]
            var heads = 0
            parsing: while true {
                switch parser.parse(upstream) {
                case .head(let head): heads += 1; upstream = upstream.dropFirst(head.length)
                case .body(let count), .chunkFraming(let count), .tunnel(let count): upstream = upstream.dropFirst(count)
                case .messageComplete(let count, _): upstream = upstream.dropFirst(count)
                case .needMore: break parsing
                case .error(let error):
                    Issue.record("round \(round): the upstream got bytes Sluice would reject: \(error)")
                    break parsing
                }
            }
            #expect(heads == allowedHeads, "round \(round)")
        }
    }
}
