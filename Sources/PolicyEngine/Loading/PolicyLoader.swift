import Foundation
import Yams

/// Options for loading policy documents.
public struct PolicyLoadOptions: Sendable {
    /// Directory holding `headerMatches[].secret` values as `DIR/NAMESPACE/NAME`
    /// (one file per secret, trailing newline ignored). Nil = secrets cannot be resolved.
    public var secretsDirectory: String?
    /// Largest policy file read, in bytes (a limit, so a stray 10 GiB file is refused).
    public var maximumFileBytes: Int

    public init(secretsDirectory: String? = nil, maximumFileBytes: Int = 64 << 20) {
        self.secretsDirectory = secretsDirectory
        self.maximumFileBytes = maximumFileBytes
    }
}

/// What loading one or more files produced: the valid policies and one error per
/// rejected document (a bad document is rejected whole; the others still load).
public struct PolicyLoadResult: Sendable {
    public var policies: [Policy] = []
    public var errors: [PolicyError] = []
    /// Documents seen, valid or not (empty documents are not counted).
    public var documentCount = 0

    public init() {}

    public mutating func append(_ other: PolicyLoadResult) {
        policies += other.policies
        errors += other.errors
        documentCount += other.documentCount
    }
}

/// Turns YAML or JSON text into `Policy` values: the one place where policy wire
/// formats are read. Accepts `cilium.io/v2` CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy (`spec` and/or `specs`), `networking.k8s.io/v1`
/// NetworkPolicy, and `v1` `List` of those, several documents per file.
public enum PolicyLoader {
    /// Loads every document of the file at `path`.
    public static func load(file path: String, options: PolicyLoadOptions = PolicyLoadOptions()) -> PolicyLoadResult {
        do {
            let text = try readText(path, limit: options.maximumFileBytes)
            return load(text: text, file: path, options: options)
        } catch {
            var result = PolicyLoadResult()
            result.errors.append(error)
            return result
        }
    }

    /// Loads every document of `text`; `file` names it in errors. Never traps: any input
    /// becomes policies and located errors (see `YAMLText` for the limits on YAML itself).
    public static func load(text: String, file: String, options: PolicyLoadOptions = PolicyLoadOptions()) -> PolicyLoadResult {
        var result = PolicyLoadResult()
        YAMLText.forEachDocument(text, file: file) { document in
            switch document {
            case .failure(let error):
                result.errors.append(error)
            case .success(let node):
                let field = YAMLField(node: node, path: "", file: file)
                if field.isNull { return }
                result.documentCount += 1
                do throws(PolicyError) {
                    result.policies += try DocumentReader(file: file, options: options).policies(from: field)
                } catch {
                    result.errors.append(error)
                }
            }
        }
        return result
    }

    /// Reads a UTF-8 file of at most `limit` bytes.
    public static func readText(_ path: String, limit: Int = 64 << 20) throws(PolicyError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw PolicyError(file: path, line: 0, column: 0, fieldPath: "", message: "cannot open file for reading")
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: limit + 1)) ?? Data()
        if data.count > limit {
            throw PolicyError(file: path, line: 0, column: 0, fieldPath: "", message: "file is larger than the \(limit)-byte limit")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw PolicyError(file: path, line: 0, column: 0, fieldPath: "", message: "expected UTF-8 text")
        }
        return text
    }

    static func yamlError(_ error: any Error, file: String) -> PolicyError {
        if let yaml = error as? YamlError {
            switch yaml {
            case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
                return PolicyError(file: file, line: mark.line, column: mark.column, fieldPath: "", message: "invalid YAML: \(problem)")
            default:
                break
            }
        }
        return PolicyError(file: file, line: 0, column: 0, fieldPath: "", message: "invalid YAML: \(error)")
    }
}

/// Reads one document. Every check of the reference's rule validation lives here
/// or in the helpers below, next to the field it concerns.
struct DocumentReader {
    let file: String
    let options: PolicyLoadOptions

    static let maximumPortsPerRule = 40
    static let maximumICMPFields = 40

