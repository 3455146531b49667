#if canImport(Glibc)
import Glibc
#endif
import L7Parsers
import PolicyEngine

/// Kafka under policy (`rules.kafka`), one client's connection to one broker.
///
/// Client to broker, frame by frame (`KafkaFraming`):
/// - every request's header is read (API key, version, client ID); requests of APIs whose
///   requests name topics are decoded with the generated schemas (`KafkaMessages`), in every
///   version, and their topics judged by name; topic IDs are judged by the names Metadata
///   responses taught (`KafkaTopicDirectory`); an unknown ID is denied;
/// - a produce request streams (`KafkaProduceStream`): each topic is judged when its name
///   arrives, before any of its records pass, and record data is never held. A request whose
///   first topic is denied is dropped whole and answered; one whose later topic is denied
///   after earlier records went to the broker closes both connections before the request is
///   complete (a broker acts only on whole requests, so nothing of it is written);
/// - an allowed request passes unchanged;
/// - a denied request never reaches the broker: Sluice answers it with a response of its API
///   and version carrying error 29 (TOPIC_AUTHORIZATION_FAILED) in every topic and partition,
///   or the API's top-level authorization error (`KafkaErrorResponses`); acks=0 produce
///   requests get no answer, as from a broker; the connection stays open;
/// - SASL (SaslHandshake v1+, SaslAuthenticate) passes unjudged; SaslHandshake v0, after
///   which tokens travel unframed, closes the connection;
/// - a frame that cannot be read, or over `kafka.maximumRequestBytes`, closes the connection
///   (counted in `malformedCount`, reported).
///
/// Broker to client: responses come in request order (the protocol's guarantee); each must
/// answer the oldest outstanding request (same correlation ID), else the connection closes.
/// A local answer waits behind the responses to earlier forwarded requests. Metadata
/// responses are read whole to learn topic IDs; other responses up to 64 KiB are read for
/// their error code (flow records); larger ones stream.
public final class KafkaPolicySession: L7Session {
    private let context: SessionContext
    private let settings: KafkaSettings
    private let directory: KafkaTopicDirectory
    private var policies: [ConnectionPolicy]
    private var policyVersion: UInt64
    private var identities: ConnectionIdentities
    private var recordParts = L7RecordParts()
    private let clock: () -> UInt64

    /// Requests answered or to be answered, oldest first.
    private var pending: [Pending] = []
    private var pendingHead = 0
    /// Bytes of a request already answered locally, to drop at the next request step.
    private var answeredRequestBytes = 0
    /// Bytes of a response already rewritten, to drop at the next response step.
    private var rewrittenResponseBytes = 0
    /// A request had to end the connection: once the responses owed for earlier requests
    /// are through, it closes (so that no allowed request's answer is lost).
    private var closeWhenAnswered: String?
    /// A produce request is being streamed, in `flight`.
    private var producing = false
    /// The produce request being streamed (while `producing`), in storage kept from one
    /// request to the next: a producer's steady stream of requests allocates nothing here.
    private var flight = ProduceInFlight()
    /// The last produce topic judged and its verdict, under `policyVersion` (a producer sends
    /// to the same topic again and again).
    private var lastProduceVerdict: ProduceVerdict?
    /// The last produce topic name read and its text, so that a producer sending to the same
    /// topic each time costs no allocation.
    private var lastTopic: (bytes: [UInt8], text: String) = ([], "")
    /// `KafkaMessages.ProduceRequest.schema.versions`, kept at hand (a static's accessor costs
    /// a `swift_once` each time).
    private let produceVersions = KafkaMessages.ProduceRequest.schema.versions
    /// The last client ID seen and its bytes, so that a client sending the same one each
    /// time costs no allocation.
    private var lastClientID: (bytes: [UInt8], text: String?) = ([], nil)

    public private(set) var allowedCount: UInt32 = 0
    public private(set) var deniedCount: UInt32 = 0
    public private(set) var malformedCount: UInt32 = 0

    /// Responses up to this size are read whole for their error code.
    static let readResponseBytes = 64 << 10

