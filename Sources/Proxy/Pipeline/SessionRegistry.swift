import L7Parsers
import PolicyEngine

/// What a protocol's session is told about the connection (or UDP exchange) it judges.
public struct SessionContext {
    /// Both ends, as the current policy knows them (transport included).
    public var identities: ConnectionIdentities
    /// The worker's view of the policy; nil without a policy section (every message allowed).
    public var policy: WorkerPolicy?
    /// Where the session's flow records go; nil when nothing reads them.
    public var reporter: L7FlowReporter?
    /// Judge and report, change nothing: a denied message is reported `DROPPED` and still
    /// relayed as it was, so that recorded traffic replayed through the session stays in step
    /// with what the recorded server answered (`sluice replay`). Off in the live proxy.
    public var audit: Bool
    /// The clocks for latencies, timeouts and record times: the system's live, the
    /// capture's in a replay.
    public var clock: SessionClock

    public init(identities: ConnectionIdentities, policy: WorkerPolicy?, reporter: L7FlowReporter?, audit: Bool = false,
                clock: SessionClock = .system) {
        self.identities = identities
        self.policy = policy
        self.reporter = reporter
        self.audit = audit
        self.clock = clock
    }
}

/// The protocols this proxy can judge, keyed by the L7 kind the compiled policy names for a
/// (peer, port): adding a protocol is a folder with its session plus one `register` line in
/// `standard(configuration:)`.
///
/// A kind with no session registered for the connection's transport is not relayed open:
/// the worker refuses the connection (or drops the datagram) and reports why.
public struct SessionRegistry: Sendable {
    /// Makes the session of one connection (or UDP flow); called on the worker thread that
    /// owns it.
    public typealias StreamFactory = @Sendable (SessionContext) -> L7Session
    public typealias DatagramFactory = @Sendable (SessionContext) -> L7DatagramSession

    /// Where DNS sessions hand allowed answers (toFQDNs), and where the worker asks which
    /// names a destination was learned under.
    public private(set) var learner: FQDNLearning?
    private var streamFactories: [L7Protocol: StreamFactory] = [:]
    private var datagramFactories: [L7Protocol: DatagramFactory] = [:]

    /// An empty registry: every L7 kind fails closed.
    public init() {}

    /// Registers how connections carrying `kind` over TCP are judged (replacing an earlier
    /// registration of the same kind).
    public mutating func register(_ kind: L7Protocol, stream factory: @escaping StreamFactory) {
        streamFactories[kind] = factory
    }

    /// A new session for a TCP connection carrying `kind`; nil when no protocol is registered
    /// for it (the connection must be refused).
    public func streamSession(_ kind: L7Protocol, context: SessionContext) -> L7Session? {
        streamFactories[kind].map { $0(context) }
    }

    /// Whether TCP connections carrying `kind` can be judged.
    public func judgesStreams(of kind: L7Protocol) -> Bool { streamFactories[kind] != nil }

    /// Registers how UDP flows carrying `kind` are judged, datagram by datagram (replacing an
    /// earlier registration of the same kind).
    public mutating func register(_ kind: L7Protocol, datagram factory: @escaping DatagramFactory) {
        datagramFactories[kind] = factory
    }

    /// A new session for a UDP flow carrying `kind`; nil when no protocol is registered for
    /// it (the flow's datagrams must be dropped).
    public func datagramSession(_ kind: L7Protocol, context: SessionContext) -> L7DatagramSession? {
        datagramFactories[kind].map { $0(context) }
    }

    /// Whether UDP flows carrying `kind` can be judged.
    public func judgesDatagrams(of kind: L7Protocol) -> Bool { datagramFactories[kind] != nil }

    /// The protocols Sluice ships, set up from the configuration. `learner` receives the
    /// addresses of allowed DNS answers (toFQDNs); nil when nothing enforces them.
    public static func standard(configuration: ProxyConfiguration, learner: FQDNLearning? = nil) -> SessionRegistry {
        var registry = SessionRegistry()
        registry.learner = learner
        // A head larger than one buffer block is held whole by the driver (up to the limits'
        // sum): the limits are HTTP's, not the buffer's.
        let httpLimits = HTTP1Limits.standard
        let httpSettings = configuration.http
        // One port, both versions: the client's first bytes choose (HTTP/2 prior knowledge or HTTP/1.1).
        let http2Limits = HTTP2Limits.standard
        registry.register(.http, stream: { context in
            HTTPVersionDetectingSession(
                http1: {
                    HTTPPolicySession(limits: httpLimits, settings: httpSettings, policy: context.policy,
                                      identities: context.identities, reporter: context.reporter, audit: context.audit,
                                      clock: context.clock.monotonic, wallClock: context.clock.wall)
                },
                http2: {
                    HTTP2PolicySession(limits: http2Limits, settings: httpSettings, policy: context.policy,
                                       identities: context.identities, reporter: context.reporter, audit: context.audit,
                                       clock: context.clock.monotonic, wallClock: context.clock.wall)
                })
        })
        let deniedRCode = configuration.dns.deniedAnswer == .nameError ? DNSAnswers.nameError : DNSAnswers.refused
        let dnsResponseTimeout = configuration.dns.responseTimeout
        registry.register(.dns, datagram: { context in
            DNSPolicySession(context: context, deniedRCode: deniedRCode, responseTimeout: dnsResponseTimeout,
                             learner: learner)
        })
        registry.register(.dns, stream: { context in
            DNSStreamPolicySession(context: context, deniedRCode: deniedRCode, responseTimeout: dnsResponseTimeout,
                                   learner: learner)
        })
        // Kafka: topic IDs learned from Metadata responses on any connection judge requests on all.
        let kafkaSettings = configuration.kafka
        let kafkaTopics = KafkaTopicDirectory()
        registry.register(.kafka, stream: { context in
            KafkaPolicySession(context: context, settings: kafkaSettings, directory: kafkaTopics)
        })
        return registry
    }
}
