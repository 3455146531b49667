import PolicyEngine

/// Where DNS sessions hand what an allowed answer taught, for `toFQDNs`: the addresses a
/// name resolved to, for the endpoint that asked.
///
/// `learn` returns once the datapath holds the addresses, and a session releases the answer
/// only after it returns: a client that connects the instant it reads the answer is never
/// dropped. Implementations are called from worker threads, several at once.
public protocol FQDNLearning: AnyObject, Sendable {
    func learn(_ answer: LearnedAnswer)
    /// The names under which `endpoint` learned `address` and that have not expired (empty
    /// when none): the destination's `dnsNames` when the proxy judges a connection to it
    /// (toFQDNs with L7 rules).
    func names(learnedBy endpoint: IPAddress, for address: IPAddress) -> [String]
}

/// One allowed answer's addresses (A and AAAA), with the names they answer for.
public struct LearnedAnswer: Sendable, Equatable {
    /// The endpoint that asked (the client of the DNS flow or connection).
    public var endpoint: IPAddress
    /// The question's name, then each CNAME target along the chain from it: lower-case,
    /// without the trailing dot (`PolicyEngine.DNSName.normalize`).
    public var names: [String]
    public var addresses: [IPAddress]
    /// The smallest TTL along the chain, in seconds.
    public var ttl: UInt32
    /// When the answer arrived (`MonotonicClock.now`), to measure answer-to-map latency.
    public var received: UInt64

    public init(endpoint: IPAddress, names: [String], addresses: [IPAddress], ttl: UInt32, received: UInt64) {
        self.endpoint = endpoint
        self.names = names
        self.addresses = addresses
        self.ttl = ttl
        self.received = received
    }
}
