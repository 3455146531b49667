import SluiceFuzzHarnesses

/// `fuzz-policy-loader`: the policy loader on arbitrary bytes (`PolicyLoaderFuzzer`).
@main enum FuzzPolicyLoader {
    static func main() {
        FuzzEntry.main(name: "fuzz-policy-loader", harness: PolicyLoaderFuzzer.run) { data, size in
            PolicyLoaderFuzzer.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
}
