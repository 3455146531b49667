import Foundation
import Testing
@testable import KubernetesSource

@Suite struct APIServerAccessTests {
    let directory: String = {
        let path = NSTemporaryDirectory() + "sluice-kubeconfig-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    func write(_ name: String, _ text: String) -> String {
        let path = "\(directory)/\(name)"
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    @Test func theCurrentContextChoosesClusterAndUser() throws {
        let path = write("config", """
            apiVersion: v1
            kind: Config
            current-context: b
            clusters:
              - {name: one, cluster: {server: "https://10.0.0.1:6443", certificate-authority-data: \(Data(pem.utf8).base64EncodedString())}}
              - {name: two, cluster: {server: "http://[fd00::1]:8080"}}
            users:
              - {name: u1, user: {token: secret-one}}
              - {name: u2, user: {tokenFile: token.txt}}
            contexts:
              - {name: a, context: {cluster: one, user: u1}}
              - {name: b, context: {cluster: two, user: u2}}
            """)
        _ = write("token.txt", "rotating-token\n")
        let current = try APIServerAccess.kubeconfig(file: path)
        #expect(current.host == "fd00::1" && current.port == 8080 && !current.useTLS)
        #expect(current.hostHeader == "[fd00::1]:8080")
        #expect(try current.bearerToken() == "rotating-token")
        let named = try APIServerAccess.kubeconfig(file: path, context: "a")
        #expect(named.host == "10.0.0.1" && named.port == 6443 && named.useTLS)
        #expect(named.certificateAuthorityPEM == Array(pem.utf8))
        #expect(try named.bearerToken() == "secret-one")
    }

    @Test func filesAreRelativeToTheKubeconfig() throws {
        _ = write("ca.crt", pem)
        _ = write("client.crt", pem)
        _ = write("client.key", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
        let path = write("config-files", """
            current-context: c
            clusters: [{name: k, cluster: {server: "https://kube.test", certificate-authority: ca.crt, insecure-skip-tls-verify: true}}]
            users: [{name: u, user: {client-certificate: client.crt, client-key: \(directory)/client.key}}]
            contexts: [{name: c, context: {cluster: k, user: u}}]
            """)
        let access = try APIServerAccess.kubeconfig(file: path)
        #expect(access.port == 443 && access.insecureSkipTLSVerify)
        #expect(access.certificateAuthorityPEM == Array(pem.utf8))
        #expect(access.clientCertificatePEM == Array(pem.utf8))
        #expect(access.clientKeyPEM != nil)
    }

    @Test(arguments: [
        ("clusters: []\ncontexts: []\n", "no current-context"),
        ("current-context: x\ncontexts: []\n", "contexts: no entry named 'x'"),
        ("current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: [{name: k, cluster: {server: \"ftp://x\"}}]\n", "server must be an http(s) URL"),
        ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: \"https://x\"}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\n", "exec and auth-provider credentials are not supported"),
        ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: \"https://x\", certificate-authority-data: \"%%%\"}}]\nusers: [{name: u, user: {}}]\n", "certificate-authority-data: expected base64 data"),
        ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: \"https://x\"}}]\nusers: [{name: u, user: {client-certificate-data: \"QQ==\"}}]\n", "a client certificate needs its key"),
        ("[not, a, mapping]", "expected a mapping"),
    ])
    func badKubeconfigsAreRefusedWithTheReason(text: String, expected: String) {
        let path = write("bad-\(abs(text.hashValue))", text)
        do {
            _ = try APIServerAccess.kubeconfig(file: path)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "\(error)")
            #expect(error.description.contains(path))
        }
    }

    @Test func inClusterUsesTheServiceAccountAndTheServiceVariables() throws {
        let account = "\(directory)/serviceaccount"
        try FileManager.default.createDirectory(atPath: account, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: "\(account)/token", contents: Data("projected\n".utf8))
        FileManager.default.createFile(atPath: "\(account)/ca.crt", contents: Data(pem.utf8))
        let access = try APIServerAccess.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"],
                                                   accountDirectory: account)
        #expect(access.useTLS && access.host == "10.96.0.1" && access.port == 443)
        #expect(try access.bearerToken() == "projected")
        #expect(access.certificateAuthorityPEM == Array(pem.utf8))
        // The token file is read for every request: a rotated token is used at once.
        FileManager.default.createFile(atPath: "\(account)/token", contents: Data("rotated".utf8))
        #expect(try access.bearerToken() == "rotated")

        #expect(throws: APIError.self) { try APIServerAccess.inCluster(environment: [:], accountDirectory: account) }
        #expect(throws: APIError.self) {
            try APIServerAccess.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"], accountDirectory: "\(directory)/none")
        }
    }
}
