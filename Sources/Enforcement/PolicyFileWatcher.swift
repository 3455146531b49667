import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Notices when policy files change: a file written in place, replaced by a rename (as
/// editors and kubectl's atomic writer do: the name then points at another inode), added
/// to or removed from a watched directory, or gone.
///
/// It polls: each `check()` compares the files' identity (device and inode), modification
/// time and size with the previous check's. A file rewritten in place to the same size
/// within one tick of the file system's clock is not seen; every replacement is.
public final class PolicyFileWatcher: @unchecked Sendable {
    private let files: @Sendable () -> [String]
    /// Only `check()` touches it: from the watcher's thread once started, else the caller's.
    private var last: [String]
    private let stopping = Atomic<Bool>(false)

    /// `files` lists the files to watch; it is asked again at every check, so a directory's
    /// new files count as a change. The files as they are now are the starting point.
    public init(files: @escaping @Sendable () -> [String]) {
        self.files = files
        last = Self.fingerprint(files())
    }

    /// Whether anything changed since the previous check (or since `init`).
    public func check() -> Bool {
        let current = Self.fingerprint(files())
        guard current != last else { return false }
        last = current
        return true
    }

    /// Checks every `interval` nanoseconds on a thread of its own and calls `onChange`
    /// there, once per check that saw a change, until `stop()`.
    public func start(every interval: UInt64, onChange: @escaping @Sendable () -> Void) {
        startThread { [self] in
            while !stopping.load(ordering: .relaxed) {
                usleep(useconds_t(min(interval / 1000, UInt64(UInt32.max))))
                if stopping.load(ordering: .relaxed) { return }
                if check() { onChange() }
            }
        }
    }

    public func stop() { stopping.store(true, ordering: .relaxed) }

    static func fingerprint(_ files: [String]) -> [String] {
        files.map { file in
            var info = stat()
            guard stat(file, &info) == 0 else { return "\(file):missing" }
            return "\(file):\(info.st_dev).\(info.st_ino):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec):\(info.st_size)"
        }
    }
}
