import Testing
@testable import L7Parsers

/// Issue 9 item 2: paths are judged (and forwarded) normalised, as the reference does. Each
/// bypass the issue lists was allowed under "allow `GET /public/.*`" and served as `/admin`.
@Suite struct HTTP1TargetNormalizationTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var target: String
        var expected: HTTP1TargetNormalization
        var testDescription: String { target }
        init(_ target: String, _ expected: HTTP1TargetNormalization) {
            self.target = target
            self.expected = expected
        }
    }

    static func normalized(_ target: String) -> HTTP1TargetNormalization {
        .normalized(target: target, path: target)
    }

    /// The bypasses of the issue, each of which must no longer be judged under `/public/`.
    static let bypasses: [Case] = [
        Case("/public/../admin", normalized("/admin")),
        Case("/public/%2e%2e/admin", normalized("/admin")),
        Case("/public/%2E%2E/admin", normalized("/admin")),
        Case("/public/%2e%2E/admin", normalized("/admin")),
        Case("/public/.%2e/admin", normalized("/admin")),
        Case("/public/..%2fadmin", .redirect(location: "/admin")),
        Case("/public/..%2Fadmin", .redirect(location: "/admin")),
        Case("/public/./../admin", normalized("/admin")),
        Case("/public/x/../../admin", normalized("/admin")),
        Case("http://b/public/../admin", .normalized(target: "http://b/admin", path: "/admin")),
        Case("/public/..", normalized("/")),
    ]

    static let edges: [Case] = [
        // Already normal: the fast path.
        Case("/", .unchanged),
        Case("/public/index.html", .unchanged),
        Case("/a.b/c..d/.e/f.", .unchanged),
        Case("/.well-known/acme", .unchanged),
        Case("/a/b?x=/../y&z=%2e%2e//", .unchanged),
        Case("http://b/public/x?q=1", .unchanged),
        Case("http://b:8080/", .unchanged),
        // Dot segments (RFC 3986 §5.2.4).
        Case("/..", normalized("/")),
        Case("/.", normalized("/")),
        Case("/../..", normalized("/")),
        Case("/a/b/..", normalized("/a/")),
        Case("/a/b/.", normalized("/a/b/")),
        Case("/a/./b", normalized("/a/b")),
        Case("/a/b/c/./../../g", normalized("/a/g")),
        Case("/a/b/../c?q=..", normalized("/a/c?q=..")),
        // Repeated slashes merged, after dot segments (the reference's order).
        Case("//a//b/", normalized("/a/b/")),
        Case("//evil.example/x", normalized("/evil.example/x")),
        Case("/a//../b", normalized("/a/b")),
        // Percent-encoding: unreserved characters decoded, others kept with upper-case hex.
        Case("/a%2eb", normalized("/a.b")),
        Case("/%7Euser/%41%62%2D%5F", normalized("/~user/Ab-_")),
        Case("/a%3Fb", .unchanged),
        Case("/a%3fb", normalized("/a%3Fb")),
        Case("/a%20b%25%2e", normalized("/a%20b%25.")),
        Case("/%252e%252e/admin", .unchanged),
        // Escaped slashes: redirect to the unescaped, normalised target; query kept.
        Case("/a%2fb", .redirect(location: "/a/b")),
        Case("/a%5Cb", .redirect(location: "/a/b")),
        Case("/a%5cb/../c?x=%2F", .redirect(location: "/a/c?x=%2F")),
        Case("/public%2f..%2f..%2fadmin", .redirect(location: "/admin")),
        Case("http://b/a%2F..%2Fc", .redirect(location: "http://b/c")),
        // The query is not normalised, only carried over.
        Case("/a/./b?c=./d//e", normalized("/a/b?c=./d//e")),
        Case("/a?%zz", .unchanged),
        // Absolute-form: the path part only; an empty path is "/".
        Case("http://b", .normalized(target: "http://b/", path: "/")),
        Case("http://b?q=1", .normalized(target: "http://b/?q=1", path: "/?q=1")),
        Case("HTTP://B.example:80//x/./y", .normalized(target: "HTTP://B.example:80/x/y", path: "/x/y")),
        // No path: asterisk-form and authority-form are left alone.
        Case("*", .unchanged),
        Case("example.com:443", .unchanged),
    ]

    static let malformed: [String] = ["/%zz", "/a%", "/a%2", "/a%2?x", "/%g0/b", "http://b/%"]

    @Test(arguments: bypasses + edges)
    func normalizes(_ testCase: Case) {
        #expect(HTTP1TargetNormalization.normalize(target: Array(testCase.target.utf8)) == testCase.expected)
    }

    /// What the server receives is what was judged: normalising a result again changes nothing.
    @Test(arguments: bypasses + edges)
    func resultIsAFixedPoint(_ testCase: Case) {
        switch testCase.expected {
        case .normalized(let target, _), .redirect(let target):
            #expect(HTTP1TargetNormalization.normalize(target: Array(target.utf8)) == .unchanged)
        case .unchanged, .invalid:
            break
        }
    }

    @Test(arguments: malformed)
    func malformedPercentEncodingIsInvalid(_ target: String) {
        guard case .invalid(let reason) = HTTP1TargetNormalization.normalize(target: Array(target.utf8)) else {
            Issue.record("accepted \(target)")
            return
        }
        #expect(reason.contains("percent-encoding"))
    }

    /// Through a parsed head: the form the parser found decides; CONNECT is left alone.
    @Test func normalizesTheTargetOfAParsedHead() throws {
        let text = "GET http://b/public/%2e%2e/admin HTTP/1.1\r\nHost: b\r\n\r\n"
            + "CONNECT b:443 HTTP/1.1\r\nHost: b:443\r\n\r\n"
        var parser = HTTP1Parser(direction: .request)
        let bytes = Array(text.utf8)
        var results: [HTTP1TargetNormalization] = []
        var offset = 0
        while offset < bytes.count {
            let rest = Array(bytes[offset...])
            guard case .head(let head) = parser.parse(rest) else { break }
            results.append(rest.withUnsafeBytes { HTTP1TargetNormalization.normalize(head, in: $0) })
            offset += head.length
            _ = parser.parse(Array(bytes[offset...]))  // messageComplete
        }
        #expect(results == [.normalized(target: "http://b/admin", path: "/admin"), .unchanged])
    }

    @Test func dotSegmentRemovalFollowsTheRFCExamples() {
        // RFC 3986 §5.2.4's own examples.
        #expect(HTTP1TargetNormalization.removingDotSegments(Array("/a/b/c/./../../g".utf8)) == Array("/a/g".utf8))
        #expect(HTTP1TargetNormalization.normalize(target: Array("/mid/content=5/../6".utf8)) == Self.normalized("/mid/6"))
    }
}
