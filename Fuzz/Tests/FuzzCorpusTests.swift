import Testing
import SluiceFuzzHarnesses

/// The committed corpus of each fuzz target (seeds and every input that once crashed),
/// replayed through the same harness libFuzzer runs: a cheap regression check in `swift
/// test`. The harnesses trap on a violated invariant, so a failure here is a crash.
@Suite struct FuzzCorpusTests {
    static let corpus = String(#filePath.dropLast("Tests/FuzzCorpusTests.swift".count)) + "Corpus/"

    @Test func http1CorpusReplays() {
        let files = CorpusFiles.list(Self.corpus + "http1")
        #expect(files.count >= 10)
        for file in files {
            CorpusFiles.read(file)?.withUnsafeBytes(HTTP1ConnectionFuzzer.run)
        }
    }

    /// The harness reads its input format as `Fuzz/seeds.py` writes it.
    @Test func http1SeedsDoWhatTheySay() throws {
        func outcome(_ name: String) throws -> HTTP1ConnectionFuzzer.Outcome {
            let bytes = try #require(CorpusFiles.read(Self.corpus + "http1/seed-" + name))
            return bytes.withUnsafeBytes(HTTP1ConnectionFuzzer.outcome)
        }
        let get = try outcome("get")
        #expect(String(decoding: get.upstream, as: UTF8.self) == "GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(String(decoding: get.client, as: UTF8.self) == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        let stripped = try outcome("h2c-stripped")
        #expect(!String(decoding: stripped.upstream, as: UTF8.self).contains("h2c"))
        #expect(!stripped.closed)
        let normalised = try outcome("normalise")
        let upstream = String(decoding: normalised.upstream, as: UTF8.self)
        #expect(upstream.hasPrefix("GET /admin HTTP/1.1\r\n"))
        #expect(upstream.contains("GET http://h/a/~c HTTP/1.1\r\n"))
        #expect(!upstream.contains("%2f"), "the escaped slash is redirected, not forwarded")
        #expect(String(decoding: normalised.client, as: UTF8.self).contains("Location: /admin?x=/../\r\n"))
        let hostile = try outcome("h2c-hostile-101")
        #expect(String(decoding: hostile.client, as: UTF8.self).hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
    }

    @Test func dnsCorpusReplays() {
        let files = CorpusFiles.list(Self.corpus + "dns")
        #expect(files.count >= 8)
        for file in files {
            CorpusFiles.read(file)?.withUnsafeBytes(DNSMessageFuzzer.run)
        }
    }

    @Test func http2CorpusReplays() {
        let files = CorpusFiles.list(Self.corpus + "http2")
        #expect(files.count >= 8)
        for file in files {
            CorpusFiles.read(file)?.withUnsafeBytes(HTTP2SessionFuzzer.run)
        }
    }

    @Test func policyLoaderCorpusReplays() {
        let files = CorpusFiles.list(Self.corpus + "policy-loader")
        #expect(files.count >= 10)
        for file in files {
            CorpusFiles.read(file)?.withUnsafeBytes(PolicyLoaderFuzzer.run)
        }
    }
}
