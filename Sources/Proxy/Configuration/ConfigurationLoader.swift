import Foundation
import PolicyEngine
import Yams

/// A configuration file that cannot be used: where (file, line, column, key path) and why.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public var file: String
    public var line: Int
    public var column: Int
    /// Dotted key path, e.g. `listeners[0].upstream`; empty for the document itself.
    public var path: String
    public var message: String

    public init(file: String, line: Int, column: Int, path: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
    }

    public var description: String {
        let location = line > 0 ? "\(file):\(line):\(column)" : file
        return path.isEmpty ? "\(location): \(message)" : "\(location): \(path): \(message)"
    }
}

/// Reads the YAML configuration of `sluice run` into a `ProxyConfiguration`.
///
/// This is the only place that sees the YAML: it checks every key (unknown keys are errors,
/// so a typo never silently falls back to a default) and reports the first problem with
/// its line and column.
public struct ConfigurationLoader {
    public let file: String
    public let defaultWorkers: Int

    public init(file: String, defaultWorkers: Int) {
        self.file = file
        self.defaultWorkers = defaultWorkers
    }

    public func load() throws(ConfigurationError) -> ProxyConfiguration {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigurationError(file: file, line: 0, column: 0, path: "",
                                     message: "cannot read the file (missing or not readable)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError(file: file, line: 0, column: 0, path: "", message: "not UTF-8 text")
        }
        return try parse(text)
    }

