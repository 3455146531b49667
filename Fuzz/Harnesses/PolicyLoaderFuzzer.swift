import PolicyEngine

/// Fuzz harness for the policy loader: arbitrary bytes as a YAML or JSON policy file must
/// give policies or `PolicyError`s, never a trap; the policies it accepts must compile into
/// a snapshot (regular expressions, selectors, ports) without a trap either.
public enum PolicyLoaderFuzzer {
    public static func run(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        let result = PolicyLoader.load(text: text, file: "fuzz.yaml")
        for error in result.errors { _ = error.description }
        if !result.policies.isEmpty {
            _ = PolicySnapshot(policies: result.policies)
        }
    }
}
