import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// Why an API request failed: the HTTP status when the server answered (410 = Gone), and
/// what happened.
public struct APIError: Error, Sendable, CustomStringConvertible {
    /// The response status, nil when no response head arrived.
    public var status: Int?
    public var message: String
    public init(status: Int? = nil, _ message: String) { self.status = status; self.message = message }
    public var description: String { status.map { "HTTP \($0): \(message)" } ?? message }
}

/// One blocking TCP connection to the API server, with TLS when `tls` is given.
///
/// The Kubernetes source runs on threads of its own, one per watched resource, with
/// blocking sockets rather than on the proxy's epoll loop: a watch is one long request
/// whose events arrive seldom, the blocking shape keeps the list-then-watch protocol a
/// straight loop (see `ResourceWatcher`), and the proxy's workers never wait on the API
/// server, its TLS handshakes or the JSON decoding of a large list.
final class APIConnection {
    private let descriptor: Int32
    private var ssl: OpaquePointer?

    /// Connects to `host:port` (a name or an address) within `timeoutMilliseconds`; reads
    /// and writes then time out after `ioTimeoutSeconds` without progress.
    init(host: String, port: UInt16, tls: TLSConfiguration?, timeoutMilliseconds: Int32, ioTimeoutSeconds: Int) throws(APIError) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var results: UnsafeMutablePointer<addrinfo>?
        let lookup = getaddrinfo(host, String(port), &hints, &results)
        guard lookup == 0, let first = results else {
            throw APIError("cannot resolve \(host): \(String(cString: gai_strerror(lookup)))")
        }
        defer { freeaddrinfo(results) }
        var lastError = "no address"
        var connected: Int32 = -1
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let candidate = entry {
            entry = candidate.pointee.ai_next
            let socketDescriptor = socket(candidate.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
                                            | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard socketDescriptor >= 0 else { lastError = "socket: \(String(cString: strerror(errno)))"; continue }
            if Glibc.connect(socketDescriptor, candidate.pointee.ai_addr, candidate.pointee.ai_addrlen) != 0 && errno != EINPROGRESS {
                lastError = "connect: \(String(cString: strerror(errno)))"
                close(socketDescriptor)
                continue
            }
            var poller = pollfd(fd: socketDescriptor, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&poller, 1, timeoutMilliseconds)
            var pending: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(socketDescriptor, SOL_SOCKET, SO_ERROR, &pending, &length)
            guard ready == 1, pending == 0 else {
                lastError = ready == 0 ? "connect: timed out after \(timeoutMilliseconds) ms" : "connect: \(String(cString: strerror(pending)))"
                close(socketDescriptor)
                continue
            }
            connected = socketDescriptor
            break
        }
        guard connected >= 0 else { throw APIError("\(host):\(port): \(lastError)") }
        descriptor = connected
        // Blocking from here on, with timeouts on every read and write.
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~Int32(O_NONBLOCK))
        var timeout = timeval(tv_sec: ioTimeoutSeconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
        if let tls {
            do throws(APIError) {
                ssl = try tls.handshake(descriptor: descriptor, serverName: host)
            } catch {
                close(descriptor)
                throw error
            }
        }
    }

    deinit {
        if let ssl {
            SSL_shutdown(ssl)
            SSL_free(ssl)
        }
        close(descriptor)
    }

    func write(_ bytes: [UInt8]) throws(APIError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer -> Int in
                let start = buffer.baseAddress! + offset
                if let ssl { return Int(SSL_write(ssl, start, Int32(buffer.count - offset))) }
                return Glibc.send(descriptor, start, buffer.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written <= 0 {
                if ssl == nil, errno == EINTR { continue }
                throw APIError("write: \(ssl != nil ? TLSConfiguration.lastError() : String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    /// Reads what is there (blocking until something is); 0 at the end of the stream.
    func read(into buffer: inout [UInt8], upTo count: Int) throws(APIError) -> Int {
        let start = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: count))
        while true {
            let received = buffer.withUnsafeMutableBytes { raw -> Int in
                let place = raw.baseAddress! + start
                if let ssl { return Int(SSL_read(ssl, place, Int32(count))) }
                return Glibc.recv(descriptor, place, count, 0)
            }
            if received >= 0 || (ssl == nil && errno == EINTR) {
                if received >= 0 {
                    buffer.removeLast(count - received)
                    return received
                }
                continue
            }
            buffer.removeLast(count)
            if let ssl {
                let code = SSL_get_error(ssl, Int32(received))
                if code == SSL_ERROR_ZERO_RETURN { return 0 }
                if code == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    throw APIError("read: no data for the I/O timeout")
                }
                throw APIError("read: \(TLSConfiguration.lastError())")
            }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw APIError("read: no data for the I/O timeout") }
            throw APIError("read: \(String(cString: strerror(errno)))")
        }
    }
}