    func policies(from document: YAMLField) throws(PolicyError) -> [Policy] {
        let top = try document.mapping(allowed: nil)
        let kindField = try top.required("kind", "CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or List")
        let kindText = try kindField.string()
        let apiVersionField = try top.required("apiVersion", "cilium.io/v2, networking.k8s.io/v1 or v1")
        let apiVersion = try apiVersionField.string()
        if kindText == "List" {
            guard apiVersion == "v1" else { throw apiVersionField.error("expected v1 for kind List, got \(Self.quoted(apiVersion))") }
            var all: [Policy] = []
            for item in try top.list("items") { all += try policies(from: item) }
            return all
        }
        _ = try document.mapping(allowed: ["apiVersion", "kind", "metadata", "spec", "specs", "status"])
        guard let kind = Policy.Kind(rawValue: kindText) else {
            throw kindField.error("expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy, got \(Self.quoted(kindText))")
        }
        let expectedVersion = kind == .networkPolicy ? "networking.k8s.io/v1" : "cilium.io/v2"
        guard apiVersion == expectedVersion else {
            throw apiVersionField.error("expected \(expectedVersion) for kind \(kindText), got \(Self.quoted(apiVersion))")
        }
        let metadata = try top.required("metadata", "a mapping with name (and namespace)").mapping(allowed: nil)
        let nameField = try metadata.required("name", "the policy name")
        let name = try nameField.string()
        guard Self.isDNSSubdomain(name) else {
            throw nameField.error("expected a DNS subdomain name (lower-case letters, digits, '-' and '.', at most 253 characters), got \(Self.quoted(name))")
        }
        var namespace: String? = nil
        if kind != .ciliumClusterwideNetworkPolicy {
            var name = "default"
            if let namespaceField = metadata.optional("namespace") {
                name = try namespaceField.string()
                guard Self.isDNSLabel(name) else {
                    throw namespaceField.error("expected a DNS label namespace (lower-case letters, digits and '-', at most 63 characters), got \(Self.quoted(name))")
                }
            }
            namespace = name
        }
        let mark = document.fallbackMark
        let location = DocumentLocation(file: file, line: mark?.line ?? 0, column: mark?.column ?? 0)

        var rules: [PolicyRule] = []
        if kind == .networkPolicy {
            if let specs = top.present("specs") { throw specs.error("NetworkPolicy has no specs; expected spec") }
            let spec = try top.required("spec", "the NetworkPolicy spec")
            rules.append(try NetworkPolicyReader(reader: self, namespace: namespace ?? "default").rule(from: spec))
        } else {
            guard top.optional("spec") != nil || top.optional("specs") != nil else {
                throw document.error("missing required field \"spec\" or \"specs\": expected at least one rule")
            }
            var counters = RuleCounters()
            if let spec = top.optional("spec") {
                rules.append(try ciliumRule(from: spec, namespace: namespace, counters: &counters))
            }
            for spec in try top.list("specs") {
                rules.append(try ciliumRule(from: spec, namespace: namespace, counters: &counters))
            }
        }
        return [Policy(kind: kind, namespace: namespace, name: name, rules: rules, location: location)]
    }

    /// Running indexes of ingress/egress elements across `spec` and `specs`.
    struct RuleCounters {
        var counts: [String: Int] = [:]
        mutating func next(_ list: String) -> Int {
            defer { counts[list, default: 0] += 1 }
            return counts[list, default: 0]
        }
    }

    // MARK: Cilium rules

    func ciliumRule(from field: YAMLField, namespace: String?, counters: inout RuleCounters) throws(PolicyError) -> PolicyRule {
        let map = try field.mapping(allowed: ["endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny",
                                              "labels", "description", "enableDefaultDeny", "log"])
        let endpointField = map.present("endpointSelector")
        let nodeField = map.present("nodeSelector")
        let subject: PolicyRule.Subject
        switch (endpointField, nodeField) {
        case (nil, nil):
            throw field.error("expected endpointSelector or nodeSelector (rule must have one of them)")
        case (.some, .some(let selectorField)):
            throw selectorField.error("rule cannot have both endpointSelector and nodeSelector")
        case (.some(let selectorField), nil):
            var selector = try labelSelector(from: selectorField)
            // Cilium scopes the subject of a namespaced policy to its namespace unconditionally.
            if let namespace { selector = selector.scoped(to: namespace) }
            subject = .endpoints(selector)
        case (nil, .some(let selectorField)):
            subject = .nodes(try labelSelector(from: selectorField))
        }
        let directions = ["ingress", "ingressDeny", "egress", "egressDeny"]
        guard directions.contains(where: map.has) else {
            throw field.error("expected at least one of ingress, ingressDeny, egress, egressDeny")
        }
        let isHostPolicy = nodeField != nil
        func rules(_ list: String) throws(PolicyError) -> [PeerRule] {
            var rules: [PeerRule] = []
            for element in try map.list(list) {
                let direction: Direction = list.hasPrefix("ingress") ? .ingress : .egress
                let rule = try peerRule(from: element, direction: direction, deny: list.hasSuffix("Deny"),
                                        namespace: namespace, index: counters.next(list))
                if isHostPolicy, rule.portRules.contains(where: { $0.l7 != nil }) {
                    throw element.error("host policies (nodeSelector) do not support L7 rules")
                }
                rules.append(rule)
            }
            return rules
        }
        let ingress = try rules("ingress")
        let ingressDeny = try rules("ingressDeny")
        let egress = try rules("egress")
        let egressDeny = try rules("egressDeny")
        // "if there is a peer selector for that direction, the default is deny": a section
        // with any element, even `[{}]`, turns default deny on for its direction.
        var defaultDenyIngress = !(ingress.isEmpty && ingressDeny.isEmpty)
        var defaultDenyEgress = !(egress.isEmpty && egressDeny.isEmpty)
        if let defaults = map.optional("enableDefaultDeny") {
            let defaultsMap = try defaults.mapping(allowed: ["ingress", "egress"])
            if let ingress = defaultsMap.optional("ingress") { defaultDenyIngress = try ingress.bool() }
            if let egress = defaultsMap.optional("egress") { defaultDenyEgress = try egress.bool() }
        }
        if let labels = map.optional("labels") {
            for label in try labels.sequence() { _ = try label.mapping(allowed: ["key", "value", "source"]) }
        }
        return PolicyRule(subject: subject, ingress: ingress, ingressDeny: ingressDeny,
                          egress: egress, egressDeny: egressDeny,
                          defaultDenyIngress: defaultDenyIngress, defaultDenyEgress: defaultDenyEgress,
                          description: try map.string("description"))
    }

