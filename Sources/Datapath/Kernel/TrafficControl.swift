import CBPF
import CSluiceShims
#if canImport(Glibc)
import Glibc
#endif

/// Which tc hook of an interface.
public enum TCHook: String, Sendable, CaseIterable {
    /// Packets arriving on the interface (from the endpoint or the wire into the node).
    case ingress
    /// Packets leaving through the interface (from the node toward the endpoint or the wire).
    case egress

    var attachPoint: bpf_tc_attach_point { self == .ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS }
}

/// Attaches programs to clsact hooks through libbpf's netlink API (never by running tc).
///
/// Every call works in the calling thread's network namespace; wrap calls in
/// `NetworkNamespace.run` to act on another. Sluice's filters use one fixed handle and
/// priority so they can be replaced in place (`BPF_TC_F_REPLACE`) and found again.
public enum TrafficControl {
    public static let handle: UInt32 = 0x51c
    public static let priority: UInt32 = 0x51c

    public static func interfaceIndex(_ name: String) throws -> Int32 {
        let index = if_nametoindex(name)
        guard index != 0 else {
            throw DatapathError("find interface \(name)", code: errno == 0 ? ENODEV : errno,
                                hint: "is it in this network namespace?")
        }
        return Int32(index)
    }

    /// Runs `body` with a hook and options struct in zeroed memory. libbpf rejects option
    /// structs whose bytes past the fields it knows (padding included) are not zero, and a
    /// Swift value copy does not preserve padding, so they never leave this memory.
    private static func withHook<R>(_ interface: Int32, _ point: TCHook, programDescriptor: Int32 = 0, flags: UInt32 = 0,
                                    _ body: (UnsafeMutablePointer<bpf_tc_hook>, UnsafeMutablePointer<bpf_tc_opts>) -> R) -> R {
        withZeroed(bpf_tc_hook.self) { hook in
            withZeroed(bpf_tc_opts.self) { options in
                hook.pointee.sz = MemoryLayout<bpf_tc_hook>.size
                hook.pointee.ifindex = interface
                hook.pointee.attach_point = point.attachPoint
                options.pointee.sz = MemoryLayout<bpf_tc_opts>.size
                options.pointee.prog_fd = programDescriptor
                options.pointee.flags = flags
                options.pointee.handle = handle
                options.pointee.priority = priority
                return body(hook, options)
            }
        }
    }

    /// Creates the clsact qdisc if needed and attaches (or replaces) Sluice's filter.
    public static func attach(programDescriptor: Int32, interface name: String, hook point: TCHook) throws {
        sluice_libbpf_quiet_expected_errors()
        let interface = try interfaceIndex(name)
        let (created, attached) = withHook(interface, point, programDescriptor: programDescriptor,
                                           flags: UInt32(BPF_TC_F_REPLACE.rawValue)) { hook, options in
            // Attach first: creating a clsact qdisc that exists makes the kernel complain.
            let attached = bpf_tc_attach(hook, options)
            if attached == 0 { return (Int32(0), attached) }
            let created = bpf_tc_hook_create(hook)
            if created != 0 && created != -EEXIST { return (created, Int32(0)) }
            return (Int32(0), bpf_tc_attach(hook, options))
        }
        if created != 0 {
            throw DatapathError.libbpf("create clsact qdisc on \(name)", created, hint: "needs root (CAP_NET_ADMIN)")
        }
        guard attached == 0 else {
            throw DatapathError.libbpf("attach to \(name) \(point.rawValue)", attached)
        }
    }

    /// Removes Sluice's filter; a missing filter or interface is not an error (idempotent).
    public static func detach(interface name: String, hook point: TCHook) {
        guard let interface = try? interfaceIndex(name) else { return }
        _ = withHook(interface, point) { hook, options in bpf_tc_detach(hook, options) }
    }

    /// The id of the program attached by Sluice, or nil.
    public static func attachedProgram(interface name: String, hook point: TCHook) -> UInt32? {
        guard let interface = try? interfaceIndex(name) else { return nil }
        return withHook(interface, point) { hook, options in
            bpf_tc_query(hook, options) == 0 ? options.pointee.prog_id : nil
        }
    }
}

/// Runs `body` with a `T` in zeroed memory (padding included).
func withZeroed<T, R>(_ type: T.Type, _ body: (UnsafeMutablePointer<T>) -> R) -> R {
    let raw = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.stride, alignment: MemoryLayout<T>.alignment)
    defer { raw.deallocate() }
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.stride)
    return body(raw.bindMemory(to: T.self, capacity: 1))
}
