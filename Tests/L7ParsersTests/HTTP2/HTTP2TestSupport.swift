#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import L7Parsers

/// Two endpoints of one HTTP/2 connection, in memory, for the HTTP/2 unit tests.
enum HTTP2TestConnection {
    /// A client and a server endpoint past the connection preface and the SETTINGS exchange,
    /// their events so far dropped.
    static func connected() -> (client: HTTP2Endpoint, server: HTTP2Endpoint) {
        let client = HTTP2Endpoint(role: .client), server = HTTP2Endpoint(role: .server)
        pump(client, server)
        pump(server, client)
        pump(client, server)
        _ = client.takeEvents()
        _ = server.takeEvents()
        return (client, server)
    }

    /// Hands everything `from` has for its peer to `to`.
    static func pump(_ from: HTTP2Endpoint, _ to: HTTP2Endpoint) {
        while case .success(let bytes) = from.takeOutput(limit: 1 << 20), !bytes.isEmpty {
            bytes.withUnsafeBytes { _ = to.receive($0) }
        }
    }
}

/// Runs `body` on a thread of its own and waits for it to end (per-thread state, such as
/// `HTTP2Memory`'s pools and `HTTP2Recycler`, then starts empty whatever other tests did).
func onNewThread(_ body: @escaping () -> Void) {
    final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let created = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    #expect(created == 0)
    pthread_join(thread, nil)
}
