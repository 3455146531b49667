import ArgumentParser
import Datapath
import Enforcement
import PolicyEngine
import Proxy
#if canImport(Glibc)
import Glibc
#endif

/// `sluice datapath ...`: the BPF programs and maps on a node.
struct DatapathCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datapath",
        abstract: "Load, attach, inspect and remove Sluice's eBPF datapath.",
        discussion: """
        The datapath is a pair of tc programs on each interface facing an endpoint or the \
        uplink: they identify both ends of every new flow, enforce L3/L4 policy (default deny \
        for selected endpoints, deny wins), and divert flows whose port has L7 rules to Sluice's \
        transparent listeners with bpf_sk_assign (failing closed when no listener is there). \
        Maps are pinned under --pin-root so 'sluice run' and 'status' can reach them.
        """,
        subcommands: [Up.self, Down.self, Status.self, Sync.self, Events.self])

    struct Location: ParsableArguments {
        @Option(name: .long, help: ArgumentHelp("Network namespace of the node (/run/netns/NAME); default: the current one.", valueName: "name"))
        var netns: String?

        @Option(name: .long, help: ArgumentHelp("Comma-separated interfaces facing endpoints and the uplink.", valueName: "if,if,..."))
        var interfaces: String

        @Option(name: .long, help: ArgumentHelp("Where the maps are pinned.", valueName: "dir"))
        var pinRoot: String = DatapathSetup.defaultPinRoot

        func validate() throws {
            guard !interfaceList.isEmpty else { throw ValidationError("--interfaces: expected at least one interface name") }
            for name in interfaceList where name.utf8.count > 15 {
                throw ValidationError("--interfaces: '\(name)' is longer than the 15 characters Linux allows")
            }
        }

        var interfaceList: [String] { interfaces.split(separator: ",").map { String($0) }.filter { !$0.isEmpty } }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load the programs, pin the maps and attach to the interfaces.")

        @OptionGroup var location: Location

        @Option(name: .long, help: ArgumentHelp("The compiled BPF object (default: built by 'make bpf' next to the binary).", valueName: "file"))
        var object: String?

        @Flag(name: .long, help: "Remove stale pins first (a reused pin keeps old entries in force).")
        var fresh = false

        func run() throws {
            let setup = DatapathSetup(namespace: location.netns, interfaces: location.interfaceList,
                                      pinRoot: location.pinRoot, objectPath: object ?? PolicyFiles.defaultBPFObject())
            do {
                try setup.up(fresh: fresh)
            } catch {
                printError("datapath up: \(error)")
                throw ExitCode(1)
            }
            print("datapath up: \(setup.interfaces.joined(separator: ", "))\(location.netns.map { " in netns \($0)" } ?? ""), maps pinned under \(setup.pinRoot)")
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Detach from the interfaces and remove the pins (idempotent).")

        @OptionGroup var location: Location

        @Flag(name: .long, help: "Detach the programs but keep the pinned maps (policy and connection state) for a later 'up'.")
        var keepPins = false

        func run() throws {
            let setup = DatapathSetup(namespace: location.netns, interfaces: location.interfaceList,
                                      pinRoot: location.pinRoot, objectPath: "")
            do {
                try setup.down(keepPins: keepPins)
            } catch {
                printError("datapath down: \(error)")
                throw ExitCode(1)
            }
            print("datapath down")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show attached programs, map entry counts and counters per reason.")

        @OptionGroup var location: Location

        func run() throws {
            let setup = DatapathSetup(namespace: location.netns, interfaces: location.interfaceList,
                                      pinRoot: location.pinRoot, objectPath: "")
            do {
                print("attached programs:")
                for (interface, hook, program) in try setup.attachments() {
                    print("  \(interface.padding(15)) \(hook.rawValue.padding(8)) \(program.map { "program id \($0)" } ?? "none")")
                }
                let maps = try DatapathMaps(pinRoot: location.pinRoot)
                print("maps (\(location.pinRoot)):")
                for (name, count) in maps.entryCounts() { print("  \(name.padding(15)) \(count) entries") }
                print("counters:                         \("IPv4".padding(12)) IPv6")
                for counter in DatapathCounter.allCases {
                    let ipv4 = maps.counters.total(counter.rawValue)
                    let ipv6 = counter == .notIP ? "-" : "\(maps.counters.total(counter.ipv6Slot))"
                    print("  \(counter.name.padding(32)) \(String(ipv4).padding(12)) \(ipv6)")
                }
            } catch {
                printError("datapath status: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Sync: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the L3/L4 view of policies into the maps (only what differs).")

        @OptionGroup var policies: PolicyInputs

        @Option(name: .long, help: ArgumentHelp("Where the maps are pinned.", valueName: "dir"))
        var pinRoot: String = DatapathSetup.defaultPinRoot

        @Flag(name: .long, help: "Print the entries instead of writing them.")
        var dryRun = false

        func run() throws {
            let state: DatapathState
            do {
                state = try policies.datapathState()
            } catch {
                printError("\(error)")
                throw ExitCode(2)
            }
            if dryRun {
                DatapathPrinting.printState(state)
                return
            }
            do {
                let report = try DatapathMaps(pinRoot: pinRoot).synchronize(to: state)
                print("datapath sync: \(report)")
            } catch {
                printError("datapath sync: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Events: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print drop and redirect events from the datapath as JSON lines.")

        @Option(name: .long, help: ArgumentHelp("Where the maps are pinned.", valueName: "dir"))
        var pinRoot: String = DatapathSetup.defaultPinRoot

        @Option(name: .long, help: "Stop after this many seconds (default: run until interrupted).")
        var seconds: Double?

        func run() throws {
            let reader: DatapathEventReader
            do {
                reader = try DatapathEventReader(pinnedAt: "\(pinRoot)/sluice_events")
            } catch {
                printError("datapath events: \(error)")
                throw ExitCode(1)
            }
            let deadline = seconds.map { DatapathPrinting.now() + $0 }
            while deadline.map({ DatapathPrinting.now() < $0 }) ?? true {
                for event in reader.poll(timeoutMilliseconds: 100) {
                    print(FlowRecords.datapathEvent(event).serialized())
                    fflush(nil)
                }
            }
        }
    }
}

/// Policies and endpoints as inputs of the datapath's policy maps.
struct PolicyInputs: ParsableArguments {
    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("A policy file or a directory of them (repeatable).", valueName: "path"))
    var policy: [String] = []

    @Option(name: .long, help: ArgumentHelp("The endpoints file (addresses to namespace and labels).", valueName: "file"))
    var endpoints: String

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("An address of the node itself (identity 'host'; repeatable).", valueName: "ip"))
    var nodeAddress: [String] = []

    @Option(name: .long, help: ArgumentHelp("The node these maps are for, as the endpoints file's 'node' fields name it: only its pods' policies are enforced (default: every endpoint is local).", valueName: "name"))
    var node: String?

    @Option(name: .long, help: ArgumentHelp("Port of the transparent TCP listener on 127.0.0.1 that L7 flows are diverted to.", valueName: "port"))
    var tcpProxyPort: UInt16 = 15001

    @Option(name: .long, help: ArgumentHelp("Port of the transparent UDP listener on 127.0.0.1 (DNS).", valueName: "port"))
    var udpProxyPort: UInt16 = 15053

    func validate() throws {
        if policy.isEmpty { throw ValidationError("--policy: expected at least one policy file or directory") }
        if let node, !EndpointDirectory.isNodeName(node) {
            throw ValidationError("--node: expected a node name (lowercase letters, digits, '-' and '.'), got '\(node)'")
        }
        for address in nodeAddress where IPv4Prefix(address) == nil && IPv6Prefix(address) == nil {
            throw ValidationError("--node-address: expected an IPv4 or IPv6 address, got '\(address)'")
        }
    }

    func datapathState() throws -> DatapathState {
        try PolicyFiles.datapathState(policyPaths: policy, endpoints: endpoints, node: node, nodeAddresses: nodeAddress.compactMap(IPv4Prefix.init),
                                       nodeAddresses6: nodeAddress.compactMap(IPv6Prefix.init),
                                       proxyPorts: .init(tcp: tcpProxyPort, udp: udpProxyPort))
    }
}

/// Output helpers of the datapath commands.
enum DatapathPrinting {
    static func printState(_ state: DatapathState) {
        print("identities:")
        for (prefix, entry) in state.addresses.sorted(by: { $0.key < $1.key }) {
            print("  \(prefix.description.padding(20)) \(entry.identity) \(state.identityNames[entry.identity] ?? "")\(entry.isLocalEndpoint ? " (local endpoint)" : "")")
        }
        for (prefix, entry) in state.addresses6.sorted(by: { $0.key < $1.key }) {
            print("  \(prefix.description.padding(20)) \(entry.identity) \(state.identityNames[entry.identity] ?? "")\(entry.isLocalEndpoint ? " (local endpoint)" : "")")
        }
        print("enforced:")
        for (identity, entry) in state.enforcement.sorted(by: { $0.key < $1.key }) {
            print("  \(identity) \(state.identityNames[identity] ?? ""): ingress \(entry.ingress), egress \(entry.egress)")
        }
        print("policy (\(state.policy.count) entries):")
        for (key, entry) in state.policy.sorted(by: { $0.key < $1.key }) {
            let proto = [6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"][Int(key.ipProtocol)] ?? "\(key.ipProtocol)"
            let action = entry.action == .redirect ? "redirect :\(entry.proxyPort)" : "\(entry.action)"
            print("  \(state.identityNames[key.endpoint] ?? "\(key.endpoint)") \(key.direction) peer \(state.identityNames[key.peer] ?? "\(key.peer)") \(key.port == 0 ? "*" : "\(key.port)")/\(proto): \(action)\(state.ruleNames[entry.rule].map { " (\($0))" } ?? "")")
        }
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