    public func parse(_ text: String) throws(ConfigurationError) -> ProxyConfiguration {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw ConfigurationError(file: file, line: 1, column: 1, path: "",
                                         message: "the file is empty; expected a mapping with at least 'listeners'")
            }
            root = node
        } catch let error as ConfigurationError {
            throw error
        } catch let error as YamlError {
            throw yamlSyntaxError(error)
        } catch {
            throw ConfigurationError(file: file, line: 0, column: 0, path: "", message: "not valid YAML: \(error)")
        }
        return try configuration(from: root)
    }

    private func yamlSyntaxError(_ error: YamlError) -> ConfigurationError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _):
            return ConfigurationError(file: file, line: mark.line, column: mark.column, path: "",
                                      message: "not valid YAML: \(problem)")
        default:
            return ConfigurationError(file: file, line: 0, column: 0, path: "", message: "not valid YAML: \(error)")
        }
    }

    // MARK: Document

    private func configuration(from root: Node) throws(ConfigurationError) -> ProxyConfiguration {
        let document = try mapping(root, path: "", allowed: ["workers", "proxyMark", "listeners", "timeouts", "limits", "flowLog", "datapath", "policy", "http", "dns", "kafka", "fqdn", "metrics", "control"])
        var workers = defaultWorkers
        if let node = document["workers"] {
            workers = try integer(node, path: "workers", range: 1...256)
        }
        var proxyMark: UInt32 = 0xa00
        if let node = document["proxyMark"] {
            proxyMark = UInt32(try integer(node, path: "proxyMark", range: 1...Int(UInt32.max)))
        }
        var timeouts = Timeouts()
        if let node = document["timeouts"] {
            let fields = try mapping(node, path: "timeouts", allowed: ["connect", "idle", "message", "header", "response", "drain", "udpIdle"])
            if let value = fields["connect"] { timeouts.connect = try duration(value, path: "timeouts.connect") }
            if let value = fields["idle"] { timeouts.idle = try duration(value, path: "timeouts.idle") }
            if let value = fields["header"] { timeouts.message = try duration(value, path: "timeouts.header") }
            if let value = fields["message"] { timeouts.message = try duration(value, path: "timeouts.message") }
            if let value = fields["response"] { timeouts.response = try duration(value, path: "timeouts.response") }
            if let value = fields["drain"] { timeouts.drain = try duration(value, path: "timeouts.drain", allowZero: true) }
            if let value = fields["udpIdle"] { timeouts.udpIdle = try duration(value, path: "timeouts.udpIdle") }
        }
        var limits = Limits()
        if let node = document["limits"] {
            let fields = try mapping(node, path: "limits", allowed: [
                "bufferBytes", "maxConnectionsPerWorker", "maxUDPSessionsPerWorker", "maxDatagramBytes", "cachedBuffersPerWorker"])
            if let value = fields["bufferBytes"] { limits.bufferBytes = try size(value, path: "limits.bufferBytes", range: 1024...(64 << 20)) }
            if let value = fields["maxConnectionsPerWorker"] { limits.maxConnectionsPerWorker = try integer(value, path: "limits.maxConnectionsPerWorker", range: 1...1_000_000) }
            if let value = fields["maxUDPSessionsPerWorker"] { limits.maxUDPSessionsPerWorker = try integer(value, path: "limits.maxUDPSessionsPerWorker", range: 1...1_000_000) }
            if let value = fields["maxDatagramBytes"] { limits.maxDatagramBytes = try size(value, path: "limits.maxDatagramBytes", range: 512...65_507) }
            if let value = fields["cachedBuffersPerWorker"] { limits.cachedBuffersPerWorker = try integer(value, path: "limits.cachedBuffersPerWorker", range: 0...100_000) }
        }
        var flowLog = FlowLogConfiguration()
        if let node = document["flowLog"] {
            flowLog = try flowLogConfiguration(node)
        }
        guard let listenersNode = document["listeners"] else {
            throw error(root, path: "listeners", "missing; expected a list of listeners (each with name, mode and listen)")
        }
        guard case .sequence(let sequence) = listenersNode, !sequence.isEmpty else {
            throw error(listenersNode, path: "listeners", "expected a non-empty list of listeners")
        }
        var listeners: [ListenerConfiguration] = []
        var names: Set<String> = []
        for (index, node) in sequence.enumerated() {
            let listener = try listenerConfiguration(node, path: "listeners[\(index)]")
            guard names.insert(listener.name).inserted else {
                let nameNode = (try? mapping(node, path: "", allowed: ["name", "mode", "protocol", "listen", "upstream", "backlog"]))?["name"] ?? node
                throw error(nameNode, path: "listeners[\(index)].name", "duplicate listener name '\(listener.name)'")
            }
            listeners.append(listener)
        }
        var datapath = DatapathConfiguration()
        if let node = document["datapath"] { datapath = try datapathConfiguration(node) }
        var policy: PolicySourceConfiguration?
        if let node = document["policy"] { policy = try policySource(node) }
        var http = HTTPSettings()
        if let node = document["http"] {
            let fields = try mapping(node, path: "http", allowed: ["normalizePaths", "allowedUpgrades"])
            if let value = fields["normalizePaths"] { http.normalizePaths = try boolean(value, path: "http.normalizePaths") }
            if let value = fields["allowedUpgrades"] {
                guard case .sequence(let items) = value else {
                    throw error(value, path: "http.allowedUpgrades", "expected a list of upgrade protocol names, e.g. [websocket]")
                }
                var upgrades: Set<String> = []
                for (index, item) in items.enumerated() {
                    guard case .scalar(let scalar) = item, !scalar.string.isEmpty,
                          scalar.string.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ",") }) else {
                        throw error(item, path: "http.allowedUpgrades[\(index)]", "expected an upgrade token such as websocket")
                    }
                    let token = scalar.string.lowercased()
                    guard token != "h2c" else {
                        throw error(item, path: "http.allowedUpgrades[\(index)]",
                                    "h2c cannot be allowed: an HTTP/2 connection relayed raw would pass every later request unjudged")
                    }
                    upgrades.insert(token)
                }
                http.allowedUpgrades = upgrades
            }
        }
        var dns = DNSSettings()
        if let node = document["dns"] {
            let fields = try mapping(node, path: "dns", allowed: ["deniedAnswer", "responseTimeout"])
            if let value = fields["deniedAnswer"] {
                let text = try string(value, path: "dns.deniedAnswer")
                guard let answer = DNSSettings.DeniedAnswer(rawValue: text) else {
                    throw error(value, path: "dns.deniedAnswer", "expected 'refused' or 'nameError', got '\(text)'")
                }
                dns.deniedAnswer = answer
            }
            if let value = fields["responseTimeout"] {
                dns.responseTimeout = try duration(value, path: "dns.responseTimeout")
            }
        }
        var kafka = KafkaSettings()
        if let node = document["kafka"] {
            let fields = try mapping(node, path: "kafka", allowed: ["maximumRequestBytes", "maximumMetadataResponseBytes"])
            if let value = fields["maximumRequestBytes"] {
                kafka.maximumRequestBytes = try size(value, path: "kafka.maximumRequestBytes", range: 1024...(1 << 30))
            }
            if let value = fields["maximumMetadataResponseBytes"] {
                kafka.maximumMetadataResponseBytes = try size(value, path: "kafka.maximumMetadataResponseBytes",
                                                              range: 1024...(1 << 30))
            }
        }
        var fqdn = FQDNSettings()
        if let node = document["fqdn"] {
            let fields = try mapping(node, path: "fqdn", allowed: ["minimumTTL", "grace", "maximumAddressesPerName",
                                                                   "maximumAddressesPerEndpoint", "maximumAddresses", "stateFile"])
            if let value = fields["minimumTTL"] {
                fqdn.minimumTTL = UInt32(try integer(value, path: "fqdn.minimumTTL", range: 0...604_800))
            }
            if let value = fields["grace"] { fqdn.grace = try duration(value, path: "fqdn.grace", allowZero: true) }
            if let value = fields["maximumAddressesPerName"] {
                fqdn.maximumAddressesPerName = try integer(value, path: "fqdn.maximumAddressesPerName", range: 1...1_000)
            }
            if let value = fields["maximumAddressesPerEndpoint"] {
                fqdn.maximumAddressesPerEndpoint = try integer(value, path: "fqdn.maximumAddressesPerEndpoint", range: 1...65_536)
            }
            if let value = fields["maximumAddresses"] {
                fqdn.maximumAddresses = try integer(value, path: "fqdn.maximumAddresses", range: 1...65_536)
            }
            if let value = fields["stateFile"] {
                let text = try string(value, path: "fqdn.stateFile")
                fqdn.stateFile = text == "none" ? nil : text
                guard !text.isEmpty else { throw error(value, path: "fqdn.stateFile", "expected a file path or 'none'") }
            }
        }
        if datapath.mode != .none {
            guard listeners.contains(where: { $0.kind == .transparentTCP }) else {
                throw error(document["datapath"]!, path: "datapath.mode",
                            "'\(datapath.mode.rawValue)' diverts traffic to a transparent TCP listener; add one to 'listeners'")
            }
            guard policy != nil else {
                throw error(document["datapath"]!, path: "policy", "missing; the datapath enforces the policies named there")
            }
        }
        var configuration = ProxyConfiguration(workers: workers, proxyMark: proxyMark, listeners: listeners, timeouts: timeouts,
                                               limits: limits, flowLog: flowLog, datapath: datapath, policy: policy)
        configuration.http = http
        configuration.dns = dns
        configuration.kafka = kafka
        configuration.fqdn = fqdn
        if let node = document["metrics"] {
            let fields = try mapping(node, path: "metrics", allowed: ["listen"])
            if let value = fields["listen"] {
                if try string(value, path: "metrics.listen") != "none" {
                    configuration.metrics.listen = try socketAddress(value, path: "metrics.listen")
                }
            }
        }
        if let node = document["control"] {
            let fields = try mapping(node, path: "control", allowed: ["socket", "handover", "flowRing"])
            for key in ["socket", "handover"] {
                guard let value = fields[key] else { continue }
                let text = try string(value, path: "control.\(key)")
                guard text == "none" || text.hasPrefix("/") else {
                    throw error(value, path: "control.\(key)", "expected an absolute path or 'none', got '\(text)'")
                }
                // sockaddr_un.sun_path holds 108 bytes with the terminating zero.
                guard text.utf8.count < 108 else {
                    throw error(value, path: "control.\(key)", "expected a path under 108 bytes (a Unix socket's limit)")
                }
                if key == "socket" { configuration.control.socket = text == "none" ? nil : text }
                else { configuration.control.handover = text == "none" ? .none : .path(text) }
            }
            if case .derived = configuration.control.handover, let socket = configuration.control.socket,
               ControlSettings.derivedHandover(socket).utf8.count >= 108 {
                throw error(node, path: "control.handover", "the hand-over socket's path derived from control.socket "
                            + "(\(ControlSettings.derivedHandover(socket))) is 108 bytes or longer: set control.handover")
            }
            if let value = fields["flowRing"] {
                configuration.control.flowRing = try integer(value, path: "control.flowRing", range: 16...1_000_000)
            }
        }
        return configuration
    }

    private func datapathConfiguration(_ node: Node) throws(ConfigurationError) -> DatapathConfiguration {
        let fields = try mapping(node, path: "datapath", allowed: ["mode", "netns", "interfaces", "pinRoot", "object", "originalSource"])
        var datapath = DatapathConfiguration()
        if let modeNode = fields["mode"] {
            let text = try string(modeNode, path: "datapath.mode")
            guard let mode = DatapathConfiguration.Mode(rawValue: text) else {
                throw error(modeNode, path: "datapath.mode", "expected one of bpf, nftables, auto, none, got '\(text)'")
            }
            datapath.mode = mode
        }
        if let value = fields["netns"] { datapath.namespace = try string(value, path: "datapath.netns") }
        if let value = fields["pinRoot"] { datapath.pinRoot = try string(value, path: "datapath.pinRoot") }
        if let value = fields["object"] { datapath.object = try string(value, path: "datapath.object") }
        if let value = fields["originalSource"] { datapath.originalSource = try boolean(value, path: "datapath.originalSource") }
        if let value = fields["interfaces"] {
            datapath.interfaces = try stringList(value, path: "datapath.interfaces")
            for (index, name) in datapath.interfaces.enumerated() where name.isEmpty || name.utf8.count > 15 {
                throw error(value, path: "datapath.interfaces[\(index)]", "expected an interface name of 1 to 15 characters, got '\(name)'")
            }
        }
        if datapath.mode != .none && datapath.interfaces.isEmpty {
            throw error(node, path: "datapath.interfaces", "missing; expected the interfaces facing endpoints and the uplink")
        }
        return datapath
    }

    private func policySource(_ node: Node) throws(ConfigurationError) -> PolicySourceConfiguration {
        let fields = try mapping(node, path: "policy",
                                 allowed: ["source", "kubernetes", "paths", "endpoints", "nodeAddresses", "node", "watch"])
        if let sourceNode = fields["source"] {
            let text = try string(sourceNode, path: "policy.source")
            guard text == "files" || text == "kubernetes" else {
                throw error(sourceNode, path: "policy.source", "expected files or kubernetes, got '\(text)'")
            }
            if text == "kubernetes" {
                for key in ["paths", "endpoints", "watch"] where fields[key] != nil {
                    throw error(fields[key]!, path: "policy.\(key)", "not with source: kubernetes (policies and endpoints come from the API server)")
                }
                if let nodeField = fields["node"] {
                    throw error(nodeField, path: "policy.node", "not with source: kubernetes (the node name is policy.kubernetes.nodeName or NODE_NAME)")
                }
                var source = PolicySourceConfiguration(paths: [], endpoints: "", watchInterval: nil)
                source.kubernetes = try kubernetesSource(fields["kubernetes"])
                if let value = fields["nodeAddresses"] {
                    source.nodeAddresses = try stringList(value, path: "policy.nodeAddresses")
                    for (index, address) in source.nodeAddresses.enumerated() where SocketAddress(host: address, port: 0) == nil {
                        throw error(value, path: "policy.nodeAddresses[\(index)]", "expected an IP address, got '\(address)'")
                    }
                }
                return source
            }
        }
        if let kubernetesNode = fields["kubernetes"] {
            throw error(kubernetesNode, path: "policy.kubernetes", "only with source: kubernetes")
        }
        guard let pathsNode = fields["paths"] else {
            throw error(node, path: "policy.paths", "missing; expected a list of policy files or directories")
        }
        let paths = try stringList(pathsNode, path: "policy.paths")
        guard !paths.isEmpty else { throw error(pathsNode, path: "policy.paths", "expected at least one path") }
        guard let endpointsNode = fields["endpoints"] else {
            throw error(node, path: "policy.endpoints", "missing; expected the endpoints file")
        }
        var source = PolicySourceConfiguration(paths: paths, endpoints: try string(endpointsNode, path: "policy.endpoints"))
        if let value = fields["nodeAddresses"] {
            source.nodeAddresses = try stringList(value, path: "policy.nodeAddresses")
            for (index, address) in source.nodeAddresses.enumerated() where SocketAddress(host: address, port: 0) == nil {
                throw error(value, path: "policy.nodeAddresses[\(index)]", "expected an IP address, got '\(address)'")
            }
        }
        if let value = fields["node"] {
            let name = try string(value, path: "policy.node")
            guard EndpointDirectory.isNodeName(name) else {
                throw error(value, path: "policy.node",
                            "expected a node name (lowercase letters, digits, '-' and '.'), as the endpoints file's node fields, got '\(name)'")
            }
            source.node = name
        }
        if let value = fields["watch"] {
            let text = try string(value, path: "policy.watch")
            source.watchInterval = text == "off" ? nil : try duration(value, path: "policy.watch")
        }
        return source
    }

    /// `policy.kubernetes`: how to reach the API server and where this node stands.
    private func kubernetesSource(_ node: Node?) throws(ConfigurationError) -> KubernetesSourceConfiguration {
        var settings = KubernetesSourceConfiguration()
        guard let node else { return settings }
        let fields = try mapping(node, path: "policy.kubernetes", allowed: [
            "kubeconfig", "context", "nodeName", "clusterName", "syncTimeout", "maxObjects", "maxResponseBytes"])
        if let value = fields["kubeconfig"] { settings.kubeconfig = try string(value, path: "policy.kubernetes.kubeconfig") }
        if let value = fields["context"] { settings.context = try string(value, path: "policy.kubernetes.context") }
        if let value = fields["nodeName"] { settings.nodeName = try string(value, path: "policy.kubernetes.nodeName") }
        if let value = fields["clusterName"] { settings.clusterName = try string(value, path: "policy.kubernetes.clusterName") }
        if let value = fields["syncTimeout"] { settings.syncTimeout = try duration(value, path: "policy.kubernetes.syncTimeout") }
        if let value = fields["maxObjects"] {
            settings.maxObjects = try integer(value, path: "policy.kubernetes.maxObjects", range: 1...10_000_000)
        }
        if let value = fields["maxResponseBytes"] {
            settings.maxResponseBytes = try integer(value, path: "policy.kubernetes.maxResponseBytes", range: 4096...(4 << 30))
        }
        return settings
    }

    private func stringList(_ node: Node, path: String) throws(ConfigurationError) -> [String] {
        guard case .sequence(let sequence) = node else { throw error(node, path: path, "expected a list") }
        var values: [String] = []
        for (index, element) in sequence.enumerated() { values.append(try string(element, path: "\(path)[\(index)]")) }
        return values
    }

    private func listenerConfiguration(_ node: Node, path: String) throws(ConfigurationError) -> ListenerConfiguration {
        let fields = try mapping(node, path: path, allowed: ["name", "mode", "protocol", "listen", "upstream", "backlog", "l7"])
        guard let nameNode = fields["name"] else { throw error(node, path: "\(path).name", "missing; expected a listener name") }
        let name = try string(nameNode, path: "\(path).name")
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw error(nameNode, path: "\(path).name", "expected letters, digits, '-' or '_', got '\(name)'")
        }
        guard let modeNode = fields["mode"] else {
            throw error(node, path: "\(path).mode", "missing; expected 'explicit' or 'transparent'")
        }
        let mode = try string(modeNode, path: "\(path).mode")
        var transport = "tcp"
        if let protocolNode = fields["protocol"] {
            transport = try string(protocolNode, path: "\(path).protocol").lowercased()
            guard transport == "tcp" || transport == "udp" else {
                throw error(protocolNode, path: "\(path).protocol", "expected 'tcp' or 'udp', got '\(transport)'")
            }
        }
        guard let listenNode = fields["listen"] else {
            throw error(node, path: "\(path).listen", "missing; expected an address such as 127.0.0.1:15001")
        }
        let address = try socketAddress(listenNode, path: "\(path).listen")
        var backlog: Int32 = 1024
        if let value = fields["backlog"] { backlog = Int32(try integer(value, path: "\(path).backlog", range: 1...65_535)) }

        var l7: ListenerConfiguration.L7Protocol?
        if let l7Node = fields["l7"] {
            let text = try string(l7Node, path: "\(path).l7")
            guard let parsed = ListenerConfiguration.L7Protocol(rawValue: text) else {
                throw error(l7Node, path: "\(path).l7", "expected 'http' or 'kafka', got '\(text)'")
            }
            guard mode == "explicit" else {
                throw error(l7Node, path: "\(path).l7", "only for explicit listeners; transparent listeners choose the parser from the policy of each connection's port")
            }
            l7 = parsed
        }
        let kind: ListenerConfiguration.Kind
        switch mode {
        case "explicit":
            guard transport == "tcp" else {
                throw error(fields["protocol"] ?? node, path: "\(path).protocol", "explicit listeners relay TCP only; use mode 'transparent' for UDP")
            }
            guard let upstreamNode = fields["upstream"] else {
                throw error(node, path: "\(path).upstream", "missing; an explicit listener needs an upstream address such as 127.0.0.1:8080")
            }
            let upstream = try socketAddress(upstreamNode, path: "\(path).upstream")
            guard upstream != address else {
                throw error(upstreamNode, path: "\(path).upstream", "is the listener's own address; the proxy would connect to itself")
            }
            kind = .explicit(upstream: upstream)
        case "transparent":
            if let upstreamNode = fields["upstream"] {
                throw error(upstreamNode, path: "\(path).upstream", "not allowed in transparent mode: each connection goes to its original destination")
            }
            kind = transport == "udp" ? .transparentUDP : .transparentTCP
        default:
            throw error(modeNode, path: "\(path).mode", "expected 'explicit' or 'transparent', got '\(mode)'")
        }
        return ListenerConfiguration(name: name, kind: kind, address: address, backlog: backlog, l7: l7)
    }

    private func flowLogConfiguration(_ node: Node) throws(ConfigurationError) -> FlowLogConfiguration {
        let fields = try mapping(node, path: "flowLog", allowed: ["sink", "path"])
        guard let sinkNode = fields["sink"] else {
            throw error(node, path: "flowLog.sink", "missing; expected one of stdout, file, unix, none")
        }
        let sink = try string(sinkNode, path: "flowLog.sink")
        func requiredPath() throws(ConfigurationError) -> String {
            guard let pathNode = fields["path"] else {
                throw error(node, path: "flowLog.path", "missing; the '\(sink)' sink needs a path")
            }
            let value = try string(pathNode, path: "flowLog.path")
            guard !value.isEmpty else { throw error(pathNode, path: "flowLog.path", "expected a non-empty path") }
            return value
        }
        switch sink {
        case "stdout": return FlowLogConfiguration(sink: .stdout)
        case "none": return FlowLogConfiguration(sink: .none)
        case "file": return FlowLogConfiguration(sink: .file(path: try requiredPath()))
        case "unix": return FlowLogConfiguration(sink: .unixSocket(path: try requiredPath()))
        default: throw error(sinkNode, path: "flowLog.sink", "expected one of stdout, file, unix, none, got '\(sink)'")
        }
    }

    // MARK: Scalars

    private func error(_ node: Node, path: String, _ message: String) -> ConfigurationError {
        ConfigurationError(file: file, line: node.mark?.line ?? 0, column: node.mark?.column ?? 0, path: path, message: message)
    }

    private func mapping(_ node: Node, path: String, allowed: [String]) throws(ConfigurationError) -> [String: Node] {
        guard case .mapping(let mapping) = node else {
            throw error(node, path: path, "expected a mapping of keys (\(allowed.joined(separator: ", ")))")
        }
        var result: [String: Node] = [:]
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode else { throw error(keyNode, path: path, "expected a plain key") }
            let keyPath = path.isEmpty ? key.string : "\(path).\(key.string)"
            guard allowed.contains(key.string) else {
                throw error(keyNode, path: keyPath, "unknown key; expected one of \(allowed.joined(separator: ", "))")
            }
            guard result[key.string] == nil else { throw error(keyNode, path: keyPath, "duplicate key") }
            result[key.string] = value
        }
        return result
    }

    private func string(_ node: Node, path: String) throws(ConfigurationError) -> String {
        guard case .scalar(let scalar) = node else { throw error(node, path: path, "expected a single value") }
        return scalar.string
    }

    private func boolean(_ node: Node, path: String) throws(ConfigurationError) -> Bool {
        switch try string(node, path: path) {
        case "true": return true
        case "false": return false
        case let text: throw error(node, path: path, "expected true or false, got '\(text)'")
        }
    }

    private func integer(_ node: Node, path: String, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let text = try string(node, path: path)
        let value: Int?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            value = Int(text.dropFirst(2), radix: 16)
        } else {
            value = Int(text)
        }
        guard let value else { throw error(node, path: path, "expected an integer, got '\(text)'") }
        guard range.contains(value) else {
            throw error(node, path: path, "expected an integer from \(range.lowerBound) to \(range.upperBound), got \(value)")
        }
        return value
    }

    private func socketAddress(_ node: Node, path: String) throws(ConfigurationError) -> SocketAddress {
        let text = try string(node, path: path)
        guard let address = SocketAddress(text) else {
            throw error(node, path: path, "expected a numeric address with a port, such as 127.0.0.1:15001 or [::1]:15001, got '\(text)'")
        }
        return address
    }

    /// Durations: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
    private func duration(_ node: Node, path: String, allowZero: Bool = false) throws(ConfigurationError) -> UInt64 {
        let text = try string(node, path: path)
        let units: [(String, Double)] = [("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        var number = Substring(text)
        var scale = 1e9
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            scale = factor
            break
        }
        guard let value = Double(number), value.isFinite, value >= 0, value * scale <= 86_400e9 else {
            throw error(node, path: path, "expected a duration such as 250ms, 5s, 2m or 1h (at most 24h), got '\(text)'")
        }
        guard allowZero || value > 0 else { throw error(node, path: path, "expected a duration above zero, got '\(text)'") }
        return UInt64(value * scale)
    }

    /// Sizes: `65536`, `64KiB`, `1MiB`.
    private func size(_ node: Node, path: String, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let text = try string(node, path: path)
        let units: [(String, Int)] = [("KiB", 1024), ("MiB", 1 << 20), ("KB", 1000), ("MB", 1_000_000), ("B", 1)]
        var number = Substring(text)
        var scale = 1
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            scale = factor
            break
        }
        guard let value = Int(number.trimmingCharacters(in: .whitespaces)), value >= 0 else {
            throw error(node, path: path, "expected a size such as 65536, 64KiB or 1MiB, got '\(text)'")
        }
        let bytes = value * scale
        guard range.contains(bytes) else {
            throw error(node, path: path, "expected a size from \(range.lowerBound) to \(range.upperBound) bytes, got \(bytes)")
        }
        return bytes
    }
}