    struct Pending {
        var correlationID: Int32
        var apiKey: Int16
        var apiVersion: Int16
        var topic: String?
        var start: UInt64
        var direction: Direction
        var allowed: Bool
        /// The answer Sluice gives in the broker's place; nil: the broker answers.
        var answer: [UInt8]? = nil
        /// Topics removed from a Metadata request: its response gets them back with error 29.
        var deniedTopics: [String] = []
    }

    struct ProduceInFlight {
        var stream = KafkaProduceStream(version: 0, frameLength: 0)
        var header = KafkaRequestHeader(apiKey: 0, apiVersion: 0, correlationID: 0, clientID: nil, bodyOffset: 0)
        var clientID: String?
        /// Still passing (every topic so far allowed); false: dropping, to answer.
        var passing = true
        var judged = false
        var start: UInt64 = 0
        var direction = Direction.egress
        var rules: [RuleReference] = []
        var firstTopic: String?
        var deniedReason: String?
    }

    struct ProduceVerdict {
        var topic: String
        var clientID: String?
        var version: Int16
        var policyVersion: UInt64
        var allowed: Bool
        var rules: [RuleReference]
        var direction: Direction
    }

    public init(context: SessionContext, settings: KafkaSettings = KafkaSettings(), directory: KafkaTopicDirectory) {
        self.context = context
        self.settings = settings
        self.directory = directory
        identities = context.identities
        policyVersion = context.policy?.version ?? 0
        policies = context.policy?.policies(for: context.identities) ?? []
        clock = context.clock.monotonic
    }

    public var maximumMessageBytes: Int { max(settings.maximumRequestBytes, settings.maximumMetadataResponseBytes) + 4 }

    public func step(_ direction: TrafficDirection, _ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        direction == .request ? requestStep(bytes) : responseStep(bytes)
    }

    // MARK: Requests

