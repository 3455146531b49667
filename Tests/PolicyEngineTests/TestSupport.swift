import Testing
@testable import PolicyEngine

/// Loads `yaml`, failing the test on any error.
func loadPolicies(_ yaml: String, file: String = "test.yaml", options: PolicyLoadOptions = PolicyLoadOptions(),
                  sourceLocation: Testing.SourceLocation = #_sourceLocation) -> [Policy] {
    let result = PolicyLoader.load(text: yaml, file: file, options: options)
    #expect(result.errors.isEmpty, "unexpected errors: \(result.errors)", sourceLocation: sourceLocation)
    return result.policies
}

/// The single error loading `yaml` must produce.
func loadError(_ yaml: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> PolicyError? {
    let result = PolicyLoader.load(text: yaml, file: "bad.yaml")
    #expect(result.errors.count == 1, "expected one error, got \(result.errors)", sourceLocation: sourceLocation)
    #expect(result.policies.isEmpty, sourceLocation: sourceLocation)
    return result.errors.first
}

func pod(_ namespace: String, _ labels: [String: String], ip: String? = nil, ports: [NamedPort] = []) -> Identity {
    Identity.pod(namespace: namespace, labels: labels, address: ip.flatMap(IPAddress.init), namedPorts: ports)
}

func ingress(to subject: Identity, from remote: Identity, port: UInt16, _ transport: TransportProtocol = .tcp) -> FlowContext {
    FlowContext(subject: subject, direction: .ingress, remote: remote, port: port, transport: transport)
}

func egress(from subject: Identity, to remote: Identity, port: UInt16, _ transport: TransportProtocol = .tcp) -> FlowContext {
    FlowContext(subject: subject, direction: .egress, remote: remote, port: port, transport: transport)
}

/// The repository's `configs/examples` directory.
let examplesDirectory: String = {
    var components = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    components.removeLast(3)  // Tests/PolicyEngineTests/TestSupport.swift
    return components.joined(separator: "/") + "/configs/examples"
}()
