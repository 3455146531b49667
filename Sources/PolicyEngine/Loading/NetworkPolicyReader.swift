/// Converts a `networking.k8s.io/v1` NetworkPolicy spec into the same `PolicyRule`
/// a Cilium rule becomes, following Kubernetes semantics:
///
/// - `podSelector` selects pods of the policy's namespace;
/// - `policyTypes` (default: Ingress, plus Egress when `egress` is present) are the
///   directions that become default-deny; rules of a direction not listed are ignored;
/// - a peer with only `podSelector` selects pods of the same namespace, with only
///   `namespaceSelector` all pods of matching namespaces, with both the matching pods
///   of matching namespaces; `ipBlock` selects addresses outside the cluster;
/// - a rule with no `from`/`to` allows every peer, one with no `ports` every port.
struct NetworkPolicyReader {
    let reader: DocumentReader
    let namespace: String

    func rule(from spec: YAMLField) throws(PolicyError) -> PolicyRule {
        let map = try spec.mapping(allowed: ["podSelector", "policyTypes", "ingress", "egress"])
        let podSelector = try reader.labelSelector(from: try map.required("podSelector", "a label selector ({} for every pod)"))
        var types: Set<Direction> = [.ingress]
        if map.has("egress") { types.insert(.egress) }
        if let typesField = map.optional("policyTypes") {
            types = []
            for element in try typesField.sequence() {
                switch try element.string() {
                case "Ingress": types.insert(.ingress)
                case "Egress": types.insert(.egress)
                default: throw element.error("expected Ingress or Egress, got \(element.shown)")
                }
            }
        }
        var ingress: [PeerRule] = []
        for (index, element) in try map.list("ingress").enumerated() {
            ingress.append(try peerRule(from: element, peersKey: "from", index: index))
        }
        var egress: [PeerRule] = []
        for (index, element) in try map.list("egress").enumerated() {
            egress.append(try peerRule(from: element, peersKey: "to", index: index))
        }
        return PolicyRule(subject: .endpoints(podSelector.scoped(to: namespace)),
                          ingress: types.contains(.ingress) ? ingress : [], ingressDeny: [],
                          egress: types.contains(.egress) ? egress : [], egressDeny: [],
                          defaultDenyIngress: types.contains(.ingress), defaultDenyEgress: types.contains(.egress),
                          description: nil)
    }

    func peerRule(from field: YAMLField, peersKey: String, index: Int) throws(PolicyError) -> PeerRule {
        let map = try field.mapping(allowed: [peersKey, "ports"])
        var peers: [Peer]? = nil
        let peerFields = try map.list(peersKey)
        if !peerFields.isEmpty {
            var list: [Peer] = []
            for element in peerFields { list.append(try peer(from: element)) }
            peers = list
        }
        var ports: [PortSelector] = []
        for element in try map.list("ports") {
            let portMap = try element.mapping(allowed: ["port", "endPort", "protocol"])
            var protocols: Set<TransportProtocol> = [.tcp]
            if let protocolField = portMap.optional("protocol") {
                switch try protocolField.string() {
                case "TCP": protocols = [.tcp]
                case "UDP": protocols = [.udp]
                case "SCTP": protocols = [.sctp]
                default: throw protocolField.error("expected TCP, UDP or SCTP, got \(protocolField.shown)")
                }
            }
            var port = PortSelector.Port.number(0)
            if let portField = portMap.optional("port") {
                let text = try portField.string()
                if let number = UInt16(text), number > 0 {
                    port = .number(number)
                } else if DocumentReader.isServiceName(text) {
                    port = .named(text.lowercased())
                } else {
                    throw portField.error("expected a port number 1-65535 or a port name, got \(DocumentReader.quoted(text))")
                }
            }
            var endPort: UInt16? = nil
            if let endField = portMap.optional("endPort") {
                let end = try endField.integer(in: 1...65535, what: "an end port number")
                guard case .number(let start) = port, start > 0 else {
                    throw endField.error("endPort needs a numeric port")
                }
                guard end >= Int(start) else { throw endField.error("expected endPort >= port (\(start)), got \(end)") }
                if end > Int(start) { endPort = UInt16(end) }
            }
            ports.append(PortSelector(port: port, endPort: endPort, protocols: protocols))
        }
        let portRules = ports.isEmpty ? [] : [PortRule(index: 0, ports: ports, l7: nil, serverNames: [])]
        return PeerRule(index: index, peers: peers, requires: [], portRules: portRules, icmpTypes: [])
    }

    func peer(from field: YAMLField) throws(PolicyError) -> Peer {
        let map = try field.mapping(allowed: ["podSelector", "namespaceSelector", "ipBlock"])
        if let block = map.optional("ipBlock") {
            if map.has("podSelector") || map.has("namespaceSelector") {
                throw block.error("ipBlock cannot be combined with podSelector or namespaceSelector")
            }
            return try reader.cidrPeer(map: try block.mapping(allowed: ["cidr", "except"]), cidrKey: "cidr", exceptKey: "except")
        }
        let pods = try map.optional("podSelector").map { field throws(PolicyError) in try reader.labelSelector(from: field) }
        let namespaces = try map.optional("namespaceSelector").map { field throws(PolicyError) in try reader.labelSelector(from: field) }
        switch (pods, namespaces) {
        case (nil, nil):
            throw field.error("expected podSelector, namespaceSelector or ipBlock")
        case (.some(let pods), nil):
            return .endpoints(pods.scoped(to: namespace))
        case (let pods, .some(let namespaces)):
            // Namespace labels are visible on pods as k8s:io.cilium.k8s.namespace.labels.KEY.
            var requirements = namespaces.requirements.map {
                LabelSelector.Requirement(source: Label.kubernetesSource, key: Label.namespaceLabelPrefix + $0.key,
                                          operator: $0.operator, values: $0.values)
            }
            requirements.append(LabelSelector.Requirement(source: Label.kubernetesSource, key: Label.podNamespaceKey, operator: .exists, values: []))
            requirements += pods?.requirements ?? []
            return .endpoints(LabelSelector(requirements: requirements))
        }
    }
}
