import Foundation
import Yams

/// Where the API server is and how to prove who we are: from the pod's service account
/// (in-cluster) or from a kubeconfig file (its current context, or a named one).
public struct APIServerAccess: Sendable, Equatable {
    public var useTLS: Bool
    public var host: String
    public var port: UInt16
    /// A fixed bearer token (kubeconfig `token`).
    public var token: String?
    /// A file holding the bearer token, read again for every request: projected
    /// service-account tokens are rotated by the kubelet.
    public var tokenFile: String?
    public var certificateAuthorityPEM: [UInt8]?
    public var clientCertificatePEM: [UInt8]?
    public var clientKeyPEM: [UInt8]?
    public var insecureSkipTLSVerify = false
    /// Where this came from, for messages.
    public var origin: String

    /// `Host` header value (IPv6 literals bracketed).
    var hostHeader: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    public var serverURL: String { "\(useTLS ? "https" : "http")://\(hostHeader)" }

    func bearerToken() throws(APIError) -> String? {
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw APIError("cannot read the token file \(tokenFile)")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return token
    }

    /// The service account's credentials Kubernetes mounts into every pod, and the
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` variables it sets.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 accountDirectory: String = "/var/run/secrets/kubernetes.io/serviceaccount") throws(APIError) -> APIServerAccess {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty else {
            throw APIError("in-cluster: KUBERNETES_SERVICE_HOST is not set (not running in a pod?); set policy.kubernetes.kubeconfig instead")
        }
        let portText = environment["KUBERNETES_SERVICE_PORT"] ?? "443"
        guard let port = UInt16(portText), port > 0 else {
            throw APIError("in-cluster: KUBERNETES_SERVICE_PORT is '\(portText)'; expected a port number")
        }
        let tokenFile = "\(accountDirectory)/token"
        guard FileManager.default.isReadableFile(atPath: tokenFile) else {
            throw APIError("in-cluster: cannot read \(tokenFile) (is the service account token mounted?)")
        }
        let caFile = "\(accountDirectory)/ca.crt"
        guard let ca = FileManager.default.contents(atPath: caFile) else {
            throw APIError("in-cluster: cannot read \(caFile)")
        }
        return APIServerAccess(useTLS: true, host: host, port: port, token: nil, tokenFile: tokenFile,
                               certificateAuthorityPEM: Array(ca), origin: "in-cluster service account")
    }

    /// A kubeconfig file: `context` (default: `current-context`) names the cluster and the
    /// user. Supported: cluster `server`, `certificate-authority(-data)`,
    /// `insecure-skip-tls-verify`; user `token`, `tokenFile`, `client-certificate(-data)`,
    /// `client-key(-data)`. Relative file names are relative to the kubeconfig's directory.
    public static func kubeconfig(file path: String, context contextName: String? = nil) throws(APIError) -> APIServerAccess {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw APIError("kubeconfig \(path): cannot read the file")
        }
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch { throw APIError("kubeconfig \(path): invalid YAML: \(error)") }
        guard let document = root as? [String: Any] else { throw APIError("kubeconfig \(path): expected a mapping") }
        let directory = (path as NSString).deletingLastPathComponent
        func fail(_ message: String) -> APIError { APIError("kubeconfig \(path): \(message)") }
        func named(_ listKey: String, _ name: String, _ field: String) throws(APIError) -> [String: Any] {
            for entry in document[listKey] as? [[String: Any]] ?? [] where entry["name"] as? String == name {
                return entry[field] as? [String: Any] ?? [:]
            }
            throw fail("\(listKey): no entry named '\(name)'")
        }
        func readFile(_ name: String, _ what: String) throws(APIError) -> [UInt8] {
            let full = name.hasPrefix("/") ? name : "\(directory)/\(name)"
            guard let contents = FileManager.default.contents(atPath: full) else { throw fail("\(what): cannot read \(full)") }
            return Array(contents)
        }
        func decode(_ text: String, _ what: String) throws(APIError) -> [UInt8] {
            guard let decoded = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw fail("\(what): expected base64 data")
            }
            return Array(decoded)
        }
        guard let chosen = contextName ?? (document["current-context"] as? String), !chosen.isEmpty else {
            throw fail("no current-context (and none chosen with policy.kubernetes.context)")
        }
        let context = try named("contexts", chosen, "context")
        guard let clusterName = context["cluster"] as? String else { throw fail("context '\(chosen)' names no cluster") }
        let cluster = try named("clusters", clusterName, "cluster")
        let user = try (context["user"] as? String).map { name throws(APIError) in try named("users", name, "user") } ?? [:]

        guard let server = cluster["server"] as? String, let url = URL(string: server), let scheme = url.scheme,
              scheme == "https" || scheme == "http", let host = url.host, !host.isEmpty else {
            throw fail("cluster '\(clusterName)': server must be an http(s) URL, got '\(cluster["server"] ?? "")'")
        }
        if !url.path.isEmpty && url.path != "/" { throw fail("cluster '\(clusterName)': a server URL with a path is not supported") }
        let useTLS = scheme == "https"
        var access = APIServerAccess(useTLS: useTLS, host: host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")),
                                     port: UInt16(url.port ?? (useTLS ? 443 : 80)), origin: "kubeconfig \(path) (context \(chosen))")
        access.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"] as? Bool ?? false
        if let data = cluster["certificate-authority-data"] as? String {
            access.certificateAuthorityPEM = try decode(data, "certificate-authority-data")
        } else if let file = cluster["certificate-authority"] as? String {
            access.certificateAuthorityPEM = try readFile(file, "certificate-authority")
        }
        access.token = user["token"] as? String
        if let file = user["tokenFile"] as? String { access.tokenFile = file.hasPrefix("/") ? file : "\(directory)/\(file)" }
        if let data = user["client-certificate-data"] as? String {
            access.clientCertificatePEM = try decode(data, "client-certificate-data")
        } else if let file = user["client-certificate"] as? String {
            access.clientCertificatePEM = try readFile(file, "client-certificate")
        }
        if let data = user["client-key-data"] as? String {
            access.clientKeyPEM = try decode(data, "client-key-data")
        } else if let file = user["client-key"] as? String {
            access.clientKeyPEM = try readFile(file, "client-key")
        }
        if user["exec"] != nil || user["auth-provider"] != nil, access.token == nil, access.tokenFile == nil, access.clientCertificatePEM == nil {
            throw fail("user of context '\(chosen)': exec and auth-provider credentials are not supported; use a token or a client certificate")
        }
        if (access.clientCertificatePEM == nil) != (access.clientKeyPEM == nil) {
            throw fail("user of context '\(chosen)': a client certificate needs its key and the other way round")
        }
        if !useTLS, access.clientCertificatePEM != nil { throw fail("client certificates need an https server") }
        return access
    }
}
