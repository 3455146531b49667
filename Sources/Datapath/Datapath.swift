import CBPF
#if canImport(Glibc)
import Glibc
#endif

/// Brings Sluice's BPF datapath up and down on a node (a network namespace and the
/// interfaces facing its endpoints and its uplink), and reports its state.
///
/// `up` loads the programs, pins the maps under `pinRoot` and attaches
/// `sluice_from_wire` to each interface's tc ingress and `sluice_to_wire` to its egress.
/// The tc filters keep the programs alive after the loading process exits; the pinned
/// maps are how `sluice run` and `sluice datapath status` reach them.
public struct DatapathSetup: Sendable {
    public var namespace: String?
    public var interfaces: [String]
    public var pinRoot: String
    public var objectPath: String

    public static let defaultPinRoot = "/sys/fs/bpf/sluice"
    static let ingressProgram = "sluice_from_wire"
    static let egressProgram = "sluice_to_wire"
    static let lookupProgram = "sluice_listener_lookup"
    static let lookupLink = "sluice_sk_lookup_link"

    public init(namespace: String?, interfaces: [String], pinRoot: String = defaultPinRoot, objectPath: String) {
        self.namespace = namespace
        self.interfaces = interfaces
        self.pinRoot = pinRoot
        self.objectPath = objectPath
    }

    /// Loads and attaches. With `fresh`, stale pins are removed first (a reused pin keeps
    /// old entries in force, including old drops).
    public func up(fresh: Bool) throws {
        if fresh { removePins() }
        let setup = self
        try NetworkNamespace.run(namespace) {
            let object = try BPFObject(path: setup.objectPath, pinRoot: setup.pinRoot)
            let ingress = try object.programDescriptor(Self.ingressProgram)
            let egress = try object.programDescriptor(Self.egressProgram)
            for interface in setup.interfaces {
                try TrafficControl.attach(programDescriptor: ingress, interface: interface, hook: .ingress)
                try TrafficControl.attach(programDescriptor: egress, interface: interface, hook: .egress)
                // The node's own flows to L7 ports come back in through this interface with
                // the node's address as their source (sluice_to_wire turns them around):
                // IPv4 would take them for martians. sluice_from_wire drops that source
                // from anywhere else.
                try Self.writeSysctl("net/ipv4/conf/\(interface)/accept_local", "1")
            }
            try object.attachToNetworkNamespace(program: Self.lookupProgram, pinLinkAt: "\(setup.pinRoot)/\(Self.lookupLink)")
        }
    }

    /// Detaches from every interface and, unless `keepPins`, removes the pins. Idempotent.
    /// Keeping the pins keeps the policy and connection state for a later `up`.
    public func down(keepPins: Bool = false) throws {
        let interfaces = self.interfaces
        if namespace == nil || FileManagerLite.exists("/run/netns/\(namespace!)") {
            try NetworkNamespace.run(namespace) {
                for interface in interfaces {
                    TrafficControl.detach(interface: interface, hook: .ingress)
                    TrafficControl.detach(interface: interface, hook: .egress)
                }
            }
        }
        // The sk_lookup link lives as long as its pin.
        unlink("\(pinRoot)/\(Self.lookupLink)")
        if !keepPins { removePins() }
    }

    /// Per interface and hook: the id of the attached Sluice program, or nil.
    public func attachments() throws -> [(interface: String, hook: TCHook, programID: UInt32?)] {
        let interfaces = self.interfaces
        return try NetworkNamespace.run(namespace) {
            interfaces.flatMap { interface in
                TCHook.allCases.map { hook in (interface, hook, TrafficControl.attachedProgram(interface: interface, hook: hook)) }
            }
        }
    }

    public func removePins() {
        for name in DatapathMaps.names + [Self.lookupLink, Self.lookupLink + "_new"] { unlink("\(pinRoot)/\(name)") }
        rmdir(pinRoot)
    }
}

extension DatapathSetup {
    /// Writes `value` to /proc/sys/`name` for the calling thread's network namespace.
    static func writeSysctl(_ name: String, _ value: String) throws {
        let path = "/proc/sys/\(name)"
        let descriptor = open(path, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw DatapathError("open \(path)", code: errno) }
        defer { close(descriptor) }
        let written = value.withCString { write(descriptor, $0, strlen($0)) }
        guard written >= 0 else { throw DatapathError("write \(path)", code: errno) }
    }
}

/// Tiny file-system helpers without Foundation.
enum FileManagerLite {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
}