    func peerRule(from field: YAMLField, direction: Direction, deny: Bool, namespace: String?, index: Int) throws(PolicyError) -> PeerRule {
        let prefix = direction == .ingress ? "from" : "to"
        var members = ["Endpoints", "Requires", "CIDR", "CIDRSet", "Entities", "Nodes", "Groups"].map { prefix + $0 }
        if direction == .egress { members += ["toServices", "toFQDNs"] }
        let map = try field.mapping(allowed: members + ["toPorts", "icmps", "authentication"])

        // "Combining FromEndpoints and FromCIDR is not supported": one kind of L3 peer per rule.
        let l3Fields = members.filter { $0 != prefix + "Requires" }.compactMap { name in map.optional(name).map { (name, $0) } }
        let explicitlyEmpty = l3Fields.filter { (try? $0.1.sequence())?.isEmpty ?? false }
        let l3Members = l3Fields.filter { member in !explicitlyEmpty.contains { $0.0 == member.0 } }
        if l3Members.count > 1 {
            throw l3Members[1].1.error("one kind of peer per rule: cannot combine \(l3Members[0].0) and \(l3Members[1].0)")
        }
        var peers: [Peer]? = nil
        if case let (member, memberField)? = l3Members.first {
            peers = try self.peers(member: String(member.dropFirst(prefix.count)), field: memberField, namespace: namespace)
        }
        var requires: [LabelSelector] = []
        for element in try map.list(prefix + "Requires") {
            var selector = try labelSelector(from: element)
            if let namespace, !selector.namesNamespace, !selector.namesReservedLabels { selector = selector.scoped(to: namespace) }
            requires.append(selector)
        }
        if l3Members.first?.0 == "toServices", let toPorts = map.optional("toPorts") {
            throw toPorts.error("toServices cannot be combined with toPorts")
        }
        var portRules: [PortRule] = []
        for (position, element) in try map.list("toPorts").enumerated() {
            portRules.append(try portRule(from: element, index: position, direction: direction, deny: deny))
        }
        var icmpTypes: [ICMPType] = []
        if let icmps = map.optional("icmps") {
            if !portRules.isEmpty {
                throw icmps.error("the icmps block may only be present without toPorts; define a separate rule for toPorts")
            }
            for element in try icmps.sequence() {
                let icmpMap = try element.mapping(allowed: ["fields"])
                let fields = try icmpMap.list("fields")
                if fields.count > Self.maximumICMPFields {
                    throw element.error("too many ICMP fields (\(fields.count)); the maximum is \(Self.maximumICMPFields)")
                }
                for fieldElement in fields {
                    icmpTypes.append(try icmpType(from: fieldElement))
                }
            }
        }
        if !explicitlyEmpty.isEmpty {
            // The reference: "Explicitly check for empty non-nil slices, it should not result
            // in any identity being selected" (`fromEndpoints: []` selects nobody, even with toPorts).
            peers = []
        } else if l3Members.isEmpty, portRules.isEmpty, icmpTypes.isEmpty {
            // No peer and no port: the rule selects nothing. In `ingress`/`egress` this is the
            // reference's documented deny-all ("ingress: [{}]": the section turns default deny
            // on, the rule adds no allow); in `ingressDeny`/`egressDeny` it denies nothing.
            peers = []
        }
        return PeerRule(index: index, peers: peers, requires: requires, portRules: portRules, icmpTypes: icmpTypes)
    }

