import Testing
@testable import Proxy

@Suite struct ConfigurationLoaderTests {
    private func load(_ text: String) throws(ConfigurationError) -> ProxyConfiguration {
        try ConfigurationLoader(file: "test.yaml", defaultWorkers: 3).parse(text)
    }

    /// Issue 15 item 2: with a datapath, upstream legs leave from the client's address (and
    /// port, in BPF mode); `datapath.originalSource: false` and mode `none` use the node's.
    @Test func upstreamLegsKeepTheClientsAddressUnlessTurnedOff() throws {
        func source(_ datapath: String) throws -> UpstreamSource {
            try load("""
                listeners:
                  - {name: t, mode: transparent, listen: 127.0.0.1:15001}
                datapath: {\(datapath)}
                policy: {paths: [p.yaml], endpoints: e.yaml}
                """).datapath.upstreamSource
        }
        #expect(try source("mode: bpf, interfaces: [ep1]") == .clientAddressAndPort)
        #expect(try source("mode: nftables, interfaces: [ep1]") == .clientAddress)
        #expect(try source("mode: auto, interfaces: [ep1]") == .clientAddress)
        #expect(try source("mode: bpf, interfaces: [ep1], originalSource: false") == .node)
        #expect(try source("mode: none") == .node)
        #expect(throws: ConfigurationError.self) { try source("mode: bpf, interfaces: [ep1], originalSource: maybe") }
    }

    @Test func readsAFullConfiguration() throws {
        let configuration = try load("""
            workers: 2
            proxyMark: 0xb00
            listeners:
              - name: web
                mode: explicit
                listen: 127.0.0.1:15080
                upstream: 127.0.0.1:8080
              - name: redirect
                mode: transparent
                listen: "[::1]:15001"
                backlog: 64
              - name: dns
                mode: transparent
                protocol: udp
                listen: 127.0.0.1:15053
            timeouts: {connect: 250ms, idle: 2m, header: 10s, drain: 0s, udpIdle: 1h}
            limits: {bufferBytes: 16KiB, maxConnectionsPerWorker: 100, maxDatagramBytes: 4096}
            flowLog: {sink: file, path: /tmp/flows.json}
            """)
        #expect(configuration.workers == 2)
        #expect(configuration.proxyMark == 0xb00)
        #expect(configuration.listeners.map(\.name) == ["web", "redirect", "dns"])
        #expect(configuration.listeners[0].kind == .explicit(upstream: SocketAddress("127.0.0.1:8080")!))
        #expect(configuration.listeners[1].kind == .transparentTCP)
        #expect(configuration.listeners[1].backlog == 64)
        #expect(configuration.listeners[2].kind == .transparentUDP)
        #expect(configuration.timeouts.connect == 250_000_000)
        #expect(configuration.timeouts.idle == 120_000_000_000)
        #expect(configuration.timeouts.drain == 0)
        #expect(configuration.timeouts.udpIdle == 3_600_000_000_000)
        #expect(configuration.timeouts.message == 10_000_000_000, "timeouts.header is the older name of timeouts.message")
        #expect(configuration.limits.bufferBytes == 16_384)
        #expect(configuration.limits.maxConnectionsPerWorker == 100)
        #expect(configuration.flowLog.sink == .file(path: "/tmp/flows.json"))
    }

    @Test func aDeniedDNSQueryIsAnsweredAsConfigured() throws {
        let listeners = "listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
        #expect(try load(listeners).dns.deniedAnswer == .refused)
        #expect(try load("dns: {deniedAnswer: nameError}\n" + listeners).dns.deniedAnswer == .nameError)
        #expect(throws: ConfigurationError.self) { try load("dns: {deniedAnswer: drop}\n" + listeners) }
    }

    @Test func learnedAddressLifetimesAndCapsAreConfigured() throws {
        let listeners = "listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
        let defaults = try load(listeners).fqdn
        #expect(defaults == FQDNSettings())
        #expect(defaults.minimumTTL == 60 && defaults.grace == 10_000_000_000 && defaults.stateFile == "/var/lib/sluice/fqdn.json")
        let set = try load("fqdn: {minimumTTL: 0, grace: 0s, maximumAddressesPerName: 5, maximumAddressesPerEndpoint: 100, "
                           + "maximumAddresses: 1000, stateFile: none}\n" + listeners).fqdn
        #expect(set.minimumTTL == 0 && set.grace == 0 && set.maximumAddressesPerName == 5)
        #expect(set.maximumAddressesPerEndpoint == 100 && set.maximumAddresses == 1_000 && set.stateFile == nil)
        for (text, key) in [("fqdn: {minimumTTL: -1}", "fqdn.minimumTTL"), ("fqdn: {maximumAddresses: 0}", "fqdn.maximumAddresses"),
                            ("fqdn: {maximumAddresses: 100000}", "fqdn.maximumAddresses"), ("fqdn: {grace: soon}", "fqdn.grace"),
                            ("fqdn: {stateFile: ''}", "fqdn.stateFile"), ("fqdn: {ttl: 3}", "fqdn.ttl")] {
            let error = #expect(throws: ConfigurationError.self) { try load(text + "\n" + listeners) }
            #expect(error.map { "\($0)".contains(key) } == true, "\(text): \(String(describing: error))")
        }
    }

