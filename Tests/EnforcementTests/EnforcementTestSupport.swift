import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp for one test's files, removed with its files by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/sluice-enforcement-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    /// Writes `text` to `name` in place (open, truncate, write).
    @discardableResult
    func write(_ name: String, _ text: String) -> String {
        let file = file(name)
        let descriptor = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        precondition(descriptor >= 0, "open(\(file))")
        var bytes = Array(text.utf8)
        precondition(Glibc.write(descriptor, &bytes, bytes.count) == bytes.count)
        close(descriptor)
        return file
    }

    /// Replaces `name` the way editors and kubectl do: a new file renamed over the old one.
    /// With `keepingTime`, the new file gets the old one's modification time first, so only
    /// the file's identity tells them apart.
    func replace(_ name: String, with text: String, keepingTime: Bool = false) {
        let staged = write(".\(name).new", text)
        if keepingTime {
            var old = stat()
            precondition(stat(file(name), &old) == 0)
            var times = [old.st_atim, old.st_mtim]
            precondition(utimensat(AT_FDCWD, staged, &times, 0) == 0)
        }
        precondition(rename(staged, file(name)) == 0)
    }

    func contents(_ name: String) -> String {
        guard let handle = fopen(file(name), "r") else { return "" }
        defer { fclose(handle) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, handle)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func remove() {
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(file(name)) }
            }
            closedir(directory)
        }
        rmdir(path)
    }
}

/// Waits until `condition` holds, checking every 10 ms, for at most `seconds` (generous:
/// only real file events and threads are waited for). Returns whether it held.
func eventually(within seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    for _ in 0..<Int(seconds * 100) {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Lines and events collected from other threads, in order.
final class Journal: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}
