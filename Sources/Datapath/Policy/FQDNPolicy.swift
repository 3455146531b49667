import PolicyEngine

/// What a learned address allows one endpoint identity for one port and protocol: the
/// datapath's toFQDNs entry. Port 0 stands for every port without an entry of its own.
public struct LearnedGrant: Hashable, Sendable {
    public var port: UInt16
    public var ipProtocol: UInt8
    public var entry: PolicyEntry

    public init(port: UInt16, ipProtocol: UInt8, entry: PolicyEntry) {
        self.port = port
        self.ipProtocol = ipProtocol
        self.entry = entry
    }
}

/// The toFQDNs half of the translation: which local endpoint an address is, and what an
/// address learned under some names lets that endpoint reach.
///
/// As for the rest of the datapath, the policy engine is the only judge: the grants are its
/// answers, for every port any policy can tell apart, to "may this endpoint reach a world
/// address known by these names?" Only answers that allow are kept; the programs consult
/// them where the endpoint's egress would otherwise drop by default, so explicit denies
/// still win.
public struct FQDNPolicy: Sendable {
    public let snapshot: PolicySnapshot
    private let translation: PolicyTranslation
    /// Local endpoints by address (IPv4 and IPv6): the numeric identity the datapath uses
    /// for it, and the identity the policy sees.
    private let endpoints: [IPAddress: (number: UInt32, identity: Identity)]
    private let probes: [(TransportProtocol, [PolicyTranslation.PortProbe])]
    /// Every distinct toFQDNs matcher of the policies.
    private let matchers: [DNSMatcher]

    /// `state` is the translation of `snapshot` (for the numeric identities of endpoints).
    public init(snapshot: PolicySnapshot, state: DatapathState, proxyPorts: PolicyTranslation.ProxyPorts) {
        self.snapshot = snapshot
        translation = PolicyTranslation(snapshot: snapshot, nodeAddresses: [], proxyPorts: proxyPorts)
        var endpoints: [IPAddress: (number: UInt32, identity: Identity)] = [:]
        var namedPorts: [NamedPort] = []
        for (prefix, identity) in snapshot.endpoints.entries where identity.isClusterEndpoint {
            guard prefix.prefixLength == prefix.network.bitWidth else { continue }
            let entry: AddressEntry?
            if prefix.network.family == .ipv4 {
                entry = state.addresses[IPv4Prefix(address: UInt32(truncatingIfNeeded: prefix.network.low), length: 32)]
            } else {
                entry = IPv6Prefix(prefix).flatMap { state.addresses6[$0] }
            }
            guard let entry, entry.isLocalEndpoint else { continue }
            endpoints[prefix.network] = (entry.identity, identity)
            namedPorts += identity.namedPorts
        }
        self.endpoints = endpoints
        probes = translation.portProbes(namedPorts: namedPorts)
        var matchers: [DNSMatcher] = []
        var seen = Set<String>()
        for policy in snapshot.policies {
            for rule in policy.rules {
                for peerRule in rule.egress + rule.egressDeny {
                    for case .fqdn(let matcher) in peerRule.peers ?? [] where seen.insert(matcher.text).inserted {
                        matchers.append(matcher)
                    }
                }
            }
        }
        self.matchers = matchers
    }

    /// Which toFQDNs matchers some of `names` match: names with the same signature get the
    /// same grants (nothing else in a policy looks at names), so grants can be remembered
    /// per signature instead of per name, and a stream of fresh names costs a few pattern
    /// matches each, not a policy evaluation.
    public func signature(of names: [String]) -> [Bool] {
        matchers.map { matcher in names.contains { matcher.matches($0) } }
    }

    /// The local endpoint at `address`: its numeric identity and policy identity.
    public func endpoint(at address: IPAddress) -> (number: UInt32, identity: Identity)? {
        endpoints[address]
    }

    /// Whether `address` is outside the cluster (toFQDNs selects only those, as CIDR rules do).
    public func isWorld(_ address: IPAddress) -> Bool {
        // Most answers name addresses the endpoints file does not: no identity to build.
        !snapshot.endpoints.knows(address) || snapshot.endpoints.identity(for: address).isWorld
    }

    /// Whether any policy has a toFQDNs peer (nothing to learn otherwise).
    public var hasFQDNPeers: Bool { !matchers.isEmpty }

    /// What an address learned under `names` lets `identity` reach, and the rule that
    /// allowed it (empty when nothing: the names match no toFQDNs rule of this endpoint).
    public func grants(for identity: Identity, names: [String]) -> (grants: [LearnedGrant], rule: String?) {
        let remote = Identity.reserved(.world, dnsNames: names)
        let unnamed = Identity.reserved(.world)
        var grants: [LearnedGrant] = []
        var rule: String?
        for (transport, ports) in probes {
            guard let ipProtocol = PolicyTranslation.ipProtocol(transport) else { continue }
            var answers: [(port: UInt16, entry: PolicyEntry?)] = []
            for probe in ports {
                let flow = FlowContext(subject: identity, direction: .egress, remote: remote, port: probe.probe, transport: transport)
                let verdict = snapshot.evaluate(flow: flow)
                // Only what the names add: a flow allowed without them needs no entry.
                guard verdict.isAllowed, !snapshot.evaluate(flow: FlowContext(subject: identity, direction: .egress, remote: unnamed,
                                                                              port: probe.probe, transport: transport)).isAllowed else {
                    answers.append((probe.key, nil))
                    continue
                }
                rule = rule ?? verdict.matched.first?.description
                if let proxyPort = translation.redirectPort(flow, transport: transport) {
                    answers.append((probe.key, PolicyEntry(action: .redirect, proxyPort: proxyPort)))
                } else {
                    answers.append((probe.key, PolicyEntry(action: .allow)))
                }
            }
            // Port 0 decides for ports without an entry; a listed port that differs gets one
            // (a deny entry where "every other port" is allowed but this one is not).
            let other = answers.first { $0.port == 0 }?.entry
            for answer in answers where answer.port == 0 ? other != nil : answer.entry != other {
                grants.append(LearnedGrant(port: answer.port, ipProtocol: ipProtocol,
                                           entry: answer.entry ?? PolicyEntry(action: .deny)))
            }
        }
        return (grants, rule)
    }
}
