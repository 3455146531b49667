import PolicyEngine

/// Everything `sluice run` needs, after the configuration file has been read and checked.
/// Plain values only: the YAML is converted once, in `ConfigurationLoader`.
public struct ProxyConfiguration: Sendable, Equatable {
    /// Event-loop threads; each has its own `SO_REUSEPORT` listening sockets.
    public var workers: Int
    /// `SO_MARK` on the proxy's upstream sockets of transparent listeners, so the datapath
    /// does not divert the proxy's own traffic again. Must differ from the to-proxy mark.
    public var proxyMark: UInt32
    public var listeners: [ListenerConfiguration]
    public var timeouts: Timeouts
    public var limits: Limits
    public var flowLog: FlowLogConfiguration
    /// How traffic reaches the transparent listeners, and how L3/L4 policy is enforced.
    public var datapath: DatapathConfiguration
    /// The policies and endpoints `sluice run` enforces (nil: none, a pure relay).
    public var policy: PolicySourceConfiguration?
    /// HTTP handling: path normalisation and the upgrades that may become relays.
    public var http = HTTPSettings()
    /// DNS handling: how a denied query is answered.
    public var dns = DNSSettings()
    public var kafka = KafkaSettings()
    /// toFQDNs: lifetime and caps of learned addresses.
    public var fqdn = FQDNSettings()
    /// The Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`); off unless configured.
    public var metrics = MetricsSettings()
    /// The control socket `sluice observe` and `sluice status` talk to, and the flow ring.
    public var control = ControlSettings()

    public init(workers: Int, proxyMark: UInt32 = 0xa00, listeners: [ListenerConfiguration],
                timeouts: Timeouts = Timeouts(), limits: Limits = Limits(), flowLog: FlowLogConfiguration = .init(),
                datapath: DatapathConfiguration = .init(), policy: PolicySourceConfiguration? = nil) {
        self.workers = workers
        self.proxyMark = proxyMark
        self.listeners = listeners
        self.timeouts = timeouts
        self.limits = limits
        self.flowLog = flowLog
        self.datapath = datapath
        self.policy = policy
    }
}

/// The `datapath` section: which mechanism diverts traffic and enforces L3/L4 policy.
public struct DatapathConfiguration: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable {
        /// Explicit mode only: nothing is diverted.
        case none
        /// tc programs with `bpf_sk_assign` (the default where the kernel has it).
        case bpf
        /// nftables TPROXY with explicit fail-closed drops, for kernels without `bpf_sk_assign`.
        case nftables
        /// `bpf` when the kernel supports it, else `nftables`.
        case auto
    }

    public var mode: Mode = .none
    /// The node's network namespace (`/run/netns/NAME`); nil = sluice's own.
    public var namespace: String?
    /// Interfaces facing endpoints and the uplink.
    public var interfaces: [String] = []
    public var pinRoot: String = "/sys/fs/bpf/sluice"
    /// The compiled BPF object; nil = next to the binary.
    public var object: String?
    /// Upstream connections and datagrams of transparent listeners leave from the client's
    /// own address (`IP_TRANSPARENT`), as the reference's proxy does, so servers, their logs
    /// and the destination node's ingress policy see the client, not the node; the
    /// datapath steers the replies back to the proxy's socket. `false`: the node's address.
    /// Only with a datapath (mode `none` has nobody to steer the replies).
    public var originalSource: Bool = true

    /// The source of upstream sockets this configuration gives transparent listeners. The
    /// BPF datapath also keeps the client's port where it is free; the nftables fallback
    /// does not (conntrack would take the upstream leg for the diverted flow itself), and
    /// neither does `auto`, which may turn out to be nftables.
    public var upstreamSource: UpstreamSource {
        guard originalSource else { return .node }
        switch mode {
        case .none: return .node
        case .bpf: return .clientAddressAndPort
        case .nftables, .auto: return .clientAddress
        }
    }

    public init(mode: Mode = .none) { self.mode = mode }
}

/// The `policy` section: policy files and the endpoints file, watched for changes.
public struct PolicySourceConfiguration: Sendable, Equatable {
    public var paths: [String]
    public var endpoints: String
    /// Addresses of the node itself (identity `host`).
    public var nodeAddresses: [String]
    /// The node this sluice runs on, as the endpoints file's `node:` fields name nodes: its
    /// pods' policies are enforced here, other nodes' pods are peers only (their nodes judge
    /// their side). nil: every endpoint is local (a one-node endpoints file).
    public var node: String?
    /// How often files are checked for changes; nil = never.
    public var watchInterval: UInt64?
    /// `source: kubernetes`: policies and endpoints come from the API server (no files).
    public var kubernetes: KubernetesSourceConfiguration?

