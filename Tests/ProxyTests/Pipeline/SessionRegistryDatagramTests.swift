import PolicyEngine
import Testing
@testable import Proxy

/// The registry's datagram side, apart from its stream side.
@Suite struct SessionRegistryDatagramTests {
    static var context: SessionContext { SessionContext(
        identities: ConnectionIdentities(client: SocketAddress("10.0.0.1:40000")!, server: SocketAddress("10.0.0.2:53")!,
                                         source: .reserved(.world), destination: .reserved(.world)),
        policy: nil, reporter: nil) }

    @Test func aDatagramRegistrationJudgesDatagramsOnlyOfItsKind() throws {
        var registry = SessionRegistry()
        registry.register(.dns, datagram: { ToyDatagramSession(context: $0, log: ToyLog()) })
        #expect(registry.judgesDatagrams(of: .dns))
        #expect(!registry.judgesStreams(of: .dns), "a datagram session judges no TCP connection")
        #expect(!registry.judgesDatagrams(of: .kafka))
        #expect(registry.datagramSession(.kafka, context: Self.context) == nil)
        let session = try #require(registry.datagramSession(.dns, context: Self.context))
        #expect(Array("deny x".utf8).withUnsafeBytes { session.clientDatagram($0) } == .answer(Array("REFUSED".utf8)))
    }

    @Test func theStandardRegistryJudgesDNSOverUDPAndNothingElse() {
        let registry = SessionRegistry.standard(configuration: ProxyConfiguration(workers: 1, listeners: []))
        #expect(registry.judgesDatagrams(of: .dns))
        #expect(registry.datagramSession(.dns, context: Self.context) is DNSPolicySession)
        #expect(!registry.judgesDatagrams(of: .http) && !registry.judgesDatagrams(of: .kafka))
    }

    @Test func theStandardRegistryJudgesDNSOverTCP() {
        var configuration = ProxyConfiguration(workers: 1, listeners: [])
        configuration.dns.responseTimeout = 750_000_000
        let registry = SessionRegistry.standard(configuration: configuration)
        #expect(registry.judgesStreams(of: .dns))
        let session = registry.streamSession(.dns, context: Self.context)
        #expect(session is DNSStreamPolicySession)
        #expect(session?.responseTimeout == 750_000_000, "dns.responseTimeout, not the listener's")
        // Every kind the policy model knows has a stream session now (Kafka landed last);
        // none of them over UDP but DNS.
        #expect(registry.judgesStreams(of: .kafka) && registry.judgesStreams(of: .http))
        #expect(!registry.judgesDatagrams(of: .kafka) && !registry.judgesDatagrams(of: .http))
    }
}
