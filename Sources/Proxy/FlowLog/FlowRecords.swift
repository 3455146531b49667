/// Flow records of the L4 relay, in the shape of the reference's flow JSON (Hubble's
/// protobuf field names), so existing tooling reads them.
public enum FlowRecords {
    public static func connection(_ summary: ConnectionSummary) -> JSONObject {
        var record = JSONObject()
        record["time"] = .string(WallClock.rfc3339Now())
        record["verdict"] = .string(summary.outcome == .upstreamUnreachable || summary.outcome == .connectTimeout ? "ERROR" : "FORWARDED")
        record["IP"] = .object(ip(source: summary.client, destination: summary.destination))
        record["l4"] = .object(l4("TCP", source: summary.client, destination: summary.destination))
        record["Type"] = .string("L3_L4")
        record["is_reply"] = .bool(false)
        var proxy = JSONObject()
        proxy["listener"] = .string(summary.listener)
        proxy["outcome"] = .string(summary.outcome.rawValue)
        proxy["bytes_from_client"] = .unsigned(summary.bytesFromClient)
        proxy["bytes_from_server"] = .unsigned(summary.bytesFromServer)
        proxy["duration_ns"] = .unsigned(summary.durationNanoseconds)
        record["proxy"] = .object(proxy)
        record["Summary"] = .string("TCP \(summary.client) -> \(summary.destination) \(summary.outcome.rawValue), "
            + "\(summary.bytesFromClient) B sent, \(summary.bytesFromServer) B received")
        return record
    }

    public static func datagramSession(client: SocketAddress, destination: SocketAddress, listener: String,
                                       fromClient: UInt64, fromServer: UInt64) -> JSONObject {
        var record = JSONObject()
        record["time"] = .string(WallClock.rfc3339Now())
        record["verdict"] = .string("FORWARDED")
        record["IP"] = .object(ip(source: client, destination: destination))
        record["l4"] = .object(l4("UDP", source: client, destination: destination))
        record["Type"] = .string("L3_L4")
        record["is_reply"] = .bool(false)
        var proxy = JSONObject()
        proxy["listener"] = .string(listener)
        proxy["datagrams_from_client"] = .unsigned(fromClient)
        proxy["datagrams_from_server"] = .unsigned(fromServer)
        record["proxy"] = .object(proxy)
        record["Summary"] = .string("UDP \(client) -> \(destination), \(fromClient) datagrams sent, \(fromServer) received")
        return record
    }

    /// A connection or datagram the proxy refused; with `destination`, the record carries
    /// the L4 ports of `transport` ("TCP" or "UDP") too.
    public static func dropped(client: SocketAddress, destination: SocketAddress? = nil, transport: String = "TCP",
                               listener: String, reason: String) -> JSONObject {
        var record = JSONObject()
        record["time"] = .string(WallClock.rfc3339Now())
        record["verdict"] = .string("DROPPED")
        record["IP"] = .object(ip(source: client, destination: destination))
        if let destination { record["l4"] = .object(l4(transport, source: client, destination: destination)) }
        record["Type"] = .string("L3_L4")
        record["drop_reason_desc"] = .string(reason)
        var proxy = JSONObject()
        proxy["listener"] = .string(listener)
        record["proxy"] = .object(proxy)
        record["Summary"] = .string("dropped from \(client)" + (destination.map { " to \($0)" } ?? "") + ": \(reason)")
        return record
    }

    private static func ip(source: SocketAddress, destination: SocketAddress?) -> JSONObject {
        var ip = JSONObject()
        ip["source"] = .string(source.host)
        if let destination { ip["destination"] = .string(destination.host) }
        ip["ipVersion"] = .string(source.isIPv6 ? "IPv6" : "IPv4")
        return ip
    }

    private static func l4(_ transport: String, source: SocketAddress, destination: SocketAddress) -> JSONObject {
        var ports = JSONObject()
        ports["source_port"] = .unsigned(UInt64(source.port))
        ports["destination_port"] = .unsigned(UInt64(destination.port))
        var l4 = JSONObject()
        l4[transport] = .object(ports)
        return l4
    }
}
