import Testing
import L7Parsers
import PolicyEngine
@testable import Proxy

/// The Kafka session through the real driver from memory (`MemoryConnection`): request
/// frames in, what reached the broker and the client out, under a real compiled policy.
@Suite struct KafkaPolicySessionTests {
    static let policy = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: kafka-egress, namespace: shop}
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
        """
    static let endpoints = """
        endpoints:
          - {ip: 10.0.0.1, namespace: shop, pod: frontend, labels: {app: frontend}}
          - {ip: 10.0.0.9, namespace: shop, pod: broker, labels: {app: broker}}
        """

    static func connection(blockSize: Int = 65536, settings: KafkaSettings = KafkaSettings(),
                           directory: KafkaTopicDirectory = KafkaTopicDirectory()) throws
        -> (MemoryConnection, KafkaPolicySession, Collector) {
        let loaded = PolicyLoader.load(text: policy, file: "policy.yaml")
        #expect(loaded.errors.isEmpty, "\(loaded.errors)")
        let snapshot = PolicySnapshot(policies: loaded.policies,
                                      endpoints: try EndpointDirectory.load(text: endpoints, file: "endpoints.yaml"))
        let worker = WorkerPolicy(holder: PolicySnapshotHolder(snapshot))
        let identities = worker.identities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.9:9092")!)
        let collector = Collector()
        let session = KafkaPolicySession(context: SessionContext(identities: identities, policy: worker, reporter: collector),
                                         settings: settings, directory: directory)
        return (MemoryConnection(session: session, blockSize: blockSize), session, collector)
    }

    /// A ProduceRequest frame: `topics` each with one partition of `recordBytes` record bytes.
    static func produce(_ topics: [String], version: Int16 = 9, correlation: Int32, acks: Int16 = 1,
                        recordBytes: Int = 16) -> [UInt8] {
        let topicData: [KafkaValue] = topics.map { name in
            .structure(KafkaStruct(values: [.string(name), .absent, .array([
                .structure(KafkaStruct(values: [.int(0), .bytes([UInt8](repeating: 0x5a, count: recordBytes))])),
            ])]))
        }
        return frame(KafkaMessages.ProduceRequest.schema, KafkaStruct(values: [.string(nil), .int(Int64(acks)), .int(1000),
                                                                               .array(topicData)]),
                     key: 0, version: version, correlation: correlation)
    }

    static func frame(_ schema: KafkaMessageSchema, _ value: KafkaStruct, key: Int16, version: Int16,
                      correlation: Int32) -> [UInt8] {
        var writer = KafkaWriter()
        KafkaCodec.encode(value, schema, version: version, into: &writer)
        return KafkaFraming.requestFrame(apiKey: key, apiVersion: version, correlationID: correlation, clientID: "test",
                                         headerVersion: KafkaMessages.apis[key]!.requestHeaderVersion(version), body: writer.bytes)
    }

    /// A broker's ProduceResponse v9 to `correlation` (no error).
    static func produceResponse(correlation: Int32, version: Int16 = 9) -> [UInt8] {
        var writer = KafkaWriter()
        KafkaCodec.encode(KafkaStruct(values: [.array([])]), KafkaMessages.ProduceResponse.schema, version: version, into: &writer)
        return KafkaFraming.responseFrame(correlationID: correlation, headerVersion: 1, body: writer.bytes)
    }

    /// The response frames in `stream`: (correlation ID, decoded ProduceResponse error codes).
    static func produceAnswers(_ stream: [UInt8], version: Int16 = 9) throws -> [(Int32, [Int16])] {
        var answers: [(Int32, [Int16])] = []
        var offset = 0
        while offset + 4 <= stream.count {
            let length = Int(stream[offset]) << 24 | Int(stream[offset + 1]) << 16 | Int(stream[offset + 2]) << 8 | Int(stream[offset + 3])
            let frame = Array(stream[offset..<(offset + 4 + length)])
            let body = try frame.withUnsafeBytes { bytes throws(KafkaCodecError) in
                let start = try KafkaFraming.responseBodyOffset(bytes, frameEnd: bytes.count, headerVersion: 1)
                return try KafkaCodec.decode(KafkaMessages.ProduceResponse.schema, version: version, bytes, from: start)
            }
            var codes: [Int16] = []
            if case .array(let topics?) = body.values[0] {
                for case .structure(let topic?) in topics {
                    if case .array(let partitions?) = topic.values[2] {
                        for case .structure(let partition?) in partitions {
                            if case .int(let code) = partition.values[1] { codes.append(Int16(code)) }
                        }
                    }
                }
            }
            answers.append((frame.withUnsafeBytes { KafkaFraming.responseCorrelationID($0)! }, codes))
            offset += 4 + length
        }
        return answers
    }

    @Test func allowedPassesWholeAndDeniedIsAnsweredWithError29() throws {
        var (connection, session, collector) = try Self.connection()
        let allowed = Self.produce(["orders"], correlation: 1)
        let denied = Self.produce(["secrets"], correlation: 2)
        connection.clientSends(allowed)
        connection.serverSends(Self.produceResponse(correlation: 1))
        connection.clientSends(denied)
        #expect(connection.deliveredToServer == allowed, "the denied request never reached the broker")
        let answers = try Self.produceAnswers(connection.deliveredToClient)
        #expect(answers.map(\.0) == [1, 2])
        #expect(answers[1].1 == [29])
        #expect(connection.closedReason == nil)
        #expect(session.allowedCount == 1 && session.deniedCount == 1)
        let kafka = collector.records.compactMap { $0.serialized().contains("\"kafka\"") ? $0.serialized() : nil }
        #expect(kafka.contains { $0.contains("\"topic\":\"secrets\"") && $0.contains("\"error_code\":29") && $0.contains("DROPPED") })
    }

    @Test func aLocalAnswerWaitsBehindEarlierResponses() throws {
        var (connection, _, _) = try Self.connection()
        connection.clientSends(Self.produce(["orders"], correlation: 1) + Self.produce(["secrets"], correlation: 2)
            + Self.produce(["orders"], correlation: 3))
        #expect(connection.deliveredToClient.isEmpty, "the answer to 2 waits for the broker's answer to 1")
        connection.serverSends(Self.produceResponse(correlation: 1))
        #expect(try Self.produceAnswers(connection.deliveredToClient).map(\.0) == [1, 2])
        connection.serverSends(Self.produceResponse(correlation: 3))
        #expect(try Self.produceAnswers(connection.deliveredToClient).map(\.0) == [1, 2, 3])
    }

    @Test func everySplitOfTheStreamGivesTheSameBytes() throws {
        let stream = Self.produce(["orders"], correlation: 1) + Self.produce(["secrets"], correlation: 2, acks: 0)
            + Self.produce(["secrets", "orders"], correlation: 3) + Self.produce(["orders"], correlation: 4)
        func run(_ cuts: [Int]) throws -> ([UInt8], [UInt8], String?) {
            var (connection, _, _) = try Self.connection(blockSize: 64)
            var start = 0
            for cut in cuts + [stream.count] {
                connection.clientSends(stream[start..<cut])
                start = cut
            }
            return (connection.deliveredToServer, connection.deliveredToClient, connection.closedReason)
        }
        let whole = try run([])
        #expect(whole.0 == Self.produce(["orders"], correlation: 1) + Self.produce(["orders"], correlation: 4))
        #expect(whole.2 == nil)
        for offset in 0...stream.count {
            let split = try run([offset])
            #expect(split.0 == whole.0 && split.1 == whole.1 && split.2 == nil, "split at \(offset)")
        }
        let bytewise = try run(Array(1..<stream.count))
        #expect(bytewise.0 == whole.0 && bytewise.1 == whole.1)
    }

    @Test func produceRecordsStreamBeforeTheRequestIsWhole() throws {
        var (connection, _, _) = try Self.connection(blockSize: 4096)
        let request = Self.produce(["orders"], correlation: 1, recordBytes: 300_000)
        connection.clientSends(request[..<150_000])
        #expect(connection.deliveredToServer.count > 100_000, "records pass as they come once the topic is judged")
        connection.clientSends(request[150_000...])
        #expect(connection.deliveredToServer == request)
    }

    @Test func aDeniedLaterTopicAfterStreamedRecordsClosesBeforeTheRequestCompletes() throws {
        var (connection, _, _) = try Self.connection()
        let request = Self.produce(["orders", "secrets"], correlation: 1)
        connection.clientSends(request)
        #expect(connection.deliveredToServer.count < request.count, "the broker never gets the whole request")
        #expect(connection.closedReason != nil)
    }

    @Test func hostileFramesCloseAndReachNothing() throws {
        var settings = KafkaSettings()
        settings.maximumRequestBytes = 4096
        let hostile: [[UInt8]] = [
            [0xff, 0xff, 0xff, 0xfb],  // negative size
            [0, 0, 0x40, 0] + [UInt8](repeating: 0, count: 32),  // over the limit
            [0, 0, 0, 12, 0, 3, 0, 12, 0, 0, 0, 1, 0, 200, 0x61, 0x62],  // client ID past the frame
            [0, 0, 0, 30, 0, 0, 0, 3, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 3, 0xe8, 0x7f, 0xff, 0xff, 0xff]
                + [UInt8](repeating: 0, count: 8),  // Produce v3 claiming 2^31-1 topics
            Self.produce(["orders"], correlation: 9).enumerated().map { $0.offset == 3 ? $0.element &- 5 : $0.element },  // records past the frame
        ]
        for bytes in hostile {
            var (connection, session, _) = try Self.connection(settings: settings)
            connection.clientSends(bytes)
            connection.clientCloses()
            #expect(connection.deliveredToServer.isEmpty, "\(bytes.prefix(16))")
            #expect(connection.closedReason != nil && connection.deliveredToClient.isEmpty && session.malformedCount == 1)
        }
    }

    /// fuzz-kafka found it (Fuzz/Corpus/kafka/regression-produce-tags-out-of-order): the
    /// produce stream skipped tagged fields in any order, the codec (and KIP-482) wants them
    /// in increasing order, so the broker got a request Sluice's own codec cannot read. Now
    /// the stream refuses it like the codec: the connection closes before the request is
    /// whole (its records already streamed; a broker acts only on whole requests).
    @Test func produceTaggedFieldsOutOfOrderCloseBeforeTheRequestIsWhole() throws {
        var frame = Self.produce(["orders"], correlation: 1)
        // The partition's tagged fields are the third byte from the end (then the topic's
        // and the request's): two tags, 5 then 1, each empty.
        frame.replaceSubrange((frame.count - 3)..<(frame.count - 2), with: [2, 5, 0, 1, 0])
        let size = UInt32(frame.count - 4)
        frame.replaceSubrange(0..<4, with: [UInt8(size >> 24), UInt8(size >> 16 & 0xff), UInt8(size >> 8 & 0xff), UInt8(size & 0xff)])
        var (connection, session, _) = try Self.connection()
        connection.clientSends(frame)
        #expect(connection.closedReason != nil && session.malformedCount == 1)
        #expect(connection.deliveredToServer.count < frame.count, "never the whole request")
        #expect(connection.deliveredToClient.isEmpty)
    }

    /// fuzz-kafka found it (Fuzz/Corpus/kafka/regression-produce-records-to-the-frame-end): a
    /// ProduceRequest claiming 8 partitions whose first one's records reach the frame's end.
    /// The records streamed, so the broker got a whole request that ends inside its own
    /// structure. Now records must leave room for what the request still has to say.
    @Test func recordsThatLeaveNoRoomForTheRestOfTheRequestReachNothing() throws {
        var frame = Self.produce(["orders"], version: 3, correlation: 1)
        // v3: size, key, version, correlation, client ID "test", null transactional ID, acks,
        // timeout, one topic "orders", then its partition count (int32) at 38..<42.
        #expect(frame[38..<42] == [0, 0, 0, 1])
        frame[41] = 8
        var (connection, session, _) = try Self.connection()
        connection.clientSends(frame)
        #expect(connection.closedReason != nil && session.malformedCount == 1)
        #expect(connection.deliveredToServer.isEmpty)
    }

    @Test func topicIDsAreJudgedByNamesLearnedFromMetadata() throws {
        let directory = KafkaTopicDirectory()
        let orders = KafkaUUID(high: 1, low: 2)
        // Fetch v13 naming "orders" by ID: unknown at first, so denied.
        let fetchSchema = KafkaMessages.FetchRequest.schema
        var fetch = KafkaStruct(values: [])
        let topicsIndex = fetchSchema.root.index(of: "Topics")!
        guard case .array(.structure(let topicSchema)) = fetchSchema.root.fields[topicsIndex].type else { Issue.record(); return }
        var topic = KafkaStruct(values: [KafkaValue](repeating: .absent, count: topicSchema.fields.count))
        topic.values[topicSchema.index(of: "TopicId")!] = .uuid(orders)
        topic.values[topicSchema.index(of: "Partitions")!] = .array([])
        fetch.values = [KafkaValue](repeating: .absent, count: fetchSchema.root.fields.count)
        fetch.values[topicsIndex] = .array([.structure(topic)])
        let request = Self.frame(fetchSchema, fetch, key: 1, version: 13, correlation: 5)
        var (connection, _, _) = try Self.connection(directory: directory)
        connection.clientSends(request)
        #expect(connection.deliveredToServer.isEmpty)
        #expect(!connection.deliveredToClient.isEmpty, "answered in the broker's place")
        directory.learn([(orders, "orders")])
        var (second, _, _) = try Self.connection(directory: directory)
        second.clientSends(request)
        #expect(second.deliveredToServer == request)
    }
}
