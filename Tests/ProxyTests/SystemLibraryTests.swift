import Foundation
import Testing
import COpenSSL

/// Proves the OpenSSL system-library target links and calls through.
@Suite struct OpenSSLLinkTests {
    @Test func sha256OfABC() {
        var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        let input = Array("abc".utf8)
        _ = SHA256(input, input.count, &digest)
        let hex = digest.map { String(format: "%02x", $0) }.joined()
        #expect(hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
