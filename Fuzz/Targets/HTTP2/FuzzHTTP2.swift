import SluiceFuzzHarnesses

/// `fuzz-http2`: HTTP/2 under policy, both nghttp2 sessions and the proxy between them
/// (`HTTP2SessionFuzzer`).
@main enum FuzzHTTP2 {
    static func main() {
        FuzzEntry.main(name: "fuzz-http2", harness: HTTP2SessionFuzzer.run) { data, size in
            HTTP2SessionFuzzer.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
}