    public init(paths: [String], endpoints: String, nodeAddresses: [String] = [], watchInterval: UInt64? = 1_000_000_000) {
        self.paths = paths
        self.endpoints = endpoints
        self.nodeAddresses = nodeAddresses
        self.watchInterval = watchInterval
    }
}

/// `policy.kubernetes` (with `policy.source: kubernetes`): how to reach the API server and
/// where this node stands. Without `kubeconfig`, the pod's service account (in-cluster).
public struct KubernetesSourceConfiguration: Sendable, Equatable {
    public var kubeconfig: String?
    /// The kubeconfig context (default: its current-context).
    public var context: String?
    /// This node's name; nil = the `NODE_NAME` environment variable (the downward API's
    /// `spec.nodeName`, as deploy/kubernetes sets it).
    public var nodeName: String?
    /// The `io.cilium.k8s.policy.cluster` label of this cluster's pods.
    public var clusterName = "default"
    /// How long `sluice run` waits at start for every resource to be listed.
    public var syncTimeout: UInt64 = 60_000_000_000
    /// Most objects of one resource.
    public var maxObjects = 200_000
    /// Largest list response (one page) or watch event, in bytes.
    public var maxResponseBytes = 256 << 20
    public init() {}
}

public struct ListenerConfiguration: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A plain TCP listener relaying every connection to one upstream (no root needed).
        case explicit(upstream: SocketAddress)
        /// A transparent TCP listener: each connection goes to its original destination.
        case transparentTCP
        /// A transparent UDP listener: each datagram goes to its original destination.
        case transparentUDP
    }

    /// Which L7 protocol an explicit TCP listener parses (transparent listeners decide per
    /// connection from the policy for its destination port).
    public enum L7Protocol: String, Sendable, Equatable {
        case http
        case kafka

        /// The policy's name for the protocol (the session registry's key).
        public var kind: PolicyEngine.L7Protocol {
            switch self {
            case .http: return .http
            case .kafka: return .kafka
            }
        }
    }

    public var name: String
    public var kind: Kind
    public var address: SocketAddress
    public var backlog: Int32
    public var l7: L7Protocol?

    public init(name: String, kind: Kind, address: SocketAddress, backlog: Int32 = 1024, l7: L7Protocol? = nil) {
        self.name = name
        self.kind = kind
        self.address = address
        self.backlog = backlog
        self.l7 = l7
    }
}

/// Durations in nanoseconds.
public struct Timeouts: Sendable, Equatable {
    /// Upstream connect; past it the downstream is reset.
    public var connect: UInt64 = 5_000_000_000
    /// No byte either way for this long closes a TCP connection.
    public var idle: UInt64 = 300_000_000_000
    /// Time allowed for an L7 message the session waits for (HTTP: a request head) once its
    /// first byte arrived, and for the first one after the accept (`timeouts.message`; the
    /// older name `timeouts.header` is still read).
    public var message: UInt64 = 30_000_000_000
    /// How long an upstream may stay silent while an L7 response is owed (HTTP: 504 after
    /// it). The reference's route timeout is 15 s.
    public var response: UInt64 = 15_000_000_000
    /// After SIGTERM/SIGINT, how long in-flight connections may take to finish.
    public var drain: UInt64 = 15_000_000_000
    /// A UDP session with no datagram either way for this long ends.
    public var udpIdle: UInt64 = 60_000_000_000

    public init() {}
}

public struct Limits: Sendable, Equatable {
    /// Bytes buffered per direction per connection; a full buffer stops reading that side.
    public var bufferBytes: Int = 64 * 1024
    /// Open connections per worker; beyond it new connections wait in the kernel's backlog.
    /// Nil: derived at start from the descriptor limit (`connectionsPerWorker`).
    public var maxConnectionsPerWorker: Int?
    /// UDP sessions per listener per worker; beyond it the least recently used one closes.
    public var maxUDPSessionsPerWorker: Int = 4096
    /// Largest UDP datagram relayed; larger ones are dropped.
    public var maxDatagramBytes: Int = 65_507
    /// Free buffer blocks kept per worker for reuse.
    public var cachedBuffersPerWorker: Int = 256

    public init() {}

    /// Descriptors kept back for listeners, the flow log, BPF maps and the runtime.
    public static let reservedDescriptors = 64

    /// The connection limit per worker that the descriptor limit allows: each relayed
    /// connection holds two descriptors (client and server).
    public static func connectionsPerWorker(descriptorLimit: Int, workers: Int) -> Int {
        max(1, (descriptorLimit - reservedDescriptors) / 2 / max(1, workers))
    }
}

