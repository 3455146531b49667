import SluiceFuzzHarnesses

/// `fuzz-dns`: the DNS codec and its TCP framing (`DNSMessageFuzzer`).
@main enum FuzzDNS {
    static func main() {
        FuzzEntry.main(name: "fuzz-dns", harness: DNSMessageFuzzer.run) { data, size in
            DNSMessageFuzzer.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
}