/// TLS towards the API server through OpenSSL: the CA bundle that signs the server's
/// certificate (or none checked, with `insecure-skip-tls-verify`), and a client certificate
/// when the kubeconfig has one.
final class TLSConfiguration: @unchecked Sendable {
    private let context: OpaquePointer
    let verifiesServer: Bool

    init(certificateAuthorityPEM: [UInt8]?, clientCertificatePEM: [UInt8]?, clientKeyPEM: [UInt8]?, insecure: Bool) throws(APIError) {
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw APIError("TLS: \(Self.lastError())") }
        self.context = context
        verifiesServer = !insecure
        SSL_CTX_set_verify(context, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, nil)
        if let certificateAuthorityPEM, !insecure {
            let store = SSL_CTX_get_cert_store(context)
            let added = try Self.forEachCertificate(certificateAuthorityPEM) { certificate in X509_STORE_add_cert(store, certificate) == 1 }
            guard added > 0 else { throw APIError("TLS: the certificate authority data holds no PEM certificate") }
        } else if !insecure {
            SSL_CTX_set_default_verify_paths(context)
        }
        if let clientCertificatePEM {
            guard let clientKeyPEM else { throw APIError("TLS: a client certificate without a client key") }
            var used = false
            _ = try Self.forEachCertificate(clientCertificatePEM) { certificate in
                used = SSL_CTX_use_certificate(context, certificate) == 1
                return false  // the first certificate is the client's; the rest would be its chain
            }
            guard used else { throw APIError("TLS: the client certificate data holds no usable PEM certificate: \(Self.lastError())") }
            let key: OpaquePointer? = clientKeyPEM.withUnsafeBytes { raw in
                let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count))
                defer { BIO_free(bio) }
                return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
            }
            guard let key else { throw APIError("TLS: the client key data holds no PEM private key") }
            defer { EVP_PKEY_free(key) }
            guard SSL_CTX_use_PrivateKey(context, key) == 1, SSL_CTX_check_private_key(context) == 1 else {
                throw APIError("TLS: the client key does not match the client certificate: \(Self.lastError())")
            }
        }
    }

    deinit { SSL_CTX_free(context) }

    /// Calls `body` with each certificate of a PEM bundle until it returns false; how many it saw.
    private static func forEachCertificate(_ pem: [UInt8], _ body: (OpaquePointer) -> Bool) throws(APIError) -> Int {
        pem.withUnsafeBytes { raw in
            let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count))
            defer { BIO_free(bio) }
            var count = 0
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
                count += 1
                let goOn = body(certificate)
                X509_free(certificate)
                if !goOn { break }
            }
            ERR_clear_error()
            return count
        }
    }

    /// Runs the TLS handshake on a connected blocking socket, checking the server's name
    /// (or address) against its certificate unless verification is off.
    func handshake(descriptor: Int32, serverName: String) throws(APIError) -> OpaquePointer {
        guard let ssl = SSL_new(context) else { throw APIError("TLS: \(Self.lastError())") }
        SSL_set_fd(ssl, descriptor)
        let isAddress = serverName.contains(":") || serverName.split(separator: ".").allSatisfy { UInt8($0) != nil }
        if !isAddress {
            // SSL_set_tlsext_host_name is a macro over SSL_ctrl.
            _ = serverName.withCString { SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), UnsafeMutableRawPointer(mutating: $0)) }
        }
        if verifiesServer {
            let parameters = SSL_get0_param(ssl)
            if isAddress {
                X509_VERIFY_PARAM_set1_ip_asc(parameters, serverName)
            } else {
                SSL_set1_host(ssl, serverName)
            }
        }
        guard SSL_connect(ssl) == 1 else {
            let verify = SSL_get_verify_result(ssl)
            let reason = verify != X509_V_OK ? String(cString: X509_verify_cert_error_string(verify)) : Self.lastError()
            SSL_free(ssl)
            throw APIError("TLS handshake with \(serverName): \(reason)")
        }
        return ssl
    }

    static func lastError() -> String {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return "connection closed" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