    func peers(member: String, field: YAMLField, namespace: String?) throws(PolicyError) -> [Peer] {
        var peers: [Peer] = []
        switch member {
        case "Endpoints":
            for element in try field.sequence() {
                var selector = try labelSelector(from: element)
                if let namespace, !selector.namesNamespace, !selector.namesReservedLabels { selector = selector.scoped(to: namespace) }
                peers.append(.endpoints(selector))
            }
        case "Nodes":
            for element in try field.sequence() { peers.append(.nodes(try labelSelector(from: element))) }
        case "CIDR":
            for element in try field.sequence() {
                let text = try element.string()
                guard let cidr = CIDR(text, allowBareAddress: true) else {
                    throw element.error("expected an IP address or CIDR such as 10.0.0.0/8, got \(Self.quoted(text))")
                }
                peers.append(.cidr(cidr, except: []))
            }
        case "CIDRSet":
            for element in try field.sequence() {
                let map = try element.mapping(allowed: ["cidr", "except", "cidrGroupRef", "cidrGroupSelector"])
                if let reference = map.optional("cidrGroupRef") ?? map.optional("cidrGroupSelector") {
                    throw reference.error("CIDR groups are not supported by Sluice; expected cidr")
                }
                peers.append(try cidrPeer(map: map, cidrKey: "cidr", exceptKey: "except"))
            }
        case "Entities":
            for element in try field.sequence() {
                let text = try element.string()
                guard let entity = Entity(rawValue: text) else {
                    throw element.error("expected an entity (\(Entity.allCases.map(\.rawValue).joined(separator: ", "))), got \(Self.quoted(text))")
                }
                peers.append(.entity(entity))
            }
        case "FQDNs":
            for element in try field.sequence() { peers.append(.fqdn(try dnsMatcher(from: element))) }
        case "Services":
            for element in try field.sequence() {
                let map = try element.mapping(allowed: ["k8sService", "k8sServiceSelector"])
                if let service = map.optional("k8sService") {
                    let serviceMap = try service.mapping(allowed: ["serviceName", "namespace"])
                    let name = try serviceMap.required("serviceName", "the service name").string()
                    peers.append(.service("\(try serviceMap.string("namespace") ?? namespace ?? "default")/\(name)"))
                } else if let selector = map.optional("k8sServiceSelector") {
                    let selectorMap = try selector.mapping(allowed: ["selector", "namespace"])
                    let labels = try labelSelector(from: try selectorMap.required("selector", "a label selector"))
                    peers.append(.service("selector(\(labels))"))
                } else {
                    throw element.error("expected k8sService or k8sServiceSelector")
                }
            }
        case "Groups":
            throw field.error("\(field.path.split(separator: ".").last ?? "") (cloud provider groups) is not supported by Sluice")
        default:
            throw field.error("unsupported peer kind")
        }
        return peers
    }

    func cidrPeer(map: YAMLMapping, cidrKey: String, exceptKey: String) throws(PolicyError) -> Peer {
        let cidrField = try map.required(cidrKey, "a CIDR such as 10.0.0.0/8")
        let text = try cidrField.string()
        guard let cidr = CIDR(text) else {
            throw cidrField.error("expected a CIDR such as 10.0.0.0/8 (ADDRESS/LENGTH), got \(Self.quoted(text))")
        }
        var exceptions: [CIDR] = []
        for element in try map.list(exceptKey) {
            let exceptText = try element.string()
            guard let except = CIDR(exceptText) else {
                throw element.error("expected a CIDR such as 10.1.0.0/16, got \(Self.quoted(exceptText))")
            }
            guard cidr.contains(except) else {
                throw element.error("expected a prefix inside \(cidr), got \(exceptText)")
            }
            exceptions.append(except)
        }
        return .cidr(cidr, except: exceptions)
    }

