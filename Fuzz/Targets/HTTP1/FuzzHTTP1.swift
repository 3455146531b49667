import SluiceFuzzHarnesses

/// `fuzz-http1`: the HTTP/1.1 parser and connection state machine (`HTTP1ConnectionFuzzer`).
@main enum FuzzHTTP1 {
    static func main() {
        FuzzEntry.main(name: "fuzz-http1", harness: HTTP1ConnectionFuzzer.run) { data, size in
            HTTP1ConnectionFuzzer.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
}
