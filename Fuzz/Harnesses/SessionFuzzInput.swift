import Proxy

/// What the session harnesses (HTTP/2, Kafka) share: one input layout and one way of feeding a
/// policy session from it through the proxy's real driver.
///
/// Layout: byte 0, how many bytes each side delivers per read (0 = everything at once);
/// byte 1, flags (bit 0: the client stops reading, bit 1: the server closes at the end; a
/// harness may give other bits a meaning of its own); then the client's bytes, `separator`,
/// the server's bytes.
struct SessionFuzzInput {
    static let separator: [UInt8] = Array("\n--server--\n".utf8)

    let readSize: Int
    let flags: UInt8
    let client: [UInt8]
    let server: [UInt8]

    /// Nil for an input shorter than its two header bytes.
    init?(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return nil }
        readSize = Int(input[0])
        flags = input[1]
        let rest = Array(input[2...])
        if let at = rest.firstRange(of: Self.separator) {
            client = Array(rest[..<at.lowerBound])
            server = Array(rest[at.upperBound...])
        } else {
            client = rest
            server = []
        }
    }

    var received: Int { client.count + server.count }

    /// Feeds both sides in turns of `readSize` until everything is in or the connection
    /// ended, then closes them (the server only with flag bit 1). Traps on a session that
    /// needs more rounds than bytes or that got stuck.
    func drive(_ connection: inout MemoryConnection) {
        connection.clientReads = flags & 1 == 0
        var clientAt = 0, serverAt = 0
        let step = readSize == 0 ? Int.max : readSize
        var rounds = 0
        while (clientAt < client.count || serverAt < server.count) && connection.closedReason == nil {
            rounds += 1
            if rounds > received + 2 { fatalError("invariant violated: more rounds than bytes") }
            if clientAt < client.count {
                let end = min(client.count, clientAt &+ step)
                connection.clientSends(client[clientAt..<end])
                clientAt = end
            }
            if serverAt < server.count {
                let end = min(server.count, serverAt &+ step)
                connection.serverSends(server[serverAt..<end])
                serverAt = end
            }
            connection.pump()
        }
        if flags & 2 != 0 { connection.serverCloses() }
        connection.clientCloses()
        if let failure = connection.failure, failure.contains("no progress") {
            fatalError("invariant violated: the session got stuck: \(failure)")
        }
    }
}