    func icmpType(from field: YAMLField) throws(PolicyError) -> ICMPType {
        let map = try field.mapping(allowed: ["type", "family"])
        let familyField = map.optional("family")
        let family = try familyField?.string() ?? "IPv4"
        if let familyField, family != "IPv4", family != "IPv6" {
            throw familyField.error("expected IPv4 or IPv6, got \(Self.quoted(family))")
        }
        let typeField = try map.required("type", "an ICMP type number or name")
        let text = try typeField.string()
        let isIPv6 = family == "IPv6"
        if let number = UInt8(text) { return ICMPType(type: number, isIPv6: isIPv6) }
        let names: [String: (UInt8, UInt8)] = [
            "EchoReply": (0, 129), "DestinationUnreachable": (3, 1), "Redirect": (5, 137), "Echo": (8, 128),
            "EchoRequest": (8, 128), "TimeExceeded": (11, 3), "ParameterProblem": (12, 4),
        ]
        guard let pair = names[text] else {
            throw typeField.error("expected an ICMP type 0-255 or one of \(names.keys.sorted().joined(separator: ", ")), got \(Self.quoted(text))")
        }
        return ICMPType(type: isIPv6 ? pair.1 : pair.0, isIPv6: isIPv6)
    }

    // MARK: Ports and L7

    func portRule(from field: YAMLField, index: Int, direction: Direction, deny: Bool) throws(PolicyError) -> PortRule {
        let allowed = deny ? ["ports"] : ["ports", "rules", "serverNames", "terminatingTLS", "originatingTLS", "listener"]
        let map = try field.mapping(allowed: allowed)
        if let listener = map.optional("listener") { throw listener.error("custom Envoy listeners are not supported by Sluice") }
        let portsField = map.optional("ports")
        let portFields = try portsField?.sequence() ?? []
        if let portsField, portFields.count > Self.maximumPortsPerRule {
            throw portsField.error("too many ports (\(portFields.count)); the maximum is \(Self.maximumPortsPerRule)")
        }
        var rulesField = map.optional("rules")
        var hasDNS = false
        if let rules = rulesField {
            let rulesMap = try rules.mapping(allowed: ["http", "kafka", "dns", "l7proto", "l7"])
            if let dns = rulesMap.present("dns") {
                hasDNS = true
                if direction == .ingress { throw dns.error("DNS rules are not allowed on ingress; expected them under egress") }
            }
            if rulesMap.order.isEmpty { rulesField = nil }
        }
        var ports: [(selector: PortSelector, field: YAMLField)] = []
        for element in portFields { ports.append((try portSelector(from: element, hasDNS: hasDNS), element)) }

        var l7: L7Rules? = nil
        if let rules = rulesField {
            l7 = try l7Rules(from: rules, ports: ports)
        }
        let serverNames = try map.optional("serverNames")?.stringList() ?? []
        if let names = map.optional("serverNames") {
            if serverNames.contains("") { throw names.error("expected non-empty server names") }
            if l7 != nil, map.optional("terminatingTLS") == nil {
                throw names.error("serverNames with L7 rules need terminatingTLS")
            }
        }
        return PortRule(index: index, ports: ports.map(\.selector), l7: l7, serverNames: serverNames)
    }

