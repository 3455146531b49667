#if canImport(Glibc)
import Glibc
#endif

/// Starts a thread that calls `serve` on `object`, which stays alive (retained) until
/// `serve` returns: the operations and hand-over servers each run one such thread beside
/// the workers' event loops. Returns the thread's handle, for joining.
func startServingThread<Object: AnyObject>(_ object: Object, _ serve: @escaping (Object) -> Void) throws -> pthread_t {
    let box = Unmanaged.passRetained(ServingThreadBody { serve(object) }).toOpaque()
    var handle = pthread_t()
    let result = pthread_create(&handle, nil, { raw in
        Unmanaged<ServingThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, box)
    guard result == 0 else {
        Unmanaged<ServingThreadBody>.fromOpaque(box).release()
        throw Errno(code: result, syscall: "pthread_create")
    }
    return handle
}

/// What a serving thread runs (passed through `pthread_create`'s one pointer).
private final class ServingThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
