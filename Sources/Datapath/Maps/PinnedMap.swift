import CBPF
#if canImport(Glibc)
import Glibc
#endif

/// A BPF map reached through its file descriptor, with typed keys and values.
///
/// `Key` and `Value` are the C structs from `sluice_datapath.h` (imported through
/// `CSluiceDatapath`), so their layout is the kernel's.
public final class BPFMap<Key, Value> {
    public let name: String
    public let descriptor: Int32
    private let ownsDescriptor: Bool

    /// Opens the map pinned at `path`.
    public init(pinnedAt path: String) throws {
        let descriptor = bpf_obj_get(path)
        guard descriptor >= 0 else {
            throw DatapathError("open pinned map \(path)", code: errno, hint: "is the datapath up? ('sluice datapath up')")
        }
        self.descriptor = descriptor
        self.name = String(path.split(separator: "/").last ?? "")
        ownsDescriptor = true
    }

    deinit { if ownsDescriptor { close(descriptor) } }

    public func lookup(_ key: Key) -> Value? {
        var key = key
        let value = UnsafeMutablePointer<Value>.allocate(capacity: 1)
        defer { value.deallocate() }
        let found = withUnsafeMutablePointer(to: &key) { bpf_map_lookup_elem(descriptor, $0, value) == 0 }
        return found ? value.pointee : nil
    }

    public func update(_ key: Key, _ value: Value) throws {
        var key = key
        var value = value
        let result = withUnsafeMutablePointer(to: &key) { keyPointer in
            withUnsafeMutablePointer(to: &value) { bpf_map_update_elem(descriptor, keyPointer, $0, UInt64(BPF_ANY)) }
        }
        guard result == 0 else { throw DatapathError.libbpf("update \(name)", result, hint: "is the map full?") }
    }

    @discardableResult
    public func delete(_ key: Key) -> Bool {
        var key = key
        return withUnsafeMutablePointer(to: &key) { bpf_map_delete_elem(descriptor, $0) == 0 }
    }

    /// Every key (maps change under us: a key deleted meanwhile is simply skipped).
    public func keys() -> [Key] {
        var keys: [Key] = []
        let current = UnsafeMutablePointer<Key>.allocate(capacity: 1)
        let next = UnsafeMutablePointer<Key>.allocate(capacity: 1)
        defer { current.deallocate(); next.deallocate() }
        var result = bpf_map_get_next_key(descriptor, nil, next)
        while result == 0 {
            keys.append(next.pointee)
            current.pointee = next.pointee
            result = bpf_map_get_next_key(descriptor, current, next)
        }
        return keys
    }

    public var count: Int { keys().count }

    /// The map's capacity (`max_entries`), 0 when the kernel does not say.
    public var capacity: Int {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        guard bpf_obj_get_info_by_fd(descriptor, &info, &length) == 0 else { return 0 }
        return Int(info.max_entries)
    }
}

/// A per-CPU array of counters: the kernel returns one value per possible CPU.
public final class CounterMap {
    private let descriptor: Int32
    private let cpus: Int

    public init(pinnedAt path: String) throws {
        descriptor = bpf_obj_get(path)
        guard descriptor >= 0 else {
            throw DatapathError("open pinned map \(path)", code: errno, hint: "is the datapath up? ('sluice datapath up')")
        }
        cpus = Int(max(1, libbpf_num_possible_cpus()))
    }

    deinit { close(descriptor) }

    /// The sum over CPUs of counter `slot`.
    public func total(_ slot: UInt32) -> UInt64 {
        var key = slot
        var values = [UInt64](repeating: 0, count: cpus)
        guard bpf_map_lookup_elem(descriptor, &key, &values) == 0 else { return 0 }
        return values.reduce(0, &+)
    }
}
