#if canImport(Glibc)
import Glibc
#endif
#if SLUICE_LIBFUZZER
import CFuzzing
#endif

/// The `main` of every fuzz target. Built normally, a target replays inputs (files, or
/// every file of a folder) through its harness: a regression check of a corpus or of a
/// crash file. Built with `-DSLUICE_LIBFUZZER -sanitize=fuzzer,address` (`make fuzz`), it
/// hands control to libFuzzer, which calls `callback` with each input it generates.
public enum FuzzEntry {
    public typealias Callback = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

    /// Runs libFuzzer (fuzz build) or replays the files named by the arguments (normal build).
    public static func main(name: String, harness: (UnsafeRawBufferPointer) -> Void, callback: Callback) -> Never {
        #if SLUICE_LIBFUZZER
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, callback))
        #else
        let paths = CommandLine.arguments.dropFirst()
        if paths.isEmpty || paths.contains(where: { $0.hasPrefix("-") }) {
            print("usage: \(name) FILE_OR_FOLDER... (replays inputs; `make fuzz` builds the libFuzzer version)")
            exit(paths.isEmpty ? 2 : 0)
        }
        var replayed = 0
        for path in paths {
            for file in CorpusFiles.list(path) {
                guard let bytes = CorpusFiles.read(file) else {
                    print("\(name): cannot read \(file)")
                    exit(1)
                }
                bytes.withUnsafeBytes(harness)
                replayed += 1
            }
        }
        print("\(name): replayed \(replayed) inputs, no failure")
        exit(0)
        #endif
    }
}

/// Reading corpus files without Foundation (the harnesses stay small and instrumentable).
public enum CorpusFiles {
    /// `path` itself when it is a file, else the regular files in it (not recursive), sorted.
    public static func list(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [path] }
        defer { closedir(directory) }
        var files: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix(".") { continue }
            let full = path.hasSuffix("/") ? path + name : path + "/" + name
            var status = stat()
            if stat(full, &status) == 0 && (status.st_mode & S_IFMT) == S_IFREG { files.append(full) }
        }
        return files.sorted()
    }

    /// The bytes of a file, or nil when it cannot be read.
    public static func read(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count > 0 { bytes += chunk[0..<count] }
            if count < chunk.count { break }
        }
        return ferror(file) == 0 ? bytes : nil
    }
}
