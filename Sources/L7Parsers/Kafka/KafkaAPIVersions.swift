/// What Sluice lets a broker offer in its ApiVersions answer (ApiVersionsResponse.json):
/// only the APIs and versions the generated schemas describe. A client then never sends a
/// request Sluice could not read or, if denied, could not answer in its own shape (a newer
/// Produce version, or an API such as GetTelemetrySubscriptions that the schemas lack).
public enum KafkaAPIVersions {
    /// The answer with unknown APIs left out and each known API's `MaxVersion` lowered to
    /// the newest version its schemas define; nil when nothing had to change.
    public static func restricted(_ response: KafkaStruct) -> KafkaStruct? {
        let root = KafkaMessages.ApiVersionsResponse.schema.root
        guard let keysIndex = root.index(of: "ApiKeys"), case .array(.structure(let entry)) = root.fields[keysIndex].type,
              let keyIndex = entry.index(of: "ApiKey"), let minIndex = entry.index(of: "MinVersion"),
              let maxIndex = entry.index(of: "MaxVersion"),
              case .array(let keys?) = response.values[keysIndex] else { return nil }
        var changed = false
        var kept: [KafkaValue] = []
        for case .structure(var item?) in keys {
            guard case .int(let key) = item.values[keyIndex], case .int(let lowest) = item.values[minIndex],
                  case .int(let highest) = item.values[maxIndex] else { continue }
            guard let api = KafkaMessages.apis[Int16(truncatingIfNeeded: key)],
                  lowest <= Int64(api.request.versions.highest) else {
                changed = true
                continue
            }
            let newest = min(highest, Int64(min(api.request.versions.highest, api.response.versions.highest)))
            if newest != highest {
                item.values[maxIndex] = .int(newest)
                changed = true
            }
            kept.append(.structure(item))
        }
        guard changed else { return nil }
        var restricted = response
        restricted.values[keysIndex] = .array(kept)
        return restricted
    }
}
