import Yams

/// Who is behind an address: the endpoints file, plus Cilium's rule that an address
/// nobody claims is `reserved:world`.
///
/// The file is YAML (or JSON):
///
/// ```yaml
/// namespaces:                 # optional: labels of namespaces (for namespaceSelector)
///   monitoring: {team: sre}
/// endpoints:
///   - ip: 10.0.1.10           # or cidr: 10.0.1.0/24
///     namespace: production
///     pod: frontend-7d9d6b8f-abc12       # optional
///     labels: {app: frontend}
///     ports: {http: 8080, dns: 53/UDP}   # optional named ports
///   - ip: 192.168.0.10
///     reserved: host          # host, remote-node, kube-apiserver, health, ingress, init, unmanaged
/// ```
///
/// Several nodes: an entry may say which node it is on (`node: NAME`, a DNS name, as a
/// pod's `spec.nodeName`). Loaded for node `localNode` (sluice's `policy.node`), a pod on
/// another node is a remote endpoint (`Identity.isOnAnotherNode`: selected by policies as
/// usual, but its own policy is that node's business) and `reserved: host` on another node
/// is that node's address, `reserved:remote-node` here. An entry without `node` is on
/// whichever node reads the file (a one-node file needs no `node` at all).
public struct EndpointDirectory: Sendable {
    private var exact: [IPAddress: Identity] = [:]
    /// Prefix entries, longest prefix first.
    private var prefixes: [(CIDR, Identity)] = []

    /// Every identity the file names, in file order.
    public private(set) var identities: [Identity] = []

    /// The nodes entries name (`node:`), sorted; empty for a one-node file.
    public private(set) var nodeNames: [String] = []

    /// Every entry with the address or prefix it was given under, in file order (the
    /// datapath writes these into its identity map).
    public private(set) var entries: [(prefix: CIDR, identity: Identity)] = []

    public init() {}

    /// Adds `identity` for `address` (exact) or `prefix` (a pod on another node says so
    /// itself: `Identity.isOnAnotherNode`).
    public mutating func add(_ identity: Identity, prefix: CIDR) {
        if prefix.prefixLength == prefix.network.bitWidth {
            exact[prefix.network] = identity
        } else {
            prefixes.append((prefix, identity))
            prefixes.sort { $0.0.prefixLength > $1.0.prefixLength }
        }
        identities.append(identity)
        entries.append((prefix, identity))
    }

    /// The identity of `address`: the exact entry, else the longest prefix, else world.
    public func identity(for address: IPAddress) -> Identity {
        if let identity = exact[address] { return identity.with(address: address) }
        for (prefix, identity) in prefixes where prefix.contains(address) { return identity.with(address: address) }
        return .reserved(.world, address: address)
    }

    /// True when the file names `address` (exactly or by prefix).
    public func knows(_ address: IPAddress) -> Bool {
        exact[address] != nil || prefixes.contains { $0.0.contains(address) }
    }

    /// True when `text` is an endpoints file rather than policy documents: its first
    /// document is a mapping with `endpoints` and no `kind`.
    public static func isEndpointsText(_ text: String) -> Bool {
        guard let root = try? YAMLText.firstDocument(text, file: ""), case .mapping(let mapping) = root else { return false }
        return mapping["endpoints"] != nil && mapping["kind"] == nil
    }

    /// Loads the endpoints file at `path`, as node `localNode` sees it (nil: every entry is
    /// local, whatever node it names).
    public static func load(file path: String, localNode: String? = nil) throws(PolicyError) -> EndpointDirectory {
        let text = try PolicyLoader.readText(path, limit: 64 << 20)
        return try load(text: text, file: path, localNode: localNode)
    }

