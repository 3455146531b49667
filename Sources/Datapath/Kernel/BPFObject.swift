import CBPF
import CSluiceShims
#if canImport(Glibc)
import Glibc
#endif

/// A loaded BPF object file (programs and maps), owning libbpf's `bpf_object`.
///
/// Maps declared with `LIBBPF_PIN_BY_NAME` are pinned under `pinRoot` when the object
/// loads; if a pin of the same name already exists and is compatible, libbpf reuses it,
/// which is how state survives a reload (and why `--fresh` removes stale pins first).
public final class BPFObject {
    private let object: OpaquePointer
    public let path: String
    public let pinRoot: String

    public init(path: String, pinRoot: String) throws {
        guard access(path, R_OK) == 0 else {
            throw DatapathError("open BPF object \(path)", code: errno,
                                hint: "build it with 'make bpf' or pass --object")
        }
        sluice_libbpf_quiet_expected_errors()
        try BPFFilesystem.ensureMounted(under: pinRoot)
        try Self.makeDirectories(pinRoot)
        let opened: OpaquePointer? = pinRoot.withCString { root in
            withZeroed(bpf_object_open_opts.self) { options in
                options.pointee.sz = MemoryLayout<bpf_object_open_opts>.size
                options.pointee.pin_root_path = root
                return bpf_object__open_file(path, options)
            }
        }
        guard let opened, libbpf_get_error(UnsafeRawPointer(opened)) == 0 else {
            throw DatapathError("open BPF object \(path)", code: errno)
        }
        object = opened
        self.path = path
        self.pinRoot = pinRoot
        let loaded = bpf_object__load(object)
        guard loaded == 0 else {
            bpf_object__close(object)
            throw DatapathError.libbpf("load BPF object \(path) (the verifier's log is above)", loaded,
                                       hint: "needs root; a stale pin with another layout is refused: retry with --fresh")
        }
    }

    deinit { bpf_object__close(object) }

    /// The file descriptor of the program named `name` (the C function name).
    public func programDescriptor(_ name: String) throws -> Int32 {
        guard let program = bpf_object__find_program_by_name(object, name) else {
            throw DatapathError("find program \(name) in \(path)", code: ENOENT)
        }
        return bpf_program__fd(program)
    }

    /// Attaches the program named `name` to the calling thread's network namespace as an
    /// sk_lookup program and pins the link at `path` (replacing a link pinned there before),
    /// so it stays attached after this process exits and detaches when the pin is removed.
    public func attachToNetworkNamespace(program name: String, pinLinkAt path: String) throws {
        guard let program = bpf_object__find_program_by_name(object, name) else {
            throw DatapathError("find program \(name) in \(self.path)", code: ENOENT)
        }
        let namespace = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard namespace >= 0 else { throw DatapathError("open /proc/thread-self/ns/net", code: errno) }
        defer { close(namespace) }
        // The new link is attached before the old one goes (a namespace runs several
        // sk_lookup programs), and its pin replaces the old pin in one rename: a sluice taking
        // over from another never leaves the namespace without the program.
        let staged = path + "_new"  // bpffs refuses names with a dot
        unlink(staged)
        guard let link = bpf_program__attach_netns(program, namespace), libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
            throw DatapathError("attach \(name) to the network namespace", code: errno)
        }
        let pinned = bpf_link__pin(link, staged)
        bpf_link__disconnect(link)
        bpf_link__destroy(link)
        guard pinned == 0 else { throw DatapathError.libbpf("pin link \(staged)", pinned) }
        if rename(staged, path) != 0 {
            unlink(path)
            guard rename(staged, path) == 0 else {
                let error = errno
                unlink(staged)
                throw DatapathError("pin link \(path)", code: error)
            }
        }
    }

    /// The file descriptor of the map named `name`.
    public func mapDescriptor(_ name: String) throws -> Int32 {
        guard let map = bpf_object__find_map_by_name(object, name) else {
            throw DatapathError("find map \(name) in \(path)", code: ENOENT)
        }
        return bpf_map__fd(map)
    }

    static func makeDirectories(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw DatapathError("mkdir \(current)", code: errno, hint: "is /sys/fs/bpf a mounted bpffs?")
            }
        }
    }
}

/// The BPF filesystem pins live in. Some machines boot without it mounted; like the
/// reference agent, Sluice mounts it at /sys/fs/bpf when a pin root lies there.
public enum BPFFilesystem {
    public static let mountPoint = "/sys/fs/bpf"
    static let magic: Int = 0xcafe_4a11

    public static func isMounted(_ path: String = mountPoint) -> Bool {
        sluice_filesystem_type(path) == magic
    }

    public static func ensureMounted(under pinRoot: String) throws {
        guard pinRoot.hasPrefix(mountPoint + "/") || pinRoot == mountPoint, !isMounted() else { return }
        if sluice_mount_bpffs(mountPoint) != 0 {
            throw DatapathError("mount bpffs at \(mountPoint)", code: errno, hint: "needs root; or mount it: mount -t bpf bpf /sys/fs/bpf")
        }
    }
}