    func portSelector(from field: YAMLField, hasDNS: Bool) throws(PolicyError) -> PortSelector {
        let map = try field.mapping(allowed: ["port", "endPort", "protocol"])
        let portField = try map.required("port", "a port number 0-65535 or a port name")
        let text = try portField.string()
        let port: PortSelector.Port
        if Self.isServiceName(text) {
            port = .named(text.lowercased())
        } else if text.utf8.count <= 5, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }), let number = UInt16(text) {
            // Digits only, as the reference's port pattern: no sign, no spaces, no overflow.
            port = .number(number)
        } else {
            throw portField.error("expected a port number 0-65535 or a port name (IANA service name: letters, digits and '-', at most 15 characters), got \(Self.quoted(text))")
        }
        var protocols = PortSelector.anyProtocol
        if let protocolField = map.optional("protocol") {
            let protocolText = try protocolField.string().uppercased()
            switch protocolText {
            case "TCP": protocols = [.tcp]
            case "UDP": protocols = [.udp]
            case "SCTP": protocols = [.sctp]
            case "ANY", "": protocols = PortSelector.anyProtocol
            default: throw protocolField.error("expected TCP, UDP, SCTP or ANY, got \(Self.quoted(protocolText))")
            }
        }
        var endPort: UInt16? = nil
        if let endField = map.optional("endPort") {
            let end = try endField.integer(in: 0...65535, what: "an end port number")
            guard case .number(let start) = port else { throw endField.error("endPort needs a numeric port, not a named port") }
            if hasDNS, end > Int(start) { throw endField.error("DNS rules do not support port ranges; expected no endPort") }
            if end > Int(start) {
                guard start != 0 else { throw endField.error("endPort needs a non-zero port") }
                endPort = UInt16(end)
            } else if end < Int(start), end != 0 {
                throw endField.error("expected endPort >= port (\(start)), got \(end)")
            }
        }
        return PortSelector(port: port, endPort: endPort, protocols: protocols)
    }

    func l7Rules(from field: YAMLField, ports: [(selector: PortSelector, field: YAMLField)]) throws(PolicyError) -> L7Rules? {
        let map = try field.mapping(allowed: ["http", "kafka", "dns", "l7proto", "l7"])
        if let proto = map.optional("l7proto") ?? map.optional("l7") {
            throw proto.error("generic L7 (l7proto) parsers are not supported by Sluice; expected http, kafka or dns")
        }
        let present = ["http", "kafka", "dns"].compactMap { name in map.present(name).map { (name: name, field: $0) } }
        if present.count > 1 {
            throw present[1].field.error("one L7 type per port rule: cannot combine \(present[0].name) and \(present[1].name)")
        }
        guard case let (type, typeField)? = present.first else { return nil }
        let elements = try typeField.sequence()
        // An empty list means "no L7 rules" (Cilium's L7Rules.IsEmpty): L3/L4 only.
        if elements.isEmpty { return nil }

        // "L7 rules need a non-zero port"; "L7 is TCP-only except DNS".
        guard !ports.isEmpty else {
            throw field.error(type == "dns" ? "DNS rules need an explicit port (53); expected toPorts[].ports" : "L7 rules need a port; expected toPorts[].ports with a non-zero port")
        }
        for (port, portField) in ports {
            if case .number(0) = port.port { throw portField.error("L7 rules can not be used when a port is 0; expected a non-zero port") }
            if type != "dns", port.protocols != [.tcp] {
                throw portField.error("L7 rules can only apply to TCP (not \(port.protocols.count >= 3 ? "ANY" : port.protocols.map(\.rawValue).sorted().joined(separator: "+"))) except for DNS rules; expected protocol: TCP")
            }
        }
        switch type {
        case "http":
            var rules: [HTTPRule] = []
            for (index, element) in elements.enumerated() { rules.append(try httpRule(from: element, index: index)) }
            return .http(rules)
        case "kafka":
            var rules: [KafkaRule] = []
            for (index, element) in elements.enumerated() { rules.append(try kafkaRule(from: element, index: index)) }
            return .kafka(rules)
        default:
            var rules: [DNSMatcher] = []
            for element in elements { rules.append(try dnsMatcher(from: element)) }
            return .dns(rules)
        }
    }

    func httpRule(from field: YAMLField, index: Int) throws(PolicyError) -> HTTPRule {
        let map = try field.mapping(allowed: ["method", "path", "host", "headers", "headerMatches"])
        func pattern(_ name: String) throws(PolicyError) -> PCRE2Pattern? {
            guard let patternField = map.optional(name) else { return nil }
            let text = try patternField.string()
            do {
                return try PCRE2Pattern(text)
            } catch {
                throw patternField.error("expected a regular expression (PCRE2): \(error)")
            }
        }
        var headers: [(name: String, value: String?)] = []
        for element in try map.list("headers") {
            let text = try element.string()
            if let colon = text.firstIndex(of: ":") {
                let name = text[..<colon].trimmingCharacters(in: .whitespaces)
                let value = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                guard Self.isHeaderName(name) else { throw element.error("expected \"Name: value\" or \"Name\" with a valid header name, got \(Self.quoted(text))") }
                headers.append((name.lowercased(), value))
            } else {
                let name = text.trimmingCharacters(in: .whitespaces)
                guard Self.isHeaderName(name) else { throw element.error("expected \"Name: value\" or \"Name\" with a valid header name, got \(Self.quoted(text))") }
                headers.append((name.lowercased(), nil))
            }
        }
        var headerMatches: [HeaderMatch] = []
        for element in try map.list("headerMatches") {
            let matchMap = try element.mapping(allowed: ["name", "value", "secret", "mismatch"])
            let nameField = try matchMap.required("name", "a header name")
            let name = try nameField.string()
            guard Self.isHeaderName(name) else { throw nameField.error("expected a header name (token characters), got \(Self.quoted(name))") }
            var value: HeaderValue? = nil
            if let secret = matchMap.optional("secret") {
                if matchMap.optional("value") != nil { throw secret.error("expected value or secret, not both") }
                value = try secretValue(from: secret)
            } else if let valueField = matchMap.optional("value") {
                value = HeaderValue(try valueField.string(), isSecret: false)
            }
            var mismatch = HeaderMatch.Mismatch.deny
            if let mismatchField = matchMap.optional("mismatch") {
                let text = try mismatchField.string()
                switch (text, value) {
                case ("LOG", _): mismatch = .log
                case ("DELETE", _): mismatch = .delete
                case ("ADD", let value?): mismatch = .add(value)
                case ("REPLACE", let value?): mismatch = .replace(value)
                case ("ADD", nil), ("REPLACE", nil): throw mismatchField.error("\(text) needs a value or secret to set")
                default: throw mismatchField.error("expected LOG, ADD, DELETE or REPLACE, got \(Self.quoted(text))")
                }
            }
            headerMatches.append(HeaderMatch(name: name.lowercased(), value: value, mismatch: mismatch))
        }
        return HTTPRule(index: index, method: try pattern("method"), path: try pattern("path"), host: try pattern("host"),
                        headers: headers, headerMatches: headerMatches)
    }

    func secretValue(from field: YAMLField) throws(PolicyError) -> HeaderValue {
        let map = try field.mapping(allowed: ["namespace", "name"])
        let name = try map.required("name", "the secret name").string()
        let namespace = try map.string("namespace") ?? "default"
        guard Self.isDNSSubdomain(name), Self.isDNSLabel(namespace) else {
            throw field.error("expected a secret namespace and name (DNS names), got \(Self.quoted(namespace + "/" + name))")
        }
        guard let directory = options.secretsDirectory else {
            throw field.error("secret \(namespace)/\(name) cannot be read: no secrets directory configured (--secrets-dir)")
        }
        let path = "\(directory)/\(namespace)/\(name)"
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64 << 10,
              var text = String(data: data, encoding: .utf8) else {
            throw field.error("secret \(namespace)/\(name) cannot be read: expected a UTF-8 file of at most 64 KiB at \(path)")
        }
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        return HeaderValue(text, isSecret: true)
    }

    func kafkaRule(from field: YAMLField, index: Int) throws(PolicyError) -> KafkaRule {
        let map = try field.mapping(allowed: ["role", "apiKey", "apiVersion", "clientID", "topic"])
        var apiKeys: Set<Int16>? = nil
        if let role = map.optional("role") {
            if let apiKey = map.optional("apiKey") { throw apiKey.error("role and apiKey are mutually exclusive") }
            switch try role.string().lowercased() {
            case "produce": apiKeys = KafkaAPIKeys.produceRole
            case "consume": apiKeys = KafkaAPIKeys.consumeRole
            default: throw role.error("expected produce or consume, got \(role.shown)")
            }
        } else if let apiKeyField = map.optional("apiKey") {
            let text = try apiKeyField.string()
            if let number = Int16(text), KafkaAPIKeys.names[number] != nil {
                apiKeys = [number]
            } else if let key = KafkaAPIKeys.key(named: text) {
                apiKeys = [key]
            } else {
                throw apiKeyField.error("expected a Kafka API key name such as produce, fetch, metadata, offsetcommit (or its number), got \(Self.quoted(text))")
            }
        }
        var apiVersion: Int16? = nil
        if let versionField = map.optional("apiVersion") {
            let text = try versionField.string()
            if !text.isEmpty {
                guard let version = Int16(text), version >= 0 else {
                    throw versionField.error("expected an API version number 0-32767, got \(Self.quoted(text))")
                }
                apiVersion = version
            }
        }
        var clientID: String? = nil
        if let clientField = map.optional("clientID") {
            let text = try clientField.string()
            if text.utf8.count > 255 { throw clientField.error("expected a client ID of at most 255 bytes") }
            if !text.isEmpty { clientID = text }
        }
        var topic: String? = nil
        if let topicField = map.optional("topic") {
            let text = try topicField.string()
            if !text.isEmpty {
                guard text.utf8.count <= 255, text.utf8.allSatisfy(Self.isTopicByte) else {
                    throw topicField.error("expected a topic of at most 255 characters from [a-zA-Z0-9._-], got \(Self.quoted(text))")
                }
                topic = text
            }
        }
        return KafkaRule(index: index, apiKeys: apiKeys, apiVersion: apiVersion, clientID: clientID, topic: topic)
    }

    func dnsMatcher(from field: YAMLField) throws(PolicyError) -> DNSMatcher {
        let map = try field.mapping(allowed: ["matchName", "matchPattern"])
        let name = map.optional("matchName")
        let pattern = map.optional("matchPattern")
        switch (name, pattern) {
        case (.some(let nameField), nil):
            let text = try nameField.string()
            if let problem = DNSName.problem(in: text, isPattern: false) {
                throw nameField.error("\(problem); expected a DNS name such as \"api.example.com\", got \(Self.quoted(text))")
            }
            return DNSMatcher(name: text)
        case (nil, .some(let patternField)):
            let text = try patternField.string()
            if let problem = DNSName.problem(in: text, isPattern: true) {
                throw patternField.error("\(problem); expected a DNS pattern such as \"*.example.com\", got \(Self.quoted(text))")
            }
            return DNSMatcher(pattern: text)
        case (.some, .some(let patternField)):
            throw patternField.error("expected matchName or matchPattern, not both")
        case (nil, nil):
            throw field.error("expected matchName or matchPattern")
        }
    }

    // MARK: Selectors

    func labelSelector(from field: YAMLField) throws(PolicyError) -> LabelSelector {
        let map = try field.mapping(allowed: ["matchLabels", "matchExpressions"])
        var requirements: [LabelSelector.Requirement] = []
        if let labels = map.optional("matchLabels") {
            let labelsMap = try labels.mapping(allowed: nil)
            for key in labelsMap.order {
                guard let valueField = labelsMap.present(key) else { continue }
                let value = valueField.isNull ? "" : try valueField.string()
                guard !key.isEmpty else { throw valueField.error("expected a non-empty label key") }
                requirements.append(LabelSelector.Requirement(selectorKey: key, operator: .in, values: [value]))
            }
        }
        for element in try map.list("matchExpressions") {
            let expression = try element.mapping(allowed: ["key", "operator", "values"])
            let key = try expression.required("key", "a label key").string()
            let operatorField = try expression.required("operator", "In, NotIn, Exists or DoesNotExist")
            let operatorText = try operatorField.string()
            guard let op = LabelSelector.Requirement.Operator(rawValue: operatorText) else {
                throw operatorField.error("expected In, NotIn, Exists or DoesNotExist, got \(Self.quoted(operatorText))")
            }
            let valuesField = expression.optional("values")
            let values = try valuesField?.stringList() ?? []
            let takesValues = op == .in || op == .notIn
            if takesValues, values.isEmpty {
                throw element.error("operator \(operatorText) needs a non-empty values list")
            }
            if !takesValues, let valuesField, !values.isEmpty {
                throw valuesField.error("operator \(operatorText) takes no values")
            }
            requirements.append(LabelSelector.Requirement(selectorKey: key, operator: op, values: values))
        }
        return LabelSelector(requirements: requirements)
    }

    // MARK: Name rules

    /// `text` in quotes for a message, cut to 80 characters: an error names the bad
    /// value without copying a huge scalar into every log line.
    static func quoted(_ text: String) -> String {
        text.count > 80 ? "\"\(text.prefix(80))...\"" : "\"\(text)\""
    }

    /// RFC 1123 subdomain, as Kubernetes object names.
    static func isDNSSubdomain(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253 else { return false }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isDNSLabel(String($0), limit: 253) }
    }

    /// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
    static func isDNSLabel(_ text: String, limit: Int = 63) -> Bool {
        let bytes = text.utf8
        guard let first = bytes.first, let last = bytes.last, bytes.count <= limit else { return false }
        func alphanumeric(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        return alphanumeric(first) && alphanumeric(last) && bytes.allSatisfy { alphanumeric($0) || $0 == UInt8(ascii: "-") }
    }

    /// IANA service name (RFC 6335 §5.1): 1-15 of `[a-z0-9-]`, at least one letter,
    /// no leading, trailing or doubled `-`. Case-insensitive, as Cilium normalises.
    static func isServiceName(_ text: String) -> Bool {
        let lowered = Array(text.lowercased().utf8)
        guard !lowered.isEmpty, lowered.count <= 15, lowered.first != UInt8(ascii: "-"), lowered.last != UInt8(ascii: "-") else { return false }
        var previousDash = false
        var hasLetter = false
        for byte in lowered {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"): hasLetter = true; previousDash = false
            case UInt8(ascii: "0")...UInt8(ascii: "9"): previousDash = false
            case UInt8(ascii: "-"):
                if previousDash { return false }
                previousDash = true
            default: return false
            }
        }
        return hasLetter
    }

    /// RFC 9110 token characters.
    static func isHeaderName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default:
                return "!#$%&'*+-.^_`|~".utf8.contains(byte) || (byte == UInt8(ascii: ":") && text.hasPrefix(":"))
            }
        }
    }

    /// Kafka topic characters: `[a-zA-Z0-9._-]`.
    static func isTopicByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }
}
