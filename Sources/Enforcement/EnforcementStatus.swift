import Datapath
import Proxy

/// Policy loads of one `sluice run`: how many succeeded (the generation) and how the last
/// one went.
struct LoadHistory: Sendable {
    var generation: UInt64 = 0
    var failures: UInt64 = 0
    var lastTime: UInt64 = 0
    var lastCause = ""
    /// nil when the last load succeeded.
    var lastError: String?

    mutating func record(cause: String, error: String?) {
        if error == nil { generation += 1 } else { failures += 1 }
        lastTime = WallClock.nanosecondsNow()
        lastCause = cause
        lastError = error
    }
}

extension PolicyEnforcement {
    /// nil once policies are loaded and the datapath attached (`/readyz`), else why not.
    public var notReady: String? {
        guard installed.load(ordering: .acquiring) else {
            return configuration.datapath.mode == .none ? "starting" : "datapath not attached yet"
        }
        if configuration.policy != nil, loads.withLock({ $0.generation }) == 0 { return "policies not loaded" }
        return nil
    }

    /// The policy and datapath parts of `sluice status`.
    public func status() -> JSONObject {
        var status = JSONObject()
        let history = loads.withLock { $0 }
        var policy = JSONObject()
        policy["configured"] = .bool(configuration.policy != nil)
        policy["generation"] = .unsigned(history.generation)
        policy["load_failures"] = .unsigned(history.failures)
        if history.lastTime > 0 {
            var last = JSONObject()
            last["time"] = .string(WallClock.rfc3339(history.lastTime))
            last["cause"] = .string(history.lastCause)
            last["result"] = .string(history.lastError == nil ? "loaded" : "not applied")
            if let error = history.lastError { last["error"] = .string(error) }
            policy["last_load"] = .object(last)
        }
        policy["files"] = .array(watchedFiles.map { file in
            var entry = JSONObject()
            entry["path"] = .string(file)
            if let error = history.lastError {
                entry["result"] = .string(error.contains(file) ? "error: \(error)" : "unchanged (the previous policy stays in force)")
            } else {
                entry["result"] = .string(history.generation > 0 ? "loaded" : "not loaded")
            }
            return .object(entry)
        })
        status["policy"] = .object(policy)
        if let kubernetes = kubernetesStatus() { status["kubernetes"] = .object(kubernetes) }

        var datapath = JSONObject()
        datapath["mode"] = .string(installed.load(ordering: .acquiring) ? mode.rawValue : configuration.datapath.mode.rawValue)
        datapath["attached"] = .bool(installed.load(ordering: .acquiring) && mode != .none)
        if mode == .bpf, let maps = try? DatapathMaps(pinRoot: configuration.datapath.pinRoot) {
            var counters = JSONObject()
            for counter in DatapathCounter.allCases { counters[counter.name] = .unsigned(maps.counters.total(counter.rawValue)) }
            datapath["counters"] = .object(counters)
            datapath["maps"] = .array(maps.fill().map { map in
                var entry = JSONObject()
                entry["name"] = .string(map.name)
                entry["entries"] = .unsigned(UInt64(map.entries))
                entry["capacity"] = .unsigned(UInt64(map.capacity))
                return .object(entry)
            })
        }
        status["datapath"] = .object(datapath)
        if let learner {
            var fqdn = JSONObject()
            fqdn["learned_addresses"] = .unsigned(UInt64(learner.count))
            status["fqdn"] = .object(fqdn)
        }
        return status
    }

    /// Sluice's own series from the policy side: generation and last load, datapath map
    /// fill and counters, the FQDN cache, and the L7 redirects the datapath holds.
    public func metricFamilies() -> [MetricFamily] {
        let history = loads.withLock { $0 }
        var generation = MetricFamily("sluice_policy_generation", .gauge, "Policy loads applied since start (1 after the first)")
        generation.add([], Double(history.generation))
        var lastError = MetricFamily("sluice_policy_last_load_error", .gauge,
                                     "1 when the last policy load failed (the previous policy stays in force), else 0")
        lastError.add([], history.lastError == nil ? 0.0 : 1.0)
        var failures = MetricFamily("sluice_policy_load_failures_total", .counter, "Policy loads that failed")
        failures.add([], Double(history.failures))
        var lastLoad = MetricFamily("sluice_policy_last_load_timestamp_seconds", .gauge, "When policies were last loaded or refused")
        lastLoad.add([], Double(history.lastTime / 1_000_000) / 1000)
        var families = [generation, lastError, failures, lastLoad]

        var entries = MetricFamily("sluice_datapath_map_entries", .gauge, "Entries in each datapath map")
        var capacity = MetricFamily("sluice_datapath_map_capacity", .gauge, "Capacity (max_entries) of each datapath map")
        var counters = MetricFamily("sluice_datapath_events_total", .counter, "Datapath counters per reason (packets or new flows)")
        var redirects = MetricFamily("cilium_proxy_redirects", .gauge,
                                     "Number of redirects installed for endpoints (L7 policy entries diverting to the proxy)")
        if mode == .bpf, installed.load(ordering: .acquiring), let maps = try? DatapathMaps(pinRoot: configuration.datapath.pinRoot) {
            for map in maps.fill() {
                entries.add([("map", map.name)], Double(map.entries))
                capacity.add([("map", map.name)], Double(map.capacity))
            }
            for counter in DatapathCounter.allCases {
                counters.add([("reason", counter.name)], maps.counters.total(counter.rawValue))
            }
        }
        let (tcp, udp) = state.withLock { state in
            state.policy.reduce(into: (0, 0)) { counts, entry in
                guard entry.value.action == .redirect else { return }
                if entry.key.ipProtocol == 17 { counts.1 += 1 } else { counts.0 += 1 }
            }
        }
        redirects.add([("protocol", "tcp")], Double(tcp))
        redirects.add([("protocol", "udp")], Double(udp))
        families += [entries, capacity, counters, redirects]
        var fqdn = MetricFamily("sluice_fqdn_cache_entries", .gauge, "Addresses learned from DNS answers for toFQDNs")
        fqdn.add([], Double(learner?.count ?? 0))
        families.append(fqdn)
        families += kubernetesMetricFamilies()
        return families
    }
}
