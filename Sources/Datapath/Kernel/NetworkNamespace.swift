import Synchronization
import CSluiceShims
#if canImport(Glibc)
import Glibc
#endif

/// Runs work inside a named network namespace (`/run/netns/NAME`).
///
/// `setns` changes the namespace of the calling thread only, so the work runs on a thread
/// of its own that enters the namespace and ends with it. Only the network namespace is
/// entered, never the mount namespace: BPF pins made from there land in the host's bpffs
/// (`ip netns exec` would mount a private /sys, where pins silently vanish).
public enum NetworkNamespace {
    /// Runs `body` in namespace `name` (nil: the current one) and returns its result.
    public static func run<T: Sendable>(_ name: String?, _ body: @escaping @Sendable () throws -> T) throws -> T {
        guard let name else { return try body() }
        let path = "/run/netns/\(name)"
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw DatapathError("open network namespace \(path)", code: errno,
                                hint: "create it with 'ip netns add \(name)' (scripts/lab up does)")
        }
        defer { close(descriptor) }
        let outcome = Mutex<Result<T, Error>?>(nil)
        let context = ThreadContext {
            if sluice_enter_network_namespace(descriptor) != 0 {
                let error = DatapathError("setns(\(path))", code: errno, hint: "needs root (CAP_SYS_ADMIN)")
                outcome.withLock { $0 = .failure(error) }
                return
            }
            let result = Result { try body() }
            outcome.withLock { $0 = result }
        }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(context).toOpaque()
        let created = pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadContext>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box)
        guard created == 0 else {
            Unmanaged<ThreadContext>.fromOpaque(box).release()
            throw DatapathError("pthread_create", code: created)
        }
        pthread_join(thread, nil)
        return try outcome.withLock { $0! }.get()
    }
}

private final class ThreadContext: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}
