import Testing
@testable import CaptureJudgement

/// `sluice replay --expect` files: read strictly, errors located.
@Suite struct ExpectationTests {
    @Test func aFileReadsIntoExpectations() throws {
        let expectations = try Expectation.load(text: """
            - name: reads
              from: {app: frontend}
              to: 10.0.0.2
              port: 8080
              http: {method: GET, path: /api}
              verdict: allowed
            - dns: {name: example.com}
              never: denied
            """, file: "e.yaml")
        #expect(expectations == [
            Expectation(name: "reads", from: .labels(["app": "frontend"]), to: .address("10.0.0.2"), port: 8080,
                        kind: .http(method: "GET", path: "/api"), rule: .verdict(allowed: true)),
            Expectation(name: "expectation 2", from: nil, to: nil, port: nil, kind: .dns(name: "example.com"), rule: .neverDenied),
        ])
    }

    @Test(arguments: [
        ("- verdict: allowd\n", "e.yaml:1:12: [0].verdict: expected 'allowed' or 'denied'"),
        ("- name: x\n", "[0]: missing; expected 'verdict: allowed|denied' or 'never: denied'"),
        ("- verdict: allowed\n  never: denied\n", "[0].never: give either 'verdict' or 'never', not both"),
        ("- verdict: allowed\n  colour: red\n", "[0].colour: unknown key"),
        ("- verdict: allowed\n  port: 70000\n", "[0].port: expected a port from 1 to 65535"),
        ("- verdict: allowed\n  http: {}\n  dns: {}\n", "one protocol per expectation"),
        ("verdict: allowed\n", "expected a list of expectations"),
        ("", "the file is empty"),
    ])
    func badFilesAreRefusedWithTheirPlace(text: String, message: String) {
        do {
            _ = try Expectation.load(text: text, file: "e.yaml")
            Issue.record("\(text) must be refused")
        } catch {
            #expect(error.description.contains(message), "\(error)")
        }
    }
}
