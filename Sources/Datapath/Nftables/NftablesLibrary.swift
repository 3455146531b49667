import CNftables

/// nftables commands run in this process through libnftables (the library the `nft` tool
/// is built on): a learned address costs one netlink transaction, not a process.
///
/// Not thread-safe: one caller at a time (the learner calls it under its lock).
final class NftablesLibrary: @unchecked Sendable {
    private let context: OpaquePointer

    init() throws {
        guard let context = nft_ctx_new(UInt32(NFT_CTX_DEFAULT)) else {
            throw DatapathError("nft_ctx_new", code: 12, hint: "libnftables could not start (out of memory?)")
        }
        nft_ctx_buffer_error(context)
        nft_ctx_buffer_output(context)
        self.context = context
    }

    deinit { nft_ctx_free(context) }

    /// Runs `commands` (nft syntax, one transaction); throws with nft's own message.
    func run(_ commands: String) throws {
        guard nft_run_cmd_from_buffer(context, commands) != 0 else { return }
        let message = nft_ctx_get_error_buffer(context).map { String(cString: $0) } ?? ""
        throw DatapathError("nft", code: 22, hint: message.trimmingCharacters(inSet: [" ", "\n"]))
    }
}

private extension String {
    func trimmingCharacters(inSet characters: Set<Character>) -> String {
        var text = Substring(self)
        while let first = text.first, characters.contains(first) { text = text.dropFirst() }
        while let last = text.last, characters.contains(last) { text = text.dropLast() }
        return String(text)
    }
}
