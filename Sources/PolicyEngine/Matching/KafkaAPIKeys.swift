/// Kafka API keys by name, as the Kafka protocol's message schemas name them
/// (`clients/src/main/resources/common/message/*Request.json`, "apiKey").
///
/// Cilium only knew keys 0-33; Sluice knows every key current Kafka defines. Names are
/// matched case-insensitively with `-`/`_` ignored, so `OffsetCommit`, `offsetcommit`
/// and `offset_commit` are the same key; Cilium's short alias `offsets` (ListOffsets)
/// is kept.
public enum KafkaAPIKeys {
    /// Key number -> schema name.
    public static let names: [Int16: String] = [
        0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 4: "LeaderAndIsr",
        5: "StopReplica", 6: "UpdateMetadata", 7: "ControlledShutdown", 8: "OffsetCommit",
        9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
        13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
        17: "SaslHandshake", 18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics",
        21: "DeleteRecords", 22: "InitProducerId", 23: "OffsetForLeaderEpoch",
        24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn", 27: "WriteTxnMarkers",
        28: "TxnOffsetCommit", 29: "DescribeAcls", 30: "CreateAcls", 31: "DeleteAcls",
        32: "DescribeConfigs", 33: "AlterConfigs", 34: "AlterReplicaLogDirs",
        35: "DescribeLogDirs", 36: "SaslAuthenticate", 37: "CreatePartitions",
        38: "CreateDelegationToken", 39: "RenewDelegationToken", 40: "ExpireDelegationToken",
        41: "DescribeDelegationToken", 42: "DeleteGroups", 43: "ElectLeaders",
        44: "IncrementalAlterConfigs", 45: "AlterPartitionReassignments",
        46: "ListPartitionReassignments", 47: "OffsetDelete", 48: "DescribeClientQuotas",
        49: "AlterClientQuotas", 50: "DescribeUserScramCredentials",
        51: "AlterUserScramCredentials", 52: "Vote", 53: "BeginQuorumEpoch",
        54: "EndQuorumEpoch", 55: "DescribeQuorum", 56: "AlterPartition", 57: "UpdateFeatures",
        58: "Envelope", 59: "FetchSnapshot", 60: "DescribeCluster", 61: "DescribeProducers",
        62: "BrokerRegistration", 63: "BrokerHeartbeat", 64: "UnregisterBroker",
        65: "DescribeTransactions", 66: "ListTransactions", 67: "AllocateProducerIds",
        68: "ConsumerGroupHeartbeat", 69: "ConsumerGroupDescribe", 70: "ControllerRegistration",
        71: "GetTelemetrySubscriptions", 72: "PushTelemetry", 73: "AssignReplicasToDirs",
        74: "ListConfigResources", 75: "DescribeTopicPartitions", 76: "ShareGroupHeartbeat",
        77: "ShareGroupDescribe", 78: "ShareFetch", 79: "ShareAcknowledge", 80: "AddRaftVoter",
        81: "RemoveRaftVoter", 82: "UpdateRaftVoter", 83: "InitializeShareGroupState",
        84: "ReadShareGroupState", 85: "WriteShareGroupState", 86: "DeleteShareGroupState",
        87: "ReadShareGroupStateSummary", 88: "StreamsGroupHeartbeat", 89: "StreamsGroupDescribe",
        90: "DescribeShareGroupOffsets", 91: "AlterShareGroupOffsets", 92: "DeleteShareGroupOffsets",
    ]

    /// Older names still found in policies, mapped to their key.
    static let aliases: [String: Int16] = [
        "offsets": 2,                      // Cilium's name for ListOffsets
        "listclientmetricsresources": 74,  // the name of key 74 before Kafka 4.1
        "alterisr": 56,                    // the name of key 56 before Kafka 3.0
    ]

    private static let byFoldedName: [String: Int16] = {
        var table = aliases
        for (key, name) in names { table[fold(name)] = key }
        return table
    }()

    static func fold(_ name: String) -> String {
        String(name.lowercased().filter { $0 != "-" && $0 != "_" })
    }

    /// The key for `name` (case-insensitive), or nil when Kafka defines no such API.
    public static func key(named name: String) -> Int16? {
        byFoldedName[fold(name)]
    }

    /// The schema name of `key`, or `apiKey N` for an unknown key.
    public static func name(of key: Int16) -> String {
        names[key] ?? "apiKey \(key)"
    }

    /// `role: produce`: Produce, Metadata, ApiVersions (Cilium's expansion).
    public static let produceRole: Set<Int16> = [0, 3, 18]
    /// `role: consume`: Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch,
    /// FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup, ApiVersions.
    public static let consumeRole: Set<Int16> = [1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18]
}