    @Test func theDNSResponseTimeoutIsRead() throws {
        let listeners = "listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
        #expect(try load(listeners).dns.responseTimeout == 5_000_000_000)
        #expect(try load("dns: {responseTimeout: 1500ms}\n" + listeners).dns.responseTimeout == 1_500_000_000)
        do {
            _ = try load("dns: {responseTimeout: soon}\n" + listeners)
            Issue.record("a bad duration must be rejected")
        } catch {
            #expect("\(error)".contains("dns.responseTimeout"), "\(error)")
        }
    }

    @Test func theIncompleteMessageTimeoutIsTimeoutsMessage() throws {
        let configuration = try load("""
            timeouts: {message: 750ms}
            listeners:
              - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}
            """)
        #expect(configuration.timeouts.message == 750_000_000)
    }

    @Test func defaultsApplyWhenKeysAreAbsent() throws {
        let configuration = try load("""
            listeners:
              - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}
            """)
        #expect(configuration.workers == 3, "workers defaults to the number of cores given by the caller")
        #expect(configuration.proxyMark == 0xa00)
        #expect(configuration.timeouts == Timeouts())
        #expect(configuration.limits == Limits())
        #expect(configuration.flowLog.sink == .stdout)
    }

    /// Each bad file must name the line, column and key path, and say what was expected.
    @Test(arguments: [
        ("listeners:\n  - name: a\n    mode: explicit\n    listen: 127.0.0.1:1\n    upstream: localhost:80\n",
         "test.yaml:5:15: listeners[0].upstream: expected a numeric address with a port"),
        ("listeners:\n  - name: a\n    mode: explicit\n    listen: 127.0.0.1:1\n",
         "test.yaml:2:5: listeners[0].upstream: missing; an explicit listener needs an upstream"),
        ("workers: 0\nlisteners: []\n", "test.yaml:1:10: workers: expected an integer from 1 to 256, got 0"),
        ("listners:\n  - name: a\n", "test.yaml:1:1: listners: unknown key; expected one of workers, proxyMark, listeners"),
        ("listeners: []\n", "test.yaml:1:12: listeners: expected a non-empty list of listeners"),
        ("timeouts: {connect: soon}\nlisteners: []\n", "test.yaml:1:21: timeouts.connect: expected a duration such as 250ms"),
        ("limits: {bufferBytes: 12}\nlisteners: []\n", "test.yaml:1:23: limits.bufferBytes: expected a size from 1024 to"),
        ("listeners:\n  - {name: a, mode: magic, listen: 127.0.0.1:1}\n", "test.yaml:2:21: listeners[0].mode: expected 'explicit' or 'transparent', got 'magic'"),
        ("listeners:\n  - {name: a, mode: transparent, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n",
         "listeners[0].upstream: not allowed in transparent mode"),
        ("listeners:\n  - {name: a, mode: explicit, protocol: udp, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n",
         "listeners[0].protocol: explicit listeners relay TCP only"),
        ("listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:1}\n",
         "listeners[0].upstream: is the listener's own address"),
        ("listeners:\n  - {name: a, mode: transparent, listen: 127.0.0.1:1}\n  - {name: a, mode: transparent, listen: 127.0.0.1:2}\n",
         "test.yaml:3:12: listeners[1].name: duplicate listener name 'a'"),
        ("flowLog: {sink: file}\nlisteners: []\n", "flowLog.path: missing; the 'file' sink needs a path"),
        ("listeners:\n  - name: [a\n", "test.yaml:3:1: not valid YAML"),
        ("", "test.yaml:1:1: the file is empty"),
        ("- 1\n- 2\n", "test.yaml:1:1: expected a mapping of keys"),
        ("http: {allowedUpgrades: [websocket, h2c]}\nlisteners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n",
         "test.yaml:1:37: http.allowedUpgrades[1]: h2c cannot be allowed"),
        ("http: {normalizePaths: maybe}\nlisteners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n", "test.yaml:1:24: http.normalizePaths: expected true or false, got 'maybe'"),
        ("http: {allowedUpgrades: websocket}\nlisteners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n", "http.allowedUpgrades: expected a list of upgrade protocol names"),
        ("timeouts: {response: 0s}\nlisteners: []\n", "timeouts.response: expected a duration"),
        ("policy: {paths: [p.yaml], endpoints: e.yaml, node: Node_1}\nlisteners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n",
         "test.yaml:1:52: policy.node: expected a node name (lowercase letters, digits, '-' and '.'), as the endpoints file's node fields, got 'Node_1'"),
    ])
    func badFilesAreRejectedWithAPreciseMessage(text: String, expected: String) {
        do {
            _ = try load(text)
            Issue.record("accepted a bad configuration: \(text)")
        } catch {
            #expect(error.description.contains(expected), "got: \(error.description)")
        }
    }

