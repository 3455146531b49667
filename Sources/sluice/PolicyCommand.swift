import ArgumentParser
import Enforcement
import L7Parsers
import Proxy
import PolicyEngine
#if canImport(Glibc)
import Glibc
#endif

/// `sluice policy ...`: validate and explain policies.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Validate, compile and explain CiliumNetworkPolicy and NetworkPolicy documents.",
        subcommands: [PolicyValidateCommand.self, PolicyTraceCommand.self, PolicyBenchCommand.self])
}

/// `sluice policy validate FILE...`
struct PolicyValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check policy files; report every bad document with file, line, column and field.",
        discussion: """
        Endpoints files (a mapping with 'endpoints' and no 'kind') are checked as such. \
        Every document of every policy file is checked with the reference's validation rules. A bad \
        document is rejected whole and reported as FILE:LINE:COL: field.path: what was expected. \
        Exit codes: 0 when every document is valid, 2 when any is not (or a file cannot be read).
        """)

    @Argument(help: ArgumentHelp("Policy files (YAML or JSON, several documents each).", valueName: "file"))
    var files: [String]

    @Option(name: .long, help: ArgumentHelp("Directory of secrets for headerMatches (DIR/NAMESPACE/NAME).", valueName: "dir"))
    var secretsDir: String?

    func run() throws {
        let options = PolicyLoadOptions(secretsDirectory: secretsDir)
        var failed = false
        for file in files {
            if let text = try? PolicyLoader.readText(file), EndpointDirectory.isEndpointsText(text) {
                do {
                    let directory = try EndpointDirectory.load(text: text, file: file)
                    print("\(file): ok (endpoints file: \(directory.identities.count) endpoints)")
                } catch {
                    writeStandardError("\(error)\n")
                    print("\(file): invalid endpoints file")
                    failed = true
                }
                continue
            }
            let result = PolicyLoader.load(file: file, options: options)
            for error in result.errors { writeStandardError("\(error)\n") }
            if result.errors.isEmpty {
                print("\(file): ok (\(result.documentCount) document\(result.documentCount == 1 ? "" : "s"): \(result.policies.map { "\($0.kind.rawValue) \($0.qualifiedName)" }.joined(separator: ", ")))")
            } else {
                failed = true
                print("\(file): \(result.errors.count) invalid document\(result.errors.count == 1 ? "" : "s") of \(max(result.documentCount, result.errors.count))")
            }
        }
        if failed { throw ExitCode(2) }
    }
}

/// Output format of `policy trace`.
enum TraceOutputFormat: String, ExpressibleByArgument {
    case text, json
}

