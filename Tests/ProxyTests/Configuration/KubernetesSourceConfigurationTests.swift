import Testing
@testable import Proxy

/// `policy.source: kubernetes` and its `policy.kubernetes` section.
@Suite struct KubernetesSourceConfigurationTests {
    private func load(_ policy: String) throws(ConfigurationError) -> ProxyConfiguration {
        try ConfigurationLoader(file: "test.yaml", defaultWorkers: 1).parse("""
            listeners:
              - {name: t, mode: transparent, listen: 127.0.0.1:15001}
            datapath: {mode: bpf, interfaces: [eth0]}
            policy: \(policy)
            """)
    }

    @Test func theKubernetesSourceNeedsNoFilesAndReadsItsSettings() throws {
        let defaults = try #require(try load("{source: kubernetes}").policy)
        #expect(defaults.kubernetes == KubernetesSourceConfiguration())
        #expect(defaults.paths.isEmpty && defaults.watchInterval == nil)
        let configured = try #require(try load("""
            {source: kubernetes, nodeAddresses: [10.0.0.1],
             kubernetes: {kubeconfig: /etc/k.yaml, context: prod, nodeName: n1, clusterName: east, syncTimeout: 5s,
                          maxObjects: 1000, maxResponseBytes: 1048576}}
            """).policy)
        let settings = try #require(configured.kubernetes)
        #expect(settings.kubeconfig == "/etc/k.yaml" && settings.context == "prod" && settings.nodeName == "n1")
        #expect(settings.clusterName == "east" && settings.syncTimeout == 5_000_000_000)
        #expect(settings.maxObjects == 1000 && settings.maxResponseBytes == 1_048_576)
        #expect(configured.nodeAddresses == ["10.0.0.1"])
        // Files stay the default source.
        #expect(try load("{paths: [p.yaml], endpoints: e.yaml}").policy?.kubernetes == nil)
        #expect(try load("{source: files, paths: [p.yaml], endpoints: e.yaml}").policy?.kubernetes == nil)
    }

    @Test(arguments: [
        ("{source: cluster}", "policy.source: expected files or kubernetes, got 'cluster'"),
        ("{source: kubernetes, paths: [p.yaml]}", "policy.paths: not with source: kubernetes"),
        ("{source: kubernetes, watch: 1s}", "policy.watch: not with source: kubernetes"),
        ("{paths: [p.yaml], endpoints: e.yaml, kubernetes: {nodeName: n}}", "policy.kubernetes: only with source: kubernetes"),
        ("{source: kubernetes, kubernetes: {node: n}}", "policy.kubernetes.node: unknown key"),
        ("{source: kubernetes, kubernetes: {syncTimeout: soon}}", "policy.kubernetes.syncTimeout: expected a duration"),
        ("{source: kubernetes, kubernetes: {maxObjects: 0}}", "policy.kubernetes.maxObjects: expected an integer from 1"),
    ])
    func mistakesAreNamedWithTheirKey(policy: String, expected: String) {
        do {
            _ = try load(policy)
            Issue.record("accepted: \(policy)")
        } catch {
            #expect(error.description.contains(expected), "\(error)")
        }
    }
}