    /// Issue 15 item 3: which node of the endpoints file this sluice runs on.
    @Test func thePolicyNodeIsRead() throws {
        let configuration = try load("policy: {paths: [p.yaml], endpoints: e.yaml, node: node2.lab}\nlisteners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n")
        #expect(configuration.policy?.node == "node2.lab")
        #expect(try load("policy: {paths: [p.yaml], endpoints: e.yaml}\nlisteners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n").policy?.node == nil)
    }

    @Test func aMissingFileIsReportedByName() {
        do {
            _ = try ConfigurationLoader(file: "/nonexistent/sluice.yaml", defaultWorkers: 1).load()
            Issue.record("a missing file must fail")
        } catch {
            #expect(error.description == "/nonexistent/sluice.yaml: cannot read the file (missing or not readable)")
        }
    }

    @Test func httpSettingsAndTheResponseTimeoutAreRead() throws {
        let configuration = try load("""
            http: {normalizePaths: false, allowedUpgrades: [WebSocket, my-proto]}
            timeouts: {response: 2s}
            listeners:
              - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}
            """)
        #expect(configuration.http.normalizePaths == false)
        #expect(configuration.http.allowedUpgrades == ["websocket", "my-proto"])
        #expect(configuration.timeouts.response == 2_000_000_000)
        #expect(configuration.limits.maxConnectionsPerWorker == nil, "derived from the descriptor limit at start")
        #expect(Limits.connectionsPerWorker(descriptorLimit: 20_000, workers: 2) == 4_984)
    }

    @Test func metricsAndTheControlSocketAreRead() throws {
        let listeners = "listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
        let defaults = try load(listeners)
        #expect(defaults.metrics.listen == nil, "no metrics endpoint unless configured")
        #expect(defaults.control.socket == "/run/sluice/sluice.sock" && defaults.control.flowRing == 4096)
        let set = try load("metrics: {listen: 127.0.0.1:9965}\ncontrol: {socket: /tmp/s.sock, flowRing: 100}\n" + listeners)
        #expect(set.metrics.listen == SocketAddress("127.0.0.1:9965"))
        #expect(set.control.socket == "/tmp/s.sock" && set.control.flowRing == 100)
        #expect(try load("control: {socket: none}\nmetrics: {listen: none}\n" + listeners).control.socket == nil)
        let long = "/tmp/" + String(repeating: "x", count: 120)
        for (text, key) in [("metrics: {listen: localhost}", "metrics.listen"), ("metrics: {listen: 127.0.0.1}", "metrics.listen"),
                            ("metrics: {port: 9}", "metrics.port"), ("control: {socket: relative.sock}", "control.socket"),
                            ("control: {socket: \(long)}", "control.socket"), ("control: {flowRing: 3}", "control.flowRing"),
                            ("control: {flowRing: many}", "control.flowRing")] {
            let error = #expect(throws: ConfigurationError.self) { try load(text + "\n" + listeners) }
            #expect(error.map { "\($0)".contains(key) } == true, "\(text): \(String(describing: error))")
        }
    }

    @Test func theHandoverSocketLiesBesideTheControlSocketUnlessSet() throws {
        let listeners = "listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
        #expect(try load(listeners).control.handoverPath == "/run/sluice/sluice.handover.sock")
        #expect(try load("control: {socket: /tmp/x/ctl}\n" + listeners).control.handoverPath == "/tmp/x/ctl.handover")
        #expect(try load("control: {socket: none}\n" + listeners).control.handoverPath == nil)
        #expect(try load("control: {socket: none, handover: /tmp/h.sock}\n" + listeners).control.handoverPath == "/tmp/h.sock")
        #expect(try load("control: {handover: none}\n" + listeners).control.handoverPath == nil)
        let long = "/tmp/" + String(repeating: "x", count: 93) + ".sock"  // 103 bytes; beside it 112
        for text in ["control: {handover: relative.sock}", "control: {handover: /tmp/\(String(repeating: "y", count: 120))}",
                     "control: {socket: \(long)}"] {
            let error = #expect(throws: ConfigurationError.self) { try load(text + "\n" + listeners) }
            #expect(error.map { "\($0)".contains("control.handover") } == true, "\(text): \(String(describing: error))")
        }
    }
}