    private func requestStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if let reason = closeWhenAnswered {
            return pendingHead == pending.count ? .close(reason: reason) : .blocked
        }
        if answeredRequestBytes > 0 {
            defer { answeredRequestBytes = 0 }
            return .drop(answeredRequestBytes)
        }
        if producing { return produceStep(bytes) }
        let length: Int
        switch KafkaFraming.frameStart(bytes, limit: settings.maximumRequestBytes, minimum: KafkaFraming.minimumRequestLength) {
        case .needMore(let minimum): return .needMore(minimumBytes: minimum)
        case .invalid(let reason): return malformed("Kafka request: \(reason)")
        case .frame(let frameLength): length = frameLength
        }
        guard bytes.count >= 6 else { return .needMore(minimumBytes: 6 - bytes.count) }
        let apiKey = Int16(bitPattern: UInt16(bytes[4]) << 8 | UInt16(bytes[5]))
        if apiKey == 0, bytes.count >= 8 {
            let version = Int16(bitPattern: UInt16(bytes[6]) << 8 | UInt16(bytes[7]))
            if produceVersions.contains(version) {
                return startProduce(bytes, version: version, length: length)
            }
        }
        let frameEnd = 4 + length
        guard bytes.count >= frameEnd else { return .needMore(minimumBytes: frameEnd - bytes.count) }
        return judgeWholeRequest(UnsafeRawBufferPointer(rebasing: bytes[0..<frameEnd]))
    }

    private func judgeWholeRequest(_ frame: UnsafeRawBufferPointer) -> SessionOperation {
        let header: KafkaRequestHeader
        do {
            header = try KafkaFraming.requestHeader(frame, frameEnd: frame.count) { key, version in
                KafkaMessages.apis[key]?.requestHeaderVersion(version) ?? 1
            }
        } catch {
            return malformed("Kafka request header: \(error.reason)")
        }
        let clientID = clientIDText(frame, header.clientID)
        let start = now()
        let api = KafkaMessages.apis[header.apiKey]
        // SASL passes unjudged (it authenticates the connection; rules judge what follows).
        if header.apiKey == 17 || header.apiKey == 36 {
            if header.apiKey == 17 && header.apiVersion == 0 {
                return malformed("Kafka SaslHandshake v0: its tokens travel unframed and cannot be judged")
            }
            enqueue(Pending(correlationID: header.correlationID, apiKey: header.apiKey, apiVersion: header.apiVersion,
                            topic: nil, start: start, direction: policies.first?.flow.direction ?? .egress, allowed: true))
            report(type: .request, verdict: .forwarded, key: header.apiKey, version: header.apiVersion,
                   correlation: header.correlationID, topic: nil, errorCode: 0, rules: [], allowed: true)
            return .pass(frame.count)
        }
        var body: KafkaStruct?
        var topics: [String] = []
        var unknownID: KafkaUUID?
        if let api, api.request.versions.contains(header.apiVersion) {
            do {
                body = try KafkaCodec.decode(api.request, version: header.apiVersion, frame, from: header.bodyOffset)
            } catch {
                return malformed("Kafka \(api.request.name) v\(header.apiVersion): \(error.reason)")
            }
            if api.namesTopics, let body {
                let references = KafkaTopics.referenced(in: body, schema: api.request.root)
                topics = references.names
                for id in references.ids {
                    if let name = directory.name(of: id) {
                        if !topics.contains(name) { topics.append(name) }
                    } else if unknownID == nil {
                        unknownID = id
                    }
                }
            }
        } else if api?.namesTopics == true {
            // A version newer than the schemas: its topics cannot be read, so it cannot be allowed.
            unknownID = KafkaUUID(high: 0, low: 0)
        }
        var (allowed, rules, direction) = judge(KafkaRequestFacts(apiKey: header.apiKey, apiVersion: header.apiVersion,
                                                                  clientID: clientID, topics: topics))
        var summary: String?
        if let unknownID {
            allowed = false
            summary = unknownID.isZero
                ? "Kafka \(KafkaAPIKeys.name(of: header.apiKey)) v\(header.apiVersion): a version whose topics Sluice cannot read"
                : "Kafka \(KafkaAPIKeys.name(of: header.apiKey)): unknown topic ID \(unknownID)"
        }
        var topic = topics.first
        if !allowed, topics.count > 1 {
            // The record names the first topic the policy refuses.
            topic = topics.first { !judge(KafkaRequestFacts(apiKey: header.apiKey, apiVersion: header.apiVersion,
                                                             clientID: clientID, topics: [$0])).allowed } ?? topic
        }
        if !allowed, !context.audit, header.apiKey == 3, unknownID == nil, let body,
           judge(KafkaRequestFacts(apiKey: 3, apiVersion: header.apiVersion, clientID: clientID, topics: [])).allowed {
            // Metadata for topics of which some are refused: the broker is asked about the others
            // only (never about a refused one, which it might create), and its answer gets the
            // refused ones back with error 29, as a broker answers topics the client may not see.
            let refused = topics.filter { !judge(KafkaRequestFacts(apiKey: 3, apiVersion: header.apiVersion,
                                                                   clientID: clientID, topics: [$0])).allowed }
            if let narrowed = KafkaErrorResponses.narrowedMetadataRequest(body, version: header.apiVersion,
                                                                          keep: { !refused.contains($0) }) {
                deniedCount &+= 1
                report(type: .request, verdict: .dropped, key: 3, version: header.apiVersion, correlation: header.correlationID,
                       topic: refused.first, errorCode: KafkaErrorResponses.topicAuthorizationFailed, rules: [], allowed: false,
                       summary: "Kafka Metadata: topics \(refused.joined(separator: ", ")) refused; the broker is asked about the others")
                var writer = KafkaWriter(capacity: frame.count)
                KafkaCodec.encode(narrowed, KafkaMessages.MetadataRequest.schema, version: header.apiVersion, into: &writer)
                var rebuilt = [UInt8](frame[0..<header.bodyOffset])
                rebuilt += writer.bytes
                let size = UInt32(rebuilt.count - 4)
                rebuilt[0] = UInt8(size >> 24)
                rebuilt[1] = UInt8(truncatingIfNeeded: size >> 16)
                rebuilt[2] = UInt8(truncatingIfNeeded: size >> 8)
                rebuilt[3] = UInt8(truncatingIfNeeded: size)
                enqueue(Pending(correlationID: header.correlationID, apiKey: 3, apiVersion: header.apiVersion, topic: refused.first,
                                start: start, direction: direction, allowed: true, deniedTopics: refused))
                answeredRequestBytes = frame.count
                return .forward(rebuilt)
            }
        }
        report(type: .request, verdict: allowed ? .forwarded : .dropped, key: header.apiKey, version: header.apiVersion,
               correlation: header.correlationID, topic: topic, errorCode: allowed ? 0 : KafkaErrorResponses.topicAuthorizationFailed,
               rules: rules, allowed: allowed, summary: summary)
        if allowed || context.audit {
            if allowed { allowedCount &+= 1 } else { deniedCount &+= 1 }
            enqueue(Pending(correlationID: header.correlationID, apiKey: header.apiKey, apiVersion: header.apiVersion,
                            topic: topic, start: start, direction: direction, allowed: allowed))
            return .pass(frame.count)
        }
        deniedCount &+= 1
        guard let api, api.request.versions.contains(header.apiVersion) else {
            // No schema for this API or version: no answer of the right shape can be made.
            return closeOnceAnswered("Kafka \(KafkaAPIKeys.name(of: header.apiKey)) v\(header.apiVersion) denied, and Sluice cannot answer that version")
        }
        let answer = KafkaErrorResponses.deniedFrame(api: api, version: header.apiVersion, correlationID: header.correlationID,
                                                     request: body ?? KafkaStruct(values: []))
        _ = rules
        rules = []
        direction = policies.first?.flow.direction ?? direction
        return answerLocally(answer, header: header, topic: topic, start: start, direction: direction, consumed: frame.count)
    }

    /// Answers a denied request in the broker's place: now when nothing is owed before it,
    /// else behind the responses owed. `consumed`: the request's bytes still to drop.
    private func answerLocally(_ answer: [UInt8], header: KafkaRequestHeader, topic: String?, start: UInt64,
                               direction: Direction, consumed: Int) -> SessionOperation {
        if pendingHead == pending.count {
            reportAnswer(key: header.apiKey, version: header.apiVersion, correlation: header.correlationID, topic: topic,
                         start: start, direction: direction)
            if consumed > 0 {
                answeredRequestBytes = consumed
            }
            return .reply(answer)
        }
        enqueue(Pending(correlationID: header.correlationID, apiKey: header.apiKey, apiVersion: header.apiVersion,
                        topic: topic, start: start, direction: direction, allowed: false, answer: answer))
        return consumed > 0 ? .drop(consumed) : .needMore(minimumBytes: 1)
    }

    // MARK: Produce

    private func startProduce(_ bytes: UnsafeRawBufferPointer, version: Int16, length: Int) -> SessionOperation {
        flight.stream.reset(version: version, frameLength: length)
        let headerVersion: Int16 = flight.stream.flexible ? 2 : 1
        let header: KafkaRequestHeader
        do {
            header = try KafkaFraming.requestHeader(bytes, frameEnd: min(bytes.count, 4 + length)) { _, _ in headerVersion }
        } catch {
            if bytes.count < 4 + length { return .needMore(minimumBytes: 1) }
            return malformed("Kafka ProduceRequest header: \(error.reason)")
        }
        flight.header = header
        flight.clientID = clientIDText(bytes, header.clientID)
        flight.passing = true
        flight.judged = false
        flight.start = now()
        flight.direction = .egress
        flight.rules = []
        flight.firstTopic = nil
        flight.deniedReason = nil
        producing = true
        return produceStep(bytes)
    }

    private func produceStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        guard producing else { return .needMore(minimumBytes: 1) }
        let piece: KafkaProduceStream.Piece
        switch flight.stream.next(bytes) {
        case .needMore(let minimum): return .needMore(minimumBytes: minimum)
        case .malformed(let reason):
            producing = false
            return malformed("Kafka \(reason)")
        case .piece(let read): piece = read
        }
        let header = flight.header
        for index in piece.topics where flight.passing || !flight.judged {
            let id = flight.stream.topicID(index)
            let name = flight.stream.topicNameBytes(index).map(topicText) ?? id.flatMap { directory.name(of: $0) }
            var (allowed, rules, direction) = judgeProduce(name, clientID: flight.clientID, version: header.apiVersion)
            if name == nil {
                allowed = false
                flight.deniedReason = "Kafka produce: unknown topic ID \(id.map(String.init(describing:)) ?? "?")"
            }
            flight.direction = direction
            if flight.firstTopic == nil { flight.firstTopic = name ?? id.map(String.init(describing:)) }
            if flight.rules.isEmpty { flight.rules = rules } else { flight.rules += rules }
            if !allowed && !context.audit {
                if flight.judged && flight.passing {
                    // Earlier records of this request went to the broker: it must not complete.
                    deniedCount &+= 1
                    report(type: .request, verdict: .dropped, key: 0, version: header.apiVersion,
                           correlation: header.correlationID, topic: name, errorCode: KafkaErrorResponses.topicAuthorizationFailed,
                           rules: [], allowed: false,
                           summary: "Kafka produce to \(name ?? "an unknown topic ID") denied after records of allowed topics of the same request were relayed: connection closed")
                    producing = false
                    return .close(reason: "Kafka produce request denied part way")
                }
                flight.passing = false
            } else if !allowed {
                flight.deniedReason = flight.deniedReason ?? "audit"
                flight.passing = true
                flight.rules = []
            }
            flight.judged = true
        }
        if !flight.judged && piece.topics.isEmpty && piece.isLast {
            flight.judged = true  // a produce request naming no topic
            let (allowed, rules, direction) = judge(KafkaRequestFacts(apiKey: 0, apiVersion: header.apiVersion,
                                                                      clientID: flight.clientID, topics: []))
            flight.passing = allowed || context.audit
            flight.rules = rules
            flight.direction = direction
        }
        let consumed = piece.structureBytes + piece.recordBytes
        let expectsAnswer = flight.stream.acks != 0
        guard piece.isLast else { return flight.passing ? .pass(consumed) : .drop(consumed) }
        producing = false
        let allowed = flight.passing && flight.deniedReason == nil
        report(type: .request, verdict: allowed ? .forwarded : .dropped, key: 0, version: header.apiVersion,
               correlation: header.correlationID, topic: flight.firstTopic,
               errorCode: allowed ? 0 : KafkaErrorResponses.topicAuthorizationFailed,
               rules: allowed ? flight.rules : [], allowed: allowed,
               summary: flight.deniedReason == "audit" ? nil : flight.deniedReason)
        if flight.passing {
            if allowed { allowedCount &+= 1 } else { deniedCount &+= 1 }
            if expectsAnswer {
                enqueue(Pending(correlationID: header.correlationID, apiKey: 0, apiVersion: header.apiVersion,
                                topic: flight.firstTopic, start: flight.start, direction: flight.direction, allowed: allowed))
            }
            return .pass(consumed)
        }
        deniedCount &+= 1
        guard expectsAnswer, let api = KafkaMessages.apis[0] else { return .drop(consumed) }
        let answer = KafkaErrorResponses.deniedFrame(api: api, version: header.apiVersion, correlationID: header.correlationID,
                                                     request: flight.stream.skeleton())
        if pendingHead == pending.count {
            reportAnswer(key: 0, version: header.apiVersion, correlation: header.correlationID, topic: flight.firstTopic,
                         start: flight.start, direction: flight.direction)
            answeredRequestBytes = consumed
            return .reply(answer)
        }
        enqueue(Pending(correlationID: header.correlationID, apiKey: 0, apiVersion: header.apiVersion,
                        topic: flight.firstTopic, start: flight.start, direction: flight.direction, allowed: false, answer: answer))
        return .drop(consumed)
    }

    // MARK: Responses

    private func responseStep(_ bytes: UnsafeRawBufferPointer) -> SessionOperation {
        if rewrittenResponseBytes > 0 {
            defer { rewrittenResponseBytes = 0 }
            return .drop(rewrittenResponseBytes)
        }
        if pendingHead < pending.count, let answer = pending[pendingHead].answer {
            let entry = dequeue()
            reportAnswer(key: entry.apiKey, version: entry.apiVersion, correlation: entry.correlationID, topic: entry.topic,
                         start: entry.start, direction: entry.direction)
            return .forward(answer)
        }
        let length: Int
        switch KafkaFraming.frameStart(bytes, limit: Int(Int32.max), minimum: 4) {
        case .needMore(let minimum): return .needMore(minimumBytes: minimum)
        case .invalid(let reason):
            malformedCount &+= 1
            return .close(reason: "Kafka response: \(reason)")
        case .frame(let frameLength): length = frameLength
        }
        guard let correlationID = KafkaFraming.responseCorrelationID(bytes) else { return .needMore(minimumBytes: 8 - bytes.count) }
        guard pendingHead < pending.count, pending[pendingHead].correlationID == correlationID else {
            malformedCount &+= 1
            return .close(reason: "Kafka response \(correlationID) answers no outstanding request")
        }
        let frameEnd = 4 + length
        if context.reporter == nil, pending[pendingHead].apiKey != 3, pending[pendingHead].apiKey != 18 {
            // Nothing to record and nothing to learn or rewrite (a plain answer to an allowed
            // request, as most are): it passes unread.
            dropHead()
            return .pass(frameEnd)
        }
        let entry = pending[pendingHead]
        let isMetadata = entry.apiKey == 3
        // Metadata (topic IDs) and ApiVersions (what clients may use) are always read; other
        // responses only for the error code a flow record carries, when records are kept.
        let reads = isMetadata ? length <= settings.maximumMetadataResponseBytes
            : (entry.apiKey == 18 || context.reporter != nil) && length <= Self.readResponseBytes
        var errorCode: Int16 = 0
        var rewritten: [UInt8]?
        if reads {
            guard bytes.count >= frameEnd else { return .needMore(minimumBytes: frameEnd - bytes.count) }
            if let api = KafkaMessages.apis[entry.apiKey], api.response.versions.contains(entry.apiVersion),
               let offset = try? KafkaFraming.responseBodyOffset(bytes, frameEnd: frameEnd,
                                                                 headerVersion: api.responseHeaderVersion(entry.apiVersion)),
               let body = try? KafkaCodec.decode(api.response, version: entry.apiVersion, bytes, from: offset, to: frameEnd) {
                errorCode = KafkaTopics.firstErrorCode(in: body, schema: api.response.root)
                if isMetadata && entry.allowed { directory.learn(KafkaTopics.learned(fromMetadataResponse: body)) }
                if entry.apiKey == 18, errorCode == 0, let restricted = KafkaAPIVersions.restricted(body) {
                    var writer = KafkaWriter(capacity: frameEnd)
                    KafkaCodec.encode(restricted, api.response, version: entry.apiVersion, into: &writer)
                    rewritten = KafkaFraming.responseFrame(correlationID: correlationID, headerVersion: 0, body: writer.bytes)
                }
                if !entry.deniedTopics.isEmpty {
                    let widened = KafkaErrorResponses.metadataResponse(body, version: entry.apiVersion, adding: entry.deniedTopics)
                    var writer = KafkaWriter(capacity: frameEnd + 64 * entry.deniedTopics.count)
                    KafkaCodec.encode(widened, api.response, version: entry.apiVersion, into: &writer)
                    rewritten = KafkaFraming.responseFrame(correlationID: correlationID,
                                                           headerVersion: api.responseHeaderVersion(entry.apiVersion), body: writer.bytes)
                    errorCode = KafkaErrorResponses.topicAuthorizationFailed
                }
            }
            if !entry.deniedTopics.isEmpty && rewritten == nil {
                malformedCount &+= 1
                return .close(reason: "Kafka Metadata response v\(entry.apiVersion) cannot be read to add the refused topics")
            }
        } else if !entry.deniedTopics.isEmpty {
            return .close(reason: "Kafka Metadata response over \(settings.maximumMetadataResponseBytes) bytes")
        }
        _ = dequeue()
        report(type: .response, verdict: entry.allowed ? .forwarded : .dropped, key: entry.apiKey, version: entry.apiVersion,
               correlation: correlationID, topic: entry.topic, errorCode: errorCode, rules: [], allowed: entry.allowed,
               latency: elapsed(since: entry.start), direction: entry.direction)
        if let rewritten {
            rewrittenResponseBytes = frameEnd
            return .forward(rewritten)
        }
        return .pass(frameEnd)
    }

    // MARK: Connection events

    public func endOfInput(_ direction: TrafficDirection, unconsumed: Int) -> SessionOperation? { nil }

    public func incompleteMessageTimedOut() -> [UInt8]? { nil }

    public func upstreamFailed(reason: String) -> [UInt8]? { nil }

    public var isAwaitingResponse: Bool {
        for index in pendingHead..<pending.count where pending[index].answer == nil { return true }
        return false
    }

    public func responseTimedOut() -> [UInt8]? { nil }

    /// Brokers hold some answers on purpose: JoinGroup until the group rebalances (up to the
    /// client's rebalance timeout, 5 minutes by default), Fetch until data comes (its
    /// `MaxWaitMs`). The listener's response timeout is for HTTP; a Kafka broker may take
    /// as long as the clients allow (kafka-python's JoinGroup waits 305 s).
    public var responseTimeout: UInt64? { 330_000_000_000 }

    public var isIdle: Bool {
        pendingHead == pending.count && !producing && answeredRequestBytes == 0 && rewrittenResponseBytes == 0
    }

    // MARK: Helpers

    private func enqueue(_ entry: Pending) {
        if pendingHead > 64 && pendingHead * 2 > pending.count {
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
        pending.append(entry)
    }

    private func dequeue() -> Pending {
        defer { dropHead() }
        return pending[pendingHead]
    }

    private func dropHead() {
        pendingHead += 1
        if pendingHead == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingHead = 0
        }
    }

    /// Ends the connection after the responses owed for earlier requests.
    private func closeOnceAnswered(_ reason: String) -> SessionOperation {
        closeWhenAnswered = reason
        return pendingHead == pending.count ? .close(reason: reason) : .blocked
    }

    private func malformed(_ reason: String) -> SessionOperation {
        malformedCount &+= 1
        report(type: .request, verdict: .error, key: -1, version: -1, correlation: -1, topic: nil, errorCode: -1, rules: [],
               allowed: false, summary: "\(reason): connection closed")
        return .close(reason: reason)
    }

    /// The time a request started, for the latency its response's record carries: without a
    /// reporter nothing reads it, and the clock is not asked.
    private func now() -> UInt64 { context.reporter == nil ? 0 : clock() }

    private func elapsed(since start: UInt64) -> UInt64? { context.reporter == nil ? nil : clock() &- start }

    /// A topic name's text (its bytes are UTF-8, checked by `KafkaProduceStream`).
    private func topicText(_ bytes: ArraySlice<UInt8>) -> String {
        if bytes.withUnsafeBytes({ Self.same($0, lastTopic.bytes) }) { return lastTopic.text }
        let text = String(decoding: bytes, as: UTF8.self)
        lastTopic = (Array(bytes), text)
        return text
    }

    /// Whether `bytes` are `known`'s bytes (one `memcmp`, not a generic element loop).
    private static func same(_ bytes: UnsafeRawBufferPointer, _ known: [UInt8]) -> Bool {
        known.withUnsafeBytes { known in
            bytes.count == known.count && (bytes.isEmpty || memcmp(bytes.baseAddress!, known.baseAddress!, bytes.count) == 0)
        }
    }

    private func clientIDText(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>?) -> String? {
        guard let range else { return nil }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[range])
        if lastClientID.text != nil, Self.same(slice, lastClientID.bytes) { return lastClientID.text }
        let text = String(decoding: slice, as: UTF8.self)
        lastClientID = (Array(slice), text)
        return text
    }

    /// `judge` for one produce topic, remembered for the next request to the same topic.
    private func judgeProduce(_ topic: String?, clientID: String?, version: Int16)
        -> (allowed: Bool, rules: [RuleReference], direction: Direction) {
        refreshPolicies()
        if let topic, let last = lastProduceVerdict, last.topic == topic, last.clientID == clientID, last.version == version,
           last.policyVersion == policyVersion {
            return (last.allowed, last.rules, last.direction)
        }
        let verdict = judge(KafkaRequestFacts(apiKey: 0, apiVersion: version, clientID: clientID, topics: topic.map { [$0] } ?? []))
        if let topic {
            lastProduceVerdict = ProduceVerdict(topic: topic, clientID: clientID, version: version, policyVersion: policyVersion,
                                                allowed: verdict.allowed, rules: verdict.rules, direction: verdict.direction)
        }
        return verdict
    }

    /// Every policy of the connection must allow the request.
    private func judge(_ facts: KafkaRequestFacts) -> (allowed: Bool, rules: [RuleReference], direction: Direction) {
        refreshPolicies()
        guard context.policy != nil else { return (true, [], .egress) }
        var deciding: [RuleReference] = []
        var direction = policies.first?.flow.direction ?? .egress
        for policy in policies {
            let verdict = policy.evaluate(kafka: facts)
            if !verdict.isAllowed { return (false, verdict.matched, policy.flow.direction) }
            deciding += verdict.matched
            direction = policy.flow.direction
        }
        return (true, deciding, direction)
    }

    private func refreshPolicies() {
        guard let policy = context.policy, !policy.isCurrent(policyVersion) else { return }
        var fresh = policy.identities(client: identities.client, server: identities.server)
        fresh.transport = identities.transport
        identities = fresh
        policies = policy.policies(for: identities)
        policyVersion = policy.version
    }

    private func reportAnswer(key: Int16, version: Int16, correlation: Int32, topic: String?, start: UInt64,
                              direction: Direction) {
        report(type: .response, verdict: .dropped, key: key, version: version, correlation: correlation, topic: topic,
               errorCode: KafkaErrorResponses.topicAuthorizationFailed, rules: [], allowed: false,
               latency: elapsed(since: start), direction: direction,
               summary: "Kafka \(KafkaAPIKeys.name(of: key)) answered by Sluice: authorization failed")
    }

    private func report(type: L7FlowType, verdict: FlowVerdict, key: Int16, version: Int16, correlation: Int32,
                        topic: String?, errorCode: Int16, rules: [RuleReference], allowed: Bool, latency: UInt64? = nil,
                        direction: Direction? = nil, summary: String? = nil) {
        guard let reporter = context.reporter else { return }
        var kafka = JSONObject(capacity: 5)
        kafka.add("error_code", .integer(Int64(errorCode)))
        kafka.add("api_version", .integer(Int64(version)))
        kafka.add("api_key", .string(key < 0 ? "unknown" : KafkaAPIKeys.name(of: key)))
        kafka.add("correlation_id", .integer(Int64(correlation)))
        if let topic { kafka.add("topic", .string(topic)) }
        let what = type == .request ? "request" : "response"
        reporter.report(FlowRecords.l7Draft(
            verdict: verdict, connection: identities, parts: &recordParts, time: context.clock.wall(),
            direction: direction ?? policies.first?.flow.direction ?? .egress, type: type, latency: latency,
            protocolName: "kafka", fields: kafka, rules: rules, allowed: allowed,
            summary: summary ?? "Kafka \(what) \(key < 0 ? "unknown" : KafkaAPIKeys.name(of: key)) v\(version)\(topic.map { " topic \($0)" } ?? "") \(verdict.rawValue.lowercased())"))
    }
}