/// HTTP handling that is not policy: what the reference's proxy configures globally.
public struct HTTPSettings: Sendable, Equatable {
    /// Judge and forward request paths normalised (RFC 3986 dot segments, unreserved
    /// percent-decoding, merged slashes; escaped slashes redirected), as the reference does
    /// by default (`--http-normalize-path`). Off: paths are judged and forwarded raw.
    public var normalizePaths = true
    /// `Upgrade` protocols (lowercase tokens) that may turn an allowed request's connection
    /// into a relay. Other upgrade offers are stripped from the request; `h2c` never relays.
    public var allowedUpgrades: Set<String> = ["websocket"]

    public init() {}
}

public struct DNSSettings: Sendable, Equatable {
    /// What a query the policy denies is answered, in the resolver's place.
    public enum DeniedAnswer: String, Sendable, Equatable, CaseIterable {
        /// REFUSED (rcode 5): the reference's default; clients do not retry another name.
        case refused
        /// NXDOMAIN (rcode 3): the name looks as if it did not exist.
        case nameError
    }

    public var deniedAnswer = DeniedAnswer.refused
    /// How long a resolver may take to answer an allowed query (nanoseconds); past it Sluice
    /// answers the client SERVFAIL in its place (`dns.responseTimeout`).
    public var responseTimeout: UInt64 = 5_000_000_000

    public init() {}
}

public struct KafkaSettings: Sendable, Equatable {
    /// The largest request frame (`kafka.maximumRequestBytes`, default 1 MiB like the broker's
    /// `message.max.bytes`): a produce request's records stream through and are never held,
    /// but no request may be larger; a larger one closes the connection.
    public var maximumRequestBytes = 1 << 20
    /// The largest Metadata response held whole to learn topic IDs' names; a larger one
    /// passes unread (its IDs stay unknown, and requests naming them are denied).
    public var maximumMetadataResponseBytes = 16 << 20

    public init() {}
}

/// toFQDNs: how long and how many addresses learned from allowed DNS answers are kept.
public struct FQDNSettings: Sendable, Equatable {
    /// An answer's TTL is raised to at least this many seconds (clients often cache longer
    /// than the TTL says).
    public var minimumTTL: UInt32 = 60
    /// After the TTL, the address stays allowed this much longer (nanoseconds).
    public var grace: UInt64 = 10_000_000_000
    /// Addresses kept per name and endpoint; past it the least recently learned goes.
    public var maximumAddressesPerName = 50
    /// Addresses kept per endpoint; past it its least recently learned goes.
    public var maximumAddressesPerEndpoint = 16_384
    /// Addresses kept in all; past it the least recently learned of any endpoint goes.
    public var maximumAddresses = 65_536
    /// Where learned addresses are kept across restarts (relative to the configuration file);
    /// nil keeps them in memory only.
    public var stateFile: String? = "/var/lib/sluice/fqdn.json"

    public init() {}
}

public struct FlowLogConfiguration: Sendable, Equatable {
    public enum Sink: Sendable, Equatable {
        case none
        case stdout
        case file(path: String)
        /// A Unix stream socket some collector listens on.
        case unixSocket(path: String)
    }

    public var sink: Sink = .stdout
    public init(sink: Sink = .stdout) { self.sink = sink }
}

/// The `metrics` section: where `/metrics`, `/healthz` and `/readyz` are served over HTTP.
public struct MetricsSettings: Sendable, Equatable {
    /// The TCP address to listen on (nil: no metrics endpoint).
    public var listen: SocketAddress?
    public init(listen: SocketAddress? = nil) { self.listen = listen }
}

/// The `control` section: the Unix socket of `sluice observe` and `sluice status`, and how
/// many recent flows the in-memory ring keeps for them.
public struct ControlSettings: Sendable, Equatable {
    public static let defaultSocket = "/run/sluice/sluice.sock"
    /// The socket's path (nil: none). When it is the default and its directory cannot be
    /// made, sluice runs without it and says so; a configured path that fails stops sluice.
    public var socket: String? = ControlSettings.defaultSocket
    /// Flow records kept for `sluice observe` (the last N; Hubble keeps 4095).
    public var flowRing = 4096

    /// Where a running sluice hands its sockets to the one replacing it.
    public enum Handover: Sendable, Equatable {
        /// Beside the control socket (`derivedHandover`); none without a control socket.
        case derived
        case path(String)
        case none
    }
    public var handover = Handover.derived

    /// The hand-over socket's path, if any.
    public var handoverPath: String? {
        switch handover {
        case .derived: return socket.map(Self.derivedHandover)
        case .path(let path): return path
        case .none: return nil
        }
    }

    /// `/run/sluice/sluice.sock` -> `/run/sluice/sluice.handover.sock`.
    public static func derivedHandover(_ socket: String) -> String {
        socket.hasSuffix(".sock") ? String(socket.dropLast(5)) + ".handover.sock" : socket + ".handover"
    }
    public init() {}
}
