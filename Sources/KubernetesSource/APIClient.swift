import L7Parsers
#if canImport(Glibc)
import Glibc
#endif

/// The bytes side of the API as the watch loop uses it: a whole response body, or a body
/// streamed as newline-delimited lines. `ResourceWatcher` decodes and decides; tests drive
/// it with a transport of their own, without sockets.
public protocol APITransport: Sendable {
    /// GETs `path`: the whole body of a 200 answer, else an `APIError` (with the status).
    func get(_ path: String) throws(APIError) -> [UInt8]
    /// GETs `path` and hands each line of a 200 answer's body to `onLine` until the
    /// stream ends, fails, or `onLine` returns false. Returns nil after a clean end (or a
    /// stop asked by `onLine`), else the error (with the status when the answer was not 200).
    func stream(_ path: String, onLine: ([UInt8]) -> Bool) -> APIError?
}

/// Limits on what the API server may send (a broken or hostile server cannot make the
/// node run out of memory).
public struct APILimits: Sendable, Equatable {
    /// Largest list response body (one page).
    public var maximumListBytes: Int = 256 << 20
    /// Largest single watch event (one line).
    public var maximumEventBytes: Int = 16 << 20
    /// Most objects of one resource.
    public var maximumObjects: Int = 200_000
    /// Objects asked for per list page (`limit`); the pages are applied together, never one alone.
    public var pageSize: Int = 500
    /// Watch requests ask the server to end the stream after this many seconds (then resume).
    public var watchTimeoutSeconds: Int = 300
    public init() {}
}

/// Sluice's own Kubernetes API client: HTTP/1.1 requests, responses framed by the
/// project's HTTP/1.1 parser (`HTTP1Parser` in response mode: Content-Length, chunked,
/// until-close, with its limits on heads and chunk lines), TLS through OpenSSL. One
/// connection per request: lists are rare and a watch holds its connection for minutes.
public final class APIClient: APITransport, @unchecked Sendable {
    public let access: APIServerAccess
    public let limits: APILimits
    private let tls: TLSConfiguration?

    public init(access: APIServerAccess, limits: APILimits = APILimits()) throws(APIError) {
        self.access = access
        self.limits = limits
        tls = access.useTLS ? try TLSConfiguration(certificateAuthorityPEM: access.certificateAuthorityPEM,
                                                   clientCertificatePEM: access.clientCertificatePEM,
                                                   clientKeyPEM: access.clientKeyPEM, insecure: access.insecureSkipTLSVerify) : nil
    }

    public func get(_ path: String) throws(APIError) -> [UInt8] {
        var body: [UInt8] = []
        var tooLarge = false
        let limit = limits.maximumListBytes
        let status = try exchange(path, ioTimeout: 60) { bytes in
            if body.count + bytes.count > limit { tooLarge = true; return false }
            body.append(contentsOf: bytes)
            return true
        }
        if tooLarge { throw APIError(status: status, "the response is larger than the \(limit)-byte limit (kubernetes limits)") }
        guard status == 200 else { throw APIError(status: status, Self.statusMessage(body)) }
        return body
    }

    public func stream(_ path: String, onLine: ([UInt8]) -> Bool) -> APIError? {
        var line: [UInt8] = []
        var failure: APIError?
        var errorBody: [UInt8] = []
        var status = 0
        let limit = limits.maximumEventBytes
        do throws(APIError) {
            status = try exchange(path, ioTimeout: limits.watchTimeoutSeconds + 60, onHead: { status = $0 }) { bytes in
                guard status == 200 else {
                    if errorBody.count < 65_536 { errorBody.append(contentsOf: bytes.prefix(65_536 - errorBody.count)) }
                    return true
                }
                var start = bytes.startIndex
                for index in bytes.indices where bytes[index] == UInt8(ascii: "\n") {
                    line.append(contentsOf: bytes[start..<index])
                    start = index + 1
                    if line.count > limit { failure = APIError("a watch event is larger than the \(limit)-byte limit"); return false }
                    let whole = line
                    line.removeAll(keepingCapacity: true)
                    if !whole.allSatisfy({ $0 == 32 || $0 == 13 }) && !onLine(whole) { return false }
                }
                line.append(contentsOf: bytes[start...])
                if line.count > limit { failure = APIError("a watch event is larger than the \(limit)-byte limit"); return false }
                return true
            }
        } catch {
            return error
        }
        if let failure { return failure }
        if status != 200 { return APIError(status: status, Self.statusMessage(errorBody)) }
        return nil
    }

    /// The `message` of a Kubernetes Status body, else the start of the body.
    static func statusMessage(_ body: [UInt8]) -> String {
        let text = String(decoding: body.prefix(4096), as: UTF8.self)
        if let range = text.range(of: "\"message\":") {
            let rest = text[range.upperBound...].drop { $0 == " " || $0 == "\"" }
            return String(rest.prefix { $0 != "\"" })
        }
        return text.isEmpty ? "(no body)" : String(text.prefix(200))
    }

    /// Sends `GET path` and feeds the response body to `onBody` as it arrives (until it
    /// returns false); returns the final status.
    private func exchange(_ path: String, ioTimeout: Int, onHead: (Int) -> Void = { _ in },
                          onBody: (ArraySlice<UInt8>) -> Bool) throws(APIError) -> Int {
        let connection = try APIConnection(host: access.host, port: access.port, tls: tls, timeoutMilliseconds: 10_000,
                                           ioTimeoutSeconds: ioTimeout)
        var request = "GET \(path) HTTP/1.1\r\nHost: \(access.hostHeader)\r\nAccept: application/json\r\n"
            + "User-Agent: sluice\r\nConnection: close\r\n"
        if let token = try access.bearerToken() { request += "Authorization: Bearer \(token)\r\n" }
        request += "\r\n"
        try connection.write(Array(request.utf8))

        var parser = HTTP1Parser(direction: .response)
        parser.expectResponse(to: HTTP1RequestSummary())
        var buffer: [UInt8] = []
        var start = 0
        var status = 0
        var ended = false
        while true {
            let event = buffer.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[start...])) }
            switch event {
            case .needMore:
                if ended {
                    switch parser.endOfInput(unconsumedBytes: buffer.count - start) {
                    case .messageComplete: return status
                    case .cleanClose where status != 0: return status
                    case .cleanClose: throw APIError("the server closed the connection without answering")
                    case .truncated(let error): throw APIError(status: status == 0 ? nil : status, "the response was cut short: \(error)")
                    }
                }
                if start > 0 && start >= buffer.count / 2 {
                    buffer.removeFirst(start)
                    start = 0
                }
                if try connection.read(into: &buffer, upTo: 65_536) == 0 { ended = true }
            case .head(let head):
                start += head.length
                if !head.isInformational {
                    status = head.statusCode
                    onHead(status)
                }
            case .body(let count):
                let keepGoing = onBody(buffer[start..<start + count])
                start += count
                if !keepGoing { return status }
            case .chunkFraming(let count):
                start += count
            case .messageComplete(let consumed, _):
                start += consumed
                return status
            case .tunnel:
                throw APIError(status: status, "the server switched protocols")
            case .error(let error):
                throw APIError(status: status == 0 ? nil : status, "invalid HTTP response: \(error)")
            }
        }
    }
}
