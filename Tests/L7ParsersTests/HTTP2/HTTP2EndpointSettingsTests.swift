import Testing
@testable import L7Parsers

/// What an endpoint tells its peer in its first SETTINGS frame.
@Suite struct HTTP2EndpointSettingsTests {
    /// SETTINGS entries (identifier, value) of the first SETTINGS frame in `bytes` (after a
    /// client's preface when there is one).
    private func firstSettings(_ bytes: [UInt8]) -> [(UInt16, UInt32)] {
        var offset = bytes.starts(with: Array("PRI * HTTP/2.0".utf8)) ? 24 : 0
        while offset + 9 <= bytes.count {
            let high = Int(bytes[offset]) << 16, middle = Int(bytes[offset + 1]) << 8
            let length = high | middle | Int(bytes[offset + 2])
            let type = bytes[offset + 3]
            let payload = Array(bytes[(offset + 9)..<min(bytes.count, offset + 9 + length)])
            if type == 0x4 {
                var entries: [(UInt16, UInt32)] = []
                var index = 0
                while index + 6 <= payload.count {
                    let identifier = UInt16(payload[index]) << 8 | UInt16(payload[index + 1])
                    var value: UInt32 = 0
                    for byte in payload[(index + 2)..<(index + 6)] { value = value << 8 | UInt32(byte) }
                    entries.append((identifier, value))
                    index += 6
                }
                return entries
            }
            offset += 9 + length
        }
        return []
    }

    @Test(arguments: [HTTP2Endpoint.Role.server, .client])
    func rfc7540PrioritiesAreDeclinedAndTheLimitsAdvertised(role: HTTP2Endpoint.Role) throws {
        let endpoint = HTTP2Endpoint(role: role)
        guard case .success(let output) = endpoint.takeOutput(limit: 1 << 16) else {
            Issue.record("no output")
            return
        }
        let settings = firstSettings(output)
        // RFC 9218 §2.1: SETTINGS_NO_RFC7540_PRIORITIES (0x9) = 1.
        #expect(settings.contains { $0 == (0x9, 1) }, "\(settings)")
        #expect(settings.contains { $0 == (0x4, UInt32(endpoint.limits.streamWindowBytes)) })
        #expect(settings.contains { $0 == (0x6, UInt32(endpoint.limits.maximumHeaderListBytes)) })
    }

    @Test func aRequestCarryingRFC7540PriorityIsServedAsAnyOther() {
        // A HEADERS frame with the PRIORITY flag (a dependency and weight), then a PRIORITY
        // frame for it: both are read and ignored; the request head arrives whole.
        let server = HTTP2Endpoint(role: .server)
        _ = server.takeOutput(limit: 1 << 16)
        var input = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 0x4, 0, 0, 0, 0, 0]
        // HPACK: :method GET, :scheme http, :path /, :authority "a" (literal, static name 1).
        let block: [UInt8] = [0x82, 0x86, 0x84, 0x41, 0x01, UInt8(ascii: "a")]
        let priority: [UInt8] = [0, 0, 0, 0, 15]  // depends on stream 0, weight 16
        let headersPayload = priority + block
        input += [0, 0, UInt8(headersPayload.count), 0x1, 0x25, 0, 0, 0, 1] + headersPayload  // END_STREAM|END_HEADERS|PRIORITY
        input += [0, 0, 5, 0x2, 0, 0, 0, 0, 1] + [0, 0, 0, 0, 200]  // PRIORITY for stream 1
        let result = input.withUnsafeBytes { server.receive($0) }
        #expect((try? result.get()) == input.count)
        let heads = server.takeEvents().compactMap { event -> HTTP2HeaderBlock? in
            if case .head(1, let headers, true) = event { return headers }
            return nil
        }
        #expect(heads.first?.headers == [HTTP2Header(":method", "GET"), HTTP2Header(":scheme", "http"),
                                         HTTP2Header(":path", "/"), HTTP2Header(":authority", "a")])
    }
}
