import L7Parsers
import PolicyEngine
import Proxy

/// Fuzz harness for HTTP/2 under policy: `HTTP2PolicySession` (two nghttp2 sessions, the
/// stream bookkeeping between them, flow control, local answers) run by the proxy's real
/// driver from memory, with arbitrary bytes from the client and from the server.
///
/// Input layout (see `Fuzz/seeds.py`): byte 0: how many bytes each side delivers per read
/// (0 = everything at once); byte 1: flags, bit 0 = the client stops reading (its output
/// backs up), bit 1 = the server closes at the end; then the client's bytes, `separator`,
/// the server's bytes. The policy allows `GET /api/.*` and a POST with a header, so that
/// streams are forwarded, denied (403, gRPC status 7), redirected and refused alike.
///
/// Invariants (a violation traps):
/// - the driver never fails with a stuck session ("no progress") and the session never
///   traps, whatever the bytes;
/// - amplification is bounded: what the proxy sends either way is at most a fixed multiple
///   of what it received plus a constant (no flood of answers to a flood of frames);
/// - what reaches the server starts with the HTTP/2 client preface, if anything does.
public enum HTTP2SessionFuzzer {
    public static let separator = SessionFuzzInput.separator
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    static func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
        if !condition() { fatalError("invariant violated: \(message())") }
    }

    static let policies: PolicySnapshotHolder = {
        let loaded = PolicyLoader.load(text: """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: backend, namespace: shop}
            spec:
              endpointSelector: {matchLabels: {app: backend}}
              ingress:
                - fromEndpoints: [{matchLabels: {app: frontend}}]
                  toPorts:
                    - ports: [{port: "80", protocol: TCP}]
                      rules:
                        http:
                          - {method: GET, path: "/api/.*"}
                          - {method: POST, path: "/orders", headers: ["X-Token: s3cret"]}
            """, file: "policy.yaml")
        let endpoints = try! EndpointDirectory.load(text: """
            endpoints:
              - {ip: 10.0.0.1, namespace: shop, pod: frontend, labels: {app: frontend}}
              - {ip: 10.0.0.2, namespace: shop, pod: backend, labels: {app: backend}}
            """, file: "endpoints.yaml")
        precondition(loaded.errors.isEmpty, "the harness's policy does not load: \(loaded.errors)")
        return PolicySnapshotHolder(PolicySnapshot(policies: loaded.policies, endpoints: endpoints))
    }()

    public static func run(_ input: UnsafeRawBufferPointer) {
        guard let input = SessionFuzzInput(input) else { return }
        let policy = WorkerPolicy(holder: policies)
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:80")!)
        let session = HTTP2PolicySession(policy: policy, identities: identities, reporter: nil)
        var connection = MemoryConnection(session: session)
        input.drive(&connection)
        connection.release()
        let received = input.received
        let sent = connection.deliveredToServer.count + connection.deliveredToClient.count
        check(sent <= 16 * received + 1 << 20, "\(sent) bytes sent for \(received) received")
        if !connection.deliveredToServer.isEmpty {
            check(connection.deliveredToServer.starts(with: preface.prefix(connection.deliveredToServer.count)),
                  "the server got something other than the client preface first")
        }
    }
}
