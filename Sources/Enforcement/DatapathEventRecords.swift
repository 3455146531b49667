import Datapath
import PolicyEngine
import Proxy

extension FlowRecords {
    /// A datapath drop or redirect as a flow record, identities and the deciding rule named
    /// from the datapath state in force (`names`, `rules`) where known.
    public static func datapathEvent(_ event: DatapathEvent, names: [UInt32: String] = [:],
                                     rules: [UInt32: String] = [:]) -> JSONObject {
        let transport = [6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"][Int(event.ipProtocol)] ?? "\(event.ipProtocol)"
        let path = FlowPath(source: (event.source.address.description, event.source.port),
                            destination: (event.destination.address.description, event.destination.port),
                            isIPv6: event.isIPv6, transport: transport)
        // An event of a kind this build does not know is reported as a redirect, as before.
        let action: DatapathAction = event.kind == .drop
            ? .dropped(reason: DatapathCounter.dropReason(event.reasonCode)) : .redirected(proxyPort: event.proxyPort)
        return datapath(action, path: path,
                        source: FlowEndpoint(identity: event.sourceIdentity, name: names[event.sourceIdentity]),
                        destination: FlowEndpoint(identity: event.destinationIdentity, name: names[event.destinationIdentity]),
                        direction: event.direction == .ingress ? .ingress : .egress, policy: rules[event.rule])
    }
}
