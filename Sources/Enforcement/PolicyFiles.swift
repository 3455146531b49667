import Datapath
import PolicyEngine
#if canImport(Glibc)
import Glibc
#endif

/// Policy and endpoints files on disk, read into what the proxy and the datapath enforce.
public enum PolicyFiles {
    /// Bad policy or endpoints input: every problem found, one per line.
    public struct InputError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The policy files `path` names: the file itself, or a directory's `.yaml`, `.yml` and
    /// `.json` files (not those named `endpoints*`), sorted by name. The same rule as
    /// `sluice policy` commands use.
    public static func files(at path: String) -> [String] {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, let directory = opendir(path) else { return [path] }
        defer { closedir(directory) }
        var files: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".yaml") || name.hasSuffix(".yml") || name.hasSuffix(".json"), !name.hasPrefix("endpoints") {
                files.append("\(path)/\(name)")
            }
        }
        return files.sorted()
    }

    /// Loads every policy file under `policyPaths` and the endpoints file into one snapshot;
    /// throws `InputError` naming every problem when any file does not load (all or nothing).
    /// `node`: the node this sluice runs on (`policy.node`), which tells local endpoints from
    /// those on other nodes; nil: every endpoint is local.
    public static func loadSnapshot(policyPaths: [String], endpoints: String, node: String? = nil) throws -> PolicySnapshot {
        var loaded = PolicyLoadResult()
        for path in policyPaths {
            for file in files(at: path) { loaded.append(PolicyLoader.load(file: file)) }
        }
        if !loaded.errors.isEmpty {
            throw InputError(description: "invalid policy input:\n" + loaded.errors.map(\.description).joined(separator: "\n"))
        }
        let directory: EndpointDirectory
        do { directory = try EndpointDirectory.load(file: endpoints, localNode: node) } catch { throw InputError(description: "\(error)") }
        return PolicySnapshot(policies: loaded.policies, endpoints: directory)
    }

    /// The datapath's view (identities, enforcement, L3/L4 policy) of the files' policies.
    public static func datapathState(policyPaths: [String], endpoints: String, node: String? = nil, nodeAddresses: [IPv4Prefix],
                                     nodeAddresses6: [IPv6Prefix] = [],
                                     proxyPorts: PolicyTranslation.ProxyPorts) throws -> DatapathState {
        let snapshot = try loadSnapshot(policyPaths: policyPaths, endpoints: endpoints, node: node)
        return try PolicyTranslation(snapshot: snapshot, nodeAddresses: nodeAddresses, nodeAddresses6: nodeAddresses6,
                                     proxyPorts: proxyPorts).translate()
    }

    /// The BPF object built by `make bpf` (`.build/bpf/sluice_tc.bpf.o`), found from the
    /// running binary's own place (`.build/release/sluice` is a link into
    /// `.build/<triple>/release`), else an installed copy.
    public static func defaultBPFObject() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        var candidates: [String] = []
        if length > 0 {
            let executable = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let directory = executable.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            candidates += ["\(directory)/../bpf/sluice_tc.bpf.o", "\(directory)/../../bpf/sluice_tc.bpf.o"]
        }
        candidates.append("/usr/lib/sluice/sluice_tc.bpf.o")
        return candidates.first { access($0, R_OK) == 0 } ?? candidates[0]
    }
}