    /// Parses endpoints file text; `file` names it in errors. `localNode`: as for `load(file:)`.
    public static func load(text: String, file: String, localNode: String? = nil) throws(PolicyError) -> EndpointDirectory {
        let root = try YAMLText.firstDocument(text, file: file)
        var directory = EndpointDirectory()
        guard let root else { return directory }
        let top = try YAMLField(node: root, path: "", file: file).mapping(allowed: ["namespaces", "endpoints"])
        var namespaceLabels: [String: [String: String]] = [:]
        if let namespaces = top.optional("namespaces") {
            let map = try namespaces.mapping(allowed: nil)
            for name in map.order {
                guard let labels = map.present(name) else { continue }
                namespaceLabels[name] = try stringMap(labels)
            }
        }
        var nodeNames: Set<String> = []
        for element in try top.list("endpoints") {
            let map = try element.mapping(allowed: ["ip", "cidr", "namespace", "pod", "labels", "ports", "reserved", "node"])
            var isOnAnotherNode = false
            if let nodeField = map.optional("node") {
                let node = try nodeField.string()
                guard isNodeName(node) else {
                    throw nodeField.error("expected a node name (lowercase letters, digits, '-' and '.', at most 253 characters), got \(DocumentReader.quoted(node))")
                }
                nodeNames.insert(node)
                isOnAnotherNode = localNode.map { $0 != node } ?? false
            }
            let prefix: CIDR
            if let ipField = map.optional("ip") {
                let text = try ipField.string()
                guard let address = IPAddress(text) else { throw ipField.error("expected an IPv4 or IPv6 address, got \(DocumentReader.quoted(text))") }
                prefix = CIDR(network: address, prefixLength: address.bitWidth)
            } else if let cidrField = map.optional("cidr") {
                let text = try cidrField.string()
                guard let cidr = CIDR(text) else { throw cidrField.error("expected a CIDR such as 10.0.0.0/24, got \(DocumentReader.quoted(text))") }
                prefix = cidr
            } else {
                throw element.error("expected ip or cidr")
            }
            let labels = try map.optional("labels").map { field throws(PolicyError) in try stringMap(field) } ?? [:]
            var namedPorts: [NamedPort] = []
            if let portsField = map.optional("ports") {
                let portsMap = try portsField.mapping(allowed: nil)
                for name in portsMap.order {
                    guard let valueField = portsMap.present(name) else { continue }
                    let text = try valueField.string()
                    let parts = text.split(separator: "/")
                    guard DocumentReader.isServiceName(name), let number = parts.first.flatMap({ UInt16($0) }), number > 0,
                          parts.count <= 2 else {
                        throw valueField.error("expected NAME: PORT[/TCP|UDP|SCTP] with an IANA service name, got \(DocumentReader.quoted(name + ": " + text))")
                    }
                    var transport = TransportProtocol.tcp
                    if parts.count == 2 {
                        guard let parsed = TransportProtocol(rawValue: parts[1].uppercased()), parsed != .icmp, parsed != .icmpv6 else {
                            throw valueField.error("expected TCP, UDP or SCTP after /, got \(DocumentReader.quoted(String(parts[1])))")
                        }
                        transport = parsed
                    }
                    namedPorts.append(NamedPort(name: name, port: number, transport: transport))
                }
            }
            if let reservedField = map.optional("reserved") {
                let text = try reservedField.string()
                guard let kind = ReservedIdentity(rawValue: text), kind != .world else {
                    throw reservedField.error("expected one of host, remote-node, kube-apiserver, health, ingress, init, unmanaged, got \(DocumentReader.quoted(text))")
                }
                let extra = labels.map { Label(parsing: "\($0.key)=\($0.value)") }
                // Another node's own address is a remote node to this one.
                directory.add(.reserved(kind == .host && isOnAnotherNode ? .remoteNode : kind, labels: extra), prefix: prefix)
                continue
            }
            let namespaceField = try map.required("namespace", "the pod's namespace (or reserved: KIND)")
            let namespace = try namespaceField.string()
            guard DocumentReader.isDNSLabel(namespace) else {
                throw namespaceField.error("expected a namespace name (DNS label), got \(DocumentReader.quoted(namespace))")
            }
            let identity = Identity.pod(namespace: namespace, labels: labels, namespaceLabels: namespaceLabels[namespace] ?? [:],
                                        podName: try map.string("pod"), namedPorts: namedPorts, isOnAnotherNode: isOnAnotherNode)
            directory.add(identity, prefix: prefix)
        }
        directory.nodeNames = nodeNames.sorted()
        return directory
    }

    /// A Kubernetes node name: a DNS subdomain (RFC 1123), as `spec.nodeName` holds.
    public static func isNodeName(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253 else { return false }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { DocumentReader.isDNSLabel(String($0)) }
    }

    private static func stringMap(_ field: YAMLField) throws(PolicyError) -> [String: String] {
        let map = try field.mapping(allowed: nil)
        var result: [String: String] = [:]
        for key in map.order {
            guard let value = map.present(key) else { continue }
            result[key] = value.isNull ? "" : try value.string()
        }
        return result
    }
}

extension Identity {
    /// The same identity seen at `address`.
    func with(address: IPAddress) -> Identity {
        Identity(labels: labels.labels, namespace: namespace, address: address, podName: podName,
                 namedPorts: namedPorts, dnsNames: dnsNames, isOnAnotherNode: isOnAnotherNode)
    }

    /// The same identity with names learned from DNS (for `toFQDNs`).
    public func with(dnsNames: [String]) -> Identity {
        Identity(labels: labels.labels, namespace: namespace, address: address, podName: podName,
                 namedPorts: namedPorts, dnsNames: dnsNames, isOnAnotherNode: isOnAnotherNode)
    }
}