/// `sluice policy trace ...`
struct PolicyTraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Explain whether policies allow a flow (and an HTTP, Kafka or DNS request on it).",
        discussion: """
        --from and --to take an IP address (looked up in --endpoints; an address it does not \
        name is reserved:world) or a label list k=v,k=v whose namespace is the label \
        k8s:io.kubernetes.pod.namespace (default: default); reserved:host and the like name \
        reserved identities. Egress is checked at the source and ingress at the destination; \
        the flow is allowed when both allow it. A request fact that is not given (method, \
        path, host, Kafka version, ...) stays absent: rules that test it do not match it, \
        rules that do not test it still may.

        --http-path is judged as the proxy judges it: normalised (RFC 3986 dot segments, \
        unreserved percent-decoding, merged slashes) unless --http-normalize-path false, as \
        the configuration's http.normalizePaths. A path with escaped slashes (%2F, %5C) is \
        answered by the proxy with a redirect to the unescaped path; trace judges that path.

        With -o json one object is printed: \
        {"verdict":"ALLOWED"|"DENIED","reason":"...","matched":[{"policy":"NS/NAME","direction":"INGRESS"|"EGRESS","rule":N}]}. \
        Exit codes: 0 for a verdict either way, 2 for bad input.
        """)

    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("Policy file or directory (repeatable).", valueName: "path"))
    var policy: [String] = []

    @Option(name: .long, help: ArgumentHelp("Endpoints file: addresses to namespace, labels and named ports.", valueName: "file"))
    var endpoints: String?

    @Option(name: .long, help: ArgumentHelp("Source: an IP address or a label list k=v,k=v.", valueName: "ip|labels"))
    var from: String

    @Option(name: .long, help: ArgumentHelp("Destination: an IP address or a label list k=v,k=v.", valueName: "ip|labels"))
    var to: String

    @Option(name: .long, help: ArgumentHelp("Destination port and protocol, e.g. 8000/TCP, 53/UDP.", valueName: "n/proto"))
    var port: String

    @Option(name: .long, help: "HTTP method.") var httpMethod: String?
    @Option(name: .long, help: "HTTP request target (path and query).") var httpPath: String?
    @Option(name: .long, help: ArgumentHelp("Judge --http-path normalised, as the proxy does by default (true|false).", valueName: "bool"))
    var httpNormalizePath: Bool = true
    @Option(name: .long, help: "HTTP Host / :authority.") var httpHost: String?
    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("HTTP header \"Name: value\" (repeatable).", valueName: "header"))
    var httpHeader: [String] = []

    @Option(name: .long, help: "DNS question name.") var dnsName: String?
    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("A name the destination address was learned under, for toFQDNs (repeatable).", valueName: "name"))
    var toFqdn: [String] = []

    @Option(name: .long, help: "Kafka API key, by name (produce, fetch, ...) or number.") var kafkaApiKey: String?
    @Option(name: .long, help: "Kafka API version.") var kafkaApiVersion: Int16?
    @Option(name: .long, help: "Kafka client ID.") var kafkaClientId: String?
    @Option(name: .long, parsing: .singleValue, help: ArgumentHelp("Kafka topic of the request (repeatable).", valueName: "topic"))
    var kafkaTopic: [String] = []

    @Option(name: .long, help: ArgumentHelp("Directory of secrets for headerMatches.", valueName: "dir"))
    var secretsDir: String?

    @Option(name: [.short, .customLong("output")], help: "Output format: text or json.")
    var output: TraceOutputFormat = .text

    func run() throws {
        do {
            let report = try trace()
            switch output {
            case .text:
                if let note = try? judgedPath()?.note { print(note) }
                print(report.explanation)
            case .json: print(Self.json(report))
            }
        } catch {
            // trace() throws only TraceInputError (typed throws).
            printError(error.message)
            throw ExitCode(2)
        }
    }

    struct TraceInputError: Error { let message: String }

    func trace() throws(TraceInputError) -> TraceReport {
        guard !policy.isEmpty else { throw TraceInputError(message: "at least one --policy is needed") }
        var loaded = PolicyLoadResult()
        let options = PolicyLoadOptions(secretsDirectory: secretsDir)
        for path in policy {
            for file in PolicyFiles.files(at: path) { loaded.append(PolicyLoader.load(file: file, options: options)) }
        }
        if !loaded.errors.isEmpty {
            throw TraceInputError(message: "invalid policy input:\n" + loaded.errors.map(\.description).joined(separator: "\n"))
        }
        var directory = EndpointDirectory()
        if let endpoints {
            do { directory = try EndpointDirectory.load(file: endpoints) } catch { throw TraceInputError(message: "\(error)") }
        }
        let source = try identity(from, option: "--from", directory: directory)
        var destination = try identity(to, option: "--to", directory: directory)
        if !toFqdn.isEmpty { destination = destination.with(dnsNames: toFqdn) }

        let parts = port.split(separator: "/")
        guard let number = parts.first.flatMap({ UInt16($0) }), parts.count <= 2 else {
            throw TraceInputError(message: "--port: expected N/PROTO such as 8000/TCP, got \"\(port)\"")
        }
        var transport = TransportProtocol.tcp
        if parts.count == 2 {
            guard let parsed = TransportProtocol(rawValue: parts[1].uppercased()) else {
                throw TraceInputError(message: "--port: expected protocol TCP, UDP, SCTP, ICMP or ICMPV6, got \"\(parts[1])\"")
            }
            transport = parsed
        }
        let snapshot = PolicySnapshot(policies: loaded.policies, endpoints: directory)
        return snapshot.trace(from: source, to: destination, port: number, transport: transport, request: try request())
    }

    /// The path the proxy would judge for --http-path, and a note when it is not the one given.
    func judgedPath() throws(TraceInputError) -> (path: String, note: String?)? {
        guard let httpPath else { return nil }
        guard httpNormalizePath else { return (httpPath, nil) }
        switch HTTP1TargetNormalization.normalize(target: Array(httpPath.utf8)) {
        case .unchanged:
            return (httpPath, nil)
        case .normalized(_, let path):
            return (path, "Path: \(httpPath) is judged (and forwarded) as \(path)")
        case .redirect(let location):
            return (location, "Path: \(httpPath) holds escaped slashes: the proxy redirects (307) to \(location), judged here")
        case .invalid(let reason):
            throw TraceInputError(message: "--http-path: \(reason); the proxy answers such a request 400")
        }
    }

    func request() throws(TraceInputError) -> TraceRequest {
        let usesHTTP = httpMethod != nil || httpPath != nil || httpHost != nil || !httpHeader.isEmpty
        let usesKafka = kafkaApiKey != nil || kafkaApiVersion != nil || kafkaClientId != nil || !kafkaTopic.isEmpty
        let usesDNS = dnsName != nil
        guard [usesHTTP, usesKafka, usesDNS].filter({ $0 }).count <= 1 else {
            throw TraceInputError(message: "give options of one L7 protocol only (--http-*, --kafka-* or --dns-name)")
        }
        if usesHTTP {
            var headers: [(name: String, value: String)] = []
            for header in httpHeader {
                guard let colon = header.firstIndex(of: ":") else {
                    throw TraceInputError(message: "--http-header: expected \"Name: value\", got \"\(header)\"")
                }
                headers.append((String(header[..<colon]).trimmingSpaces, String(header[header.index(after: colon)...]).trimmingSpaces))
            }
            // A fact not given stays absent: rules that test it do not match (no guessed GET or /).
            return .http(HTTPRequestFacts(method: httpMethod, path: try judgedPath()?.path, host: httpHost, headers: headers))
        }
        if usesKafka {
            guard let keyText = kafkaApiKey else { throw TraceInputError(message: "--kafka-api-key is needed for a Kafka trace") }
            guard let key = Int16(keyText) ?? KafkaAPIKeys.key(named: keyText) else {
                throw TraceInputError(message: "--kafka-api-key: expected a Kafka API name (produce, fetch, metadata, ...) or number, got \"\(keyText)\"")
            }
            return .kafka(KafkaRequestFacts(apiKey: key, apiVersion: kafkaApiVersion, clientID: kafkaClientId, topics: kafkaTopic))
        }
        if let dnsName { return .dns(DNSQueryFacts(name: dnsName)) }
        return .none
    }

    func identity(_ text: String, option: String, directory: EndpointDirectory) throws(TraceInputError) -> Identity {
        if let address = IPAddress(text) {
            return directory.identity(for: address)
        }
        var labels: [Label] = []
        for item in text.split(separator: ",") {
            let trimmed = String(item).trimmingSpaces
            guard !trimmed.isEmpty, !trimmed.hasPrefix("=") else {
                throw TraceInputError(message: "\(option): expected an IP address or labels k=v,k=v, got \"\(text)\"")
            }
            labels.append(Label(parsing: trimmed))
        }
        guard !labels.isEmpty else { throw TraceInputError(message: "\(option): expected an IP address or labels k=v,k=v, got \"\(text)\"") }
        if let reserved = labels.first(where: { $0.source == "reserved" }) {
            guard let kind = ReservedIdentity(rawValue: reserved.key) else {
                throw TraceInputError(message: "\(option): unknown reserved identity \"\(reserved.key)\"")
            }
            return .reserved(kind, labels: labels.filter { $0.source != "reserved" })
        }
        let namespace = labels.first { $0.key == Label.podNamespaceKey }?.value ?? "default"
        return Identity(labels: labels, namespace: namespace)
    }

    /// `{"verdict":...,"reason":...,"matched":[...]}`, keys in this order.
    static func json(_ report: TraceReport) -> String {
        var seen = Set<String>()
        let matched = report.matched.filter { seen.insert("\($0.policy)|\($0.direction)|\($0.rule)").inserted }.map {
            "{\"policy\":\(jsonString($0.policy)),\"direction\":\"\($0.direction.rawValue)\",\"rule\":\($0.rule)}"
        }
        return "{\"verdict\":\"\(report.isAllowed ? "ALLOWED" : "DENIED")\",\"reason\":\(jsonString(report.reason)),\"matched\":[\(matched.joined(separator: ","))]}"
    }

    static func jsonString(_ text: String) -> String { JSONObject.quoted(text) }
}

extension String {
    var trimmingSpaces: String {
        var text = Substring(self)
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
