import L7Parsers
import PolicyEngine
import Proxy

/// Fuzz harness for Kafka under policy: `KafkaFraming`, the produce stream
/// (`KafkaProduceStream`), the generated codec and `KafkaPolicySession` (judging, local
/// answers in request order, Metadata narrowing and widening, ApiVersions rewriting, topic
/// IDs) run by the proxy's real driver from memory, with arbitrary bytes from the client and
/// from the broker.
///
/// Input layout (see `Fuzz/seeds.py`): byte 0: how many bytes each side delivers per read
/// (0 = everything at once); byte 1: flags, bit 0 = the client stops reading (its output
/// backs up), bit 1 = the broker closes at the end, bit 2 = small limits (4 KiB requests,
/// 4 KiB Metadata responses); then the client's bytes, `separator`, the broker's bytes.
/// The policy allows produce and consume on topic `orders` and nothing else; the topic
/// directory knows `orderIDBytes` as `orders` and `secretIDBytes` as `secret`.
///
/// Invariants (a violation traps):
/// - the driver never fails with a stuck session ("no progress") and the session never
///   traps, whatever the bytes;
/// - amplification is bounded: what the proxy sends either way is at most a fixed multiple
///   of what it received plus a constant;
/// - a denied request never reaches the broker: what reached it is a sequence of frames
///   (only the last may be cut short), and every whole one is of an API the policy allows
///   (or SASL), of a version whose topics can be read when its API names topics, and names
///   no topic other than `orders`, by name or by `secret`'s ID. This oracle reads frames
///   with the generated codec, also for produce requests, which the session reads with its
///   own streaming reader: the two check each other.
public enum KafkaSessionFuzzer {
    public static let separator = SessionFuzzInput.separator
    /// The topic IDs the directory starts with (the seeds use them).
    public static let orderIDBytes: [UInt8] = Array(repeating: 0x11, count: 16)
    public static let secretIDBytes: [UInt8] = Array(repeating: 0x22, count: 16)
    /// API keys of `role: produce` and `role: consume`, and SASL (17, 36), which passes unjudged.
    static let allowedKeys: Set<Int16> = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 17, 36]

    static func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
        if !condition() { fatalError("invariant violated: \(message())") }
    }

    static func uuid(_ bytes: [UInt8]) -> KafkaUUID {
        var high: UInt64 = 0, low: UInt64 = 0
        for byte in bytes[0..<8] { high = high << 8 | UInt64(byte) }
        for byte in bytes[8..<16] { low = low << 8 | UInt64(byte) }
        return KafkaUUID(high: high, low: low)
    }

    static let policies: PolicySnapshotHolder = {
        let loaded = PolicyLoader.load(text: """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: kafka, namespace: shop}
            spec:
              endpointSelector: {matchLabels: {app: frontend}}
              egress:
                - toEndpoints: [{matchLabels: {app: broker}}]
                  toPorts:
                    - ports: [{port: "9092", protocol: TCP}]
                      rules:
                        kafka:
                          - {role: produce, topic: orders}
                          - {role: consume, topic: orders}
            """, file: "policy.yaml")
        let endpoints = try! EndpointDirectory.load(text: """
            endpoints:
              - {ip: 10.0.0.1, namespace: shop, pod: frontend, labels: {app: frontend}}
              - {ip: 10.0.0.9, namespace: shop, pod: broker, labels: {app: broker}}
            """, file: "endpoints.yaml")
        precondition(loaded.errors.isEmpty, "the harness's policy does not load: \(loaded.errors)")
        return PolicySnapshotHolder(PolicySnapshot(policies: loaded.policies, endpoints: endpoints))
    }()

    /// What one input did (the corpus tests read it).
    public struct Outcome {
        public var toBroker: [UInt8]
        public var toClient: [UInt8]
        public var closedReason: String?
    }

    public static func run(_ input: UnsafeRawBufferPointer) {
        _ = outcome(input)
    }

    public static func outcome(_ input: UnsafeRawBufferPointer) -> Outcome {
        guard let input = SessionFuzzInput(input) else { return Outcome(toBroker: [], toClient: [], closedReason: nil) }
        let flags = input.flags
        var settings = KafkaSettings()
        if flags & 4 != 0 {
            settings.maximumRequestBytes = 4096
            settings.maximumMetadataResponseBytes = 4096
        }
        let directory = KafkaTopicDirectory()
        directory.learn([(uuid(orderIDBytes), "orders"), (uuid(secretIDBytes), "secret")])
        let policy = WorkerPolicy(holder: policies)
        let identities = policy.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.9:9092")!)
        let session = KafkaPolicySession(context: SessionContext(identities: identities, policy: policy, reporter: nil),
                                         settings: settings, directory: directory)
        var connection = MemoryConnection(session: session)
        input.drive(&connection)
        let received = input.received
        let sent = connection.deliveredToServer.count + connection.deliveredToClient.count
        check(sent <= 16 * received + 1 << 16, "\(sent) bytes sent for \(received) received")
        // The secret ID is checked only when the broker's bytes cannot have taught it another name.
        let secretIDMayBeRelearned = input.server.firstRange(of: secretIDBytes) != nil
        checkReachedBroker(connection.deliveredToServer, secretIDMayBeRelearned: secretIDMayBeRelearned)
        connection.release()
        return Outcome(toBroker: connection.deliveredToServer, toClient: connection.deliveredToClient,
                       closedReason: connection.closedReason)
    }

    /// The oracle for "a denied request never reaches the broker" (see the type's comment).
    static func checkReachedBroker(_ bytes: [UInt8], secretIDMayBeRelearned: Bool) {
        let secretID = uuid(secretIDBytes)
        bytes.withUnsafeBytes { stream in
            var offset = 0
            while offset < stream.count {
                let rest = UnsafeRawBufferPointer(rebasing: stream[offset...])
                guard case .frame(let length) = KafkaFraming.frameStart(rest, limit: Int(Int32.max), minimum: 0) else {
                    check(rest.count < 4, "the broker got bytes that are not a frame at offset \(offset)")
                    return
                }
                guard rest.count >= 4 + length else { return }  // the last frame, cut short
                let frame = UnsafeRawBufferPointer(rebasing: rest[0..<(4 + length)])
                offset += 4 + length
                guard let header = try? KafkaFraming.requestHeader(frame, frameEnd: frame.count, headerVersion: { key, version in
                    KafkaMessages.apis[key]?.requestHeaderVersion(version) ?? 1
                }) else {
                    fatalError("invariant violated: the broker got a request whose header cannot be read")
                }
                check(allowedKeys.contains(header.apiKey), "the broker got a request of API \(header.apiKey), which no rule allows")
                guard let api = KafkaMessages.apis[header.apiKey], api.namesTopics else { continue }
                check(api.request.versions.contains(header.apiVersion),
                      "the broker got \(api.request.name) v\(header.apiVersion), whose topics cannot be read")
                guard let body = try? KafkaCodec.decode(api.request, version: header.apiVersion, frame, from: header.bodyOffset) else {
                    fatalError("invariant violated: the broker got a \(api.request.name) v\(header.apiVersion) that cannot be read")
                }
                let references = KafkaTopics.referenced(in: body, schema: api.request.root)
                for name in references.names {
                    check(name == "orders", "the broker got \(api.request.name) naming topic \(name)")
                }
                if !secretIDMayBeRelearned {
                    check(!references.ids.contains(secretID), "the broker got \(api.request.name) naming the secret topic's ID")
                }
            }
        }
    }
}
