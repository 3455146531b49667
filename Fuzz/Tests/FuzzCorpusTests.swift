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

    @Test func kafkaCorpusReplays() {
        let files = CorpusFiles.list(Self.corpus + "kafka")
        #expect(files.count >= 12)
        for file in files {
            CorpusFiles.read(file)?.withUnsafeBytes(KafkaSessionFuzzer.run)
        }
    }

    /// The harness reads its input format as `Fuzz/seeds.py` writes it, and the seeds reach
    /// the session's paths they are named for.
    @Test func kafkaSeedsDoWhatTheySay() throws {
        func outcome(_ name: String) throws -> KafkaSessionFuzzer.Outcome {
            let bytes = try #require(CorpusFiles.read(Self.corpus + "kafka/seed-" + name))
            return bytes.withUnsafeBytes(KafkaSessionFuzzer.outcome)
        }
        /// The correlation IDs of the frames in `stream` (requests: after key and version).
        func correlations(_ stream: [UInt8], requests: Bool) -> [Int32] {
            var found: [Int32] = [], offset = 0
            while offset + 12 <= stream.count {
                let length = Int(stream[offset]) << 24 | Int(stream[offset + 1]) << 16 | Int(stream[offset + 2]) << 8 | Int(stream[offset + 3])
                let at = offset + (requests ? 8 : 4)
                found.append(Int32(stream[at]) << 24 | Int32(stream[at + 1]) << 16 | Int32(stream[at + 2]) << 8 | Int32(stream[at + 3]))
                offset += 4 + length
            }
            return found
        }
        let allowed = try outcome("produce-allowed")
        #expect(correlations(allowed.toBroker, requests: true) == [1])
        #expect(correlations(allowed.toClient, requests: false) == [1])
        #expect(allowed.closedReason == nil)
        let denied = try outcome("produce-denied-then-allowed")
        #expect(correlations(denied.toBroker, requests: true) == [2], "the denied request never reaches the broker")
        #expect(correlations(denied.toClient, requests: false) == [1, 2], "answered by Sluice, in order")
        let waits = try outcome("produce-allowed-then-denied-waits")
        #expect(correlations(waits.toBroker, requests: true) == [1, 3])
        #expect(correlations(waits.toClient, requests: false) == [1, 2, 3])
        #expect(try outcome("produce-later-topic-denied").closedReason != nil)
        let byID = try outcome("produce-v13-topic-ids")
        #expect(correlations(byID.toBroker, requests: true) == [1], "the secret ID and an unknown ID are denied")
        let metadata = try outcome("metadata-narrowed-and-widened")
        #expect(correlations(metadata.toBroker, requests: true) == [1])
        #expect(correlations(metadata.toClient, requests: false) == [1])
        #expect(try outcome("hostile-sasl-v0").toBroker.isEmpty)
        #expect(try outcome("hostile-unknown-api").toBroker.isEmpty)
    }

    @Test func policyLoaderCorpusReplays() {
        let files = CorpusFiles.list(Self.corpus + "policy-loader")
        #expect(files.count >= 10)
        for file in files {
            CorpusFiles.read(file)?.withUnsafeBytes(PolicyLoaderFuzzer.run)
        }
    }
}
