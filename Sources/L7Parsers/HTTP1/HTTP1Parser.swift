#if canImport(Glibc)
import Glibc
#endif
/// An incremental, zero-copy HTTP/1.1 message parser for one direction of one connection.
///
/// Feed it the unconsumed bytes at the front of the connection buffer; it answers with one
/// `HTTP1Event` for the bytes at the front. Every event but `needMore` and `error` says how
/// many bytes it consumed; the caller removes exactly those and calls again. After
/// `needMore` the caller presents the same bytes with more appended (it may move them, but
/// must not drop any from the front): the parser keeps its scan position and the ranges it
/// has found, so the line-feed search never revisits a byte and each complete line is
/// validated once. However the input is split, a head costs linear time (one byte per call
/// included).
///
/// The parser is strict about framing (RFC 9112 §6, §11.2 request smuggling): anything two
/// reasonable implementations could frame differently is an error, never a guess.
///
/// Responses: RFC 9112 §6.3 frames a response by the request it answers. Before the bytes of
/// a response arrive, call `expectResponse(to:)` once per request, in request order.
public struct HTTP1Parser: Sendable {
    public let direction: TrafficDirection
    public var limits: HTTP1Limits

    private enum State: Sendable {
        case head
        case fixedBody(remaining: Int)
        case chunkHeader
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        /// The head or body is done; the next call reports `messageComplete`.
        case messageEnd
        /// The last message closed the connection (RFC 9112 §9.6); no byte may follow.
        case closed
        case untilClose
        case tunnel
        case failed(HTTP1ParseError)
    }

    /// Progress through a head or trailer section, kept between calls. Offsets are into the
    /// caller's buffer, whose front does not move while a section is incomplete.
    private struct SectionScan: Sendable {
        var lineStart = 0
        var startLineDone = false
        var leadingEmptyLines = 0
        var fieldsStart = 0
        var head = HTTP1Head()
        var contentLength: Int? = nil
        var sawTransferEncoding = false
        var chunkedSeen = false
        var chunkedIsFinal = false
        var unknownCoding = false
        var hostCount = 0
        var connectionClose = false
        var connectionKeepAlive = false
        var connectionUpgrade = false
        var sawUpgrade = false

        /// Appends a field line, reserving room for a typical head with the first one: one
        /// allocation per head instead of a few growths (most heads have fewer fields), and
        /// none at all until a field arrives, so a parser between messages (an idle
        /// keep-alive connection) holds no field storage.
        mutating func append(_ field: HTTP1Field) {
            if head.fields.capacity == 0 { head.fields.reserveCapacity(16) }
            head.fields.append(field)
        }
    }

    /// A `SectionScan` out of line, copied on write: one allocation per section, made when
    /// the section's first line is recorded and dropped when it ends, so a parser between
    /// messages (an idle keep-alive connection) holds a nil pointer instead of ~270 bytes.
    private final class SectionScanStorage: ManagedBuffer<Void, SectionScan> {
        static func make(_ scan: SectionScan) -> SectionScanStorage {
            let storage = unsafeDowncast(create(minimumCapacity: 1) { _ in }, to: SectionScanStorage.self)
            storage.withUnsafeMutablePointerToElements { $0.initialize(to: scan) }
            return storage
        }

        /// The scan; valid while this storage is alive. Accessed through the pointer, so
        /// reads and writes cost no dynamic exclusivity check.
        var pointer: UnsafeMutablePointer<SectionScan> { withUnsafeMutablePointerToElements { $0 } }

        deinit { withUnsafeMutablePointerToElements { _ = $0.deinitialize(count: 1) } }
    }

    /// What a parser between sections reads: a fresh scan, shared, never written.
    nonisolated(unsafe) private static let freshScanStorage = SectionScanStorage.make(SectionScan())

    /// The storage reference, Sendable because it is copied on write: a storage reachable
    /// from two parsers is never written, so sharing it across threads shares immutable data.
    private struct ScanReference: @unchecked Sendable {
        var storage: SectionScanStorage?
        /// Where the scan lies: in `storage`, or in the shared fresh scan when there is none.
        /// Kept beside the reference so that reading a field costs no reference counting.
        var pointer: UnsafeMutablePointer<SectionScan> = HTTP1Parser.freshScanStorage.pointer

        mutating func replace(with storage: SectionScanStorage?) {
            self.storage = storage
            pointer = (storage ?? HTTP1Parser.freshScanStorage).pointer
        }
    }

    private var state: State = .head
    /// The section in progress; nil until its first change (reads see a fresh scan).
    private var scanReference = ScanReference()
    /// Where the next line-feed search of a head, chunk line or trailer section starts. Kept
    /// inline: chunk lines move it without needing the rest of a section scan.
    private var searchFrom = 0
    private var pendingRequests: [HTTP1RequestSummary] = []
    private var completedHeadSwitchesProtocol = false
    private var completedHeadClosesConnection = false
    /// Bytes the line-feed searches have stepped over, for tests that prove a split feed
    /// never rescans (at most one look per byte of head, chunk line and trailers).
    #if DEBUG
    private(set) var bytesExamined = 0
    #endif

    /// The scan in progress, read and written in place through its storage's address. (Not
    /// `_read`/`_modify`: a read coroutine yielding a value this large needs a heap-allocated
    /// frame, which cost one allocation per field read: ~90 per request.)
    private var scan: SectionScan {
        unsafeAddress {
            UnsafePointer(scanReference.pointer)
        }
        unsafeMutableAddress {
            if scanReference.storage == nil {
                scanReference.replace(with: .make(SectionScan()))
            } else if !isKnownUniquelyReferenced(&scanReference.storage!) {
                // This parser was copied mid-section: the copies part ways here.
                scanReference.replace(with: .make(scanReference.pointer.pointee))
            }
            return scanReference.pointer
        }
    }

    /// Starts a fresh section scan (drops the current one).
    private mutating func resetScan() {
        scanReference.replace(with: nil)
        searchFrom = 0
    }

    public init(direction: TrafficDirection, limits: HTTP1Limits = .standard) {
        self.direction = direction
        self.limits = limits
    }

    /// Response parser only: the next unanswered request, in request order.
    public mutating func expectResponse(to request: HTTP1RequestSummary) {
        pendingRequests.append(request)
    }

    /// Drops the request a final response answers; an emptied queue lets its storage go, so
    /// an idle keep-alive connection holds none.
    private mutating func removeFrontRequest() {
        pendingRequests.removeFirst()
        if pendingRequests.isEmpty { pendingRequests = [] }
    }

    /// Response parser only: requests told with `expectResponse(to:)` whose final response
    /// has not started yet.
    public var pendingResponseCount: Int { pendingRequests.count }

    /// True between messages: nothing of a next message has been consumed or scanned.
    public var isAtMessageBoundary: Bool {
        if case .head = state { return searchFrom == 0 }
        return false
    }

    /// True once the connection carries opaque bytes (after `enterTunnel()` or a response
    /// that switched protocol).
    public var isTunnel: Bool {
        if case .tunnel = state { return true }
        return false
    }

    /// Makes every later byte opaque (`.tunnel`). A request parser is told this by its
    /// driver when the response to an upgrade or CONNECT switched protocol; a response
    /// parser switches itself after such a response.
    public mutating func enterTunnel() {
        state = .tunnel
    }

    /// What the end of the input means: a clean close between messages, the end of a body
    /// delimited by the close (RFC 9112 §6.3 item 8), or a truncated message (§8).
    public enum EndOfInput: Sendable, Equatable {
        case cleanClose
        case messageComplete
        case truncated(HTTP1ParseError)
    }

    /// The peer closed; `unconsumedBytes` are the bytes still held at the front.
    public mutating func endOfInput(unconsumedBytes: Int) -> EndOfInput {
        switch state {
        case .head where unconsumedBytes == 0:
            return .cleanClose
        case .untilClose, .messageEnd:
            state = .tunnel
            return .messageComplete
        case .tunnel, .closed:
            return .cleanClose
        case .failed(let error):
            return .truncated(error)
        default:
            let error = makeError(.truncatedMessage, unconsumedBytes)
            state = .failed(error)
            return .truncated(error)
        }
    }

    /// Convenience for tests and tools: parses the bytes of an array without copying them.
    public mutating func parse(_ bytes: [UInt8]) -> HTTP1Event {
        bytes.withUnsafeBytes { parse($0) }
    }

    /// Convenience for tests and tools: parses the bytes of a slice without copying them.
    public mutating func parse(_ bytes: ArraySlice<UInt8>) -> HTTP1Event {
        bytes.withUnsafeBytes { parse($0) }
    }

    /// One step: the event for the bytes at the front of `bytes` (see the type's contract).
    public mutating func parse(_ bytes: UnsafeRawBufferPointer) -> HTTP1Event {
        switch state {
        case .head:
            return parseHead(bytes)
        case .fixedBody(let remaining):
            guard !bytes.isEmpty else { return .needMore(minimumBytes: 1) }
            let count = min(remaining, bytes.count)
            state = count == remaining ? .messageEnd : .fixedBody(remaining: remaining - count)
            return .body(count)
        case .messageEnd:
            finishMessage()
            return .messageComplete(consumed: 0, trailers: [])
        case .chunkHeader:
            return parseChunkHeader(bytes)
        case .chunkData(let remaining):
            guard !bytes.isEmpty else { return .needMore(minimumBytes: 1) }
            let count = min(remaining, bytes.count)
            state = count == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - count)
            return .body(count)
        case .chunkDataEnd:
            // RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF.
            if bytes.count >= 1 && bytes[0] != HTTP1Grammar.carriageReturn {
                return fail(.missingChunkTerminator, 0)
            }
            if bytes.count >= 2 && bytes[1] != HTTP1Grammar.lineFeed {
                return fail(.missingChunkTerminator, 1)
            }
            guard bytes.count >= 2 else { return .needMore(minimumBytes: 2 - bytes.count) }
            state = .chunkHeader
            searchFrom = 0
            return .chunkFraming(2)
        case .trailers:
            return parseTrailers(bytes)
        case .untilClose:
            guard !bytes.isEmpty else { return .needMore(minimumBytes: 1) }
            return .body(bytes.count)
        case .tunnel:
            guard !bytes.isEmpty else { return .needMore(minimumBytes: 1) }
            return .tunnel(bytes.count)
        case .closed:
            // RFC 9112 §9.6: "A server that receives a "close" connection option MUST
            // initiate closure of the connection ... and MUST NOT process any further
            // requests received on that connection."
            guard !bytes.isEmpty else { return .needMore(minimumBytes: 1) }
            return fail(.dataAfterClose, 0)
        case .failed(let error):
            return .error(error)
        }
    }

    // MARK: - Errors

    private func makeError(_ kind: HTTP1ParseError.Kind, _ offset: Int) -> HTTP1ParseError {
        guard direction == .request else {
            // The upstream sent something we cannot frame: the client gets a gateway error.
            return HTTP1ParseError(kind: kind, offset: offset, status: 502)
        }
        let status: Int
        switch kind {
        case .requestLineTooLong: status = 414
        case .headerSectionTooLarge, .tooManyHeaderFields, .trailerSectionTooLarge, .tooManyTrailerFields:
            status = 431
        // RFC 9112 §6.1: "A server that receives a request message with a transfer coding
        // it does not understand SHOULD respond with 501 (Not Implemented)."
        case .unsupportedTransferCoding: status = 501
        // RFC 9110 §15.6.6: 505 "the server does not support, or refuses to support, the
        // major version of HTTP that was used in the request message".
        case .unsupportedVersion: status = 505
        default: status = 400
        }
        return HTTP1ParseError(kind: kind, offset: offset, status: status)
    }

    private mutating func fail(_ kind: HTTP1ParseError.Kind, _ offset: Int) -> HTTP1Event {
        let error = makeError(kind, offset)
        state = .failed(error)
        return .error(error)
    }

    // MARK: - Head

    private mutating func parseHead(_ bytes: UnsafeRawBufferPointer) -> HTTP1Event {
        let count = bytes.count
        var position = searchFrom
        if direction == .response && !scan.startLineDone {
            // RFC 9112 §4: a status-line starts with HTTP-version, "HTTP/" first. Checked on
            // the bytes already here, so a server sending garbage without a line feed (a
            // body after a 204, say) is an error now rather than a wait for a line end.
            let prefix: StaticString = "HTTP/"
            let checked = min(count - scan.lineStart, prefix.utf8CodeUnitCount)
            for offset in 0..<max(checked, 0) where bytes[scan.lineStart + offset] != prefix.utf8Start[offset] {
                return fail(.malformedStatusLine, scan.lineStart)
            }
        }
        while true {
            guard let lineFeed = nextLineFeed(in: bytes, from: position) else {
                searchFrom = count
                if let (kind, offset) = partialHeadLimitExceeded(count) { return fail(kind, offset) }
                return .needMore(minimumBytes: 1)
            }
            let lineStart = scan.lineStart
            // Limits first, measured as the partial-line check measures them, so the answer
            // does not depend on where the input was split.
            if !scan.startLineDone {
                let lineLimit = direction == .request ? limits.maximumRequestLineBytes : limits.maximumStatusLineBytes
                if lineFeed - lineStart - 1 > lineLimit {
                    return fail(direction == .request ? .requestLineTooLong : .statusLineTooLong, lineStart)
                }
            } else if lineFeed + 1 - scan.fieldsStart > limits.maximumHeaderBytes {
                return fail(.headerSectionTooLarge, scan.fieldsStart)
            }
            // RFC 9112 §2.2: "A sender MUST NOT generate a bare CR (a CR character not
            // immediately followed by LF) ..."; we read lines strictly as CRLF-terminated
            // and reject a bare LF instead of accepting it as a terminator.
            guard lineFeed > lineStart, bytes[lineFeed - 1] == HTTP1Grammar.carriageReturn else {
                return fail(.bareLineFeed, lineFeed)
            }
            let contentEnd = lineFeed - 1
            let next = lineFeed + 1

            if !scan.startLineDone {
                if contentEnd == lineStart {
                    // RFC 9112 §2.2: "a server that is expecting to receive and parse a
                    // request-line SHOULD ignore at least one empty line (CRLF) received
                    // prior to the request-line." Responses get no such leniency.
                    guard direction == .request,
                          scan.leadingEmptyLines < limits.maximumLeadingEmptyLines else {
                        return fail(direction == .request ? .tooManyLeadingEmptyLines : .malformedStatusLine, lineStart)
                    }
                    scan.leadingEmptyLines += 1
                } else {
                    let failure = direction == .request
                        ? parseRequestLine(bytes, lineStart..<contentEnd)
                        : parseStatusLine(bytes, lineStart..<contentEnd)
                    if let (kind, offset) = failure { return fail(kind, offset) }
                    scan.startLineDone = true
                    scan.fieldsStart = next
                }
            } else if contentEnd == lineStart {
                return finishHead(bytes, length: next)
            } else {
                if scan.head.fields.count >= limits.maximumHeaderCount {
                    return fail(.tooManyHeaderFields, lineStart)
                }
                switch Self.parseFieldLine(bytes, lineStart..<contentEnd, lineEnd: next) {
                case .failure(let failure):
                    return fail(failure.kind, failure.offset)
                case .success(let field):
                    scan.append(field)
                    if let (kind, offset) = noteHeaderField(bytes, field) { return fail(kind, offset) }
                }
            }
            scan.lineStart = next
            position = next
        }
    }

    /// The next line feed at or after `start`, or nil when the bytes end first. Each byte is
    /// examined once across calls: callers resume from where the last search stopped.
    private mutating func nextLineFeed(in bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        let count = bytes.count
        var position = count
        // memchr: the C library's vectorised byte search, several times faster than a loop.
        if start < count, let base = bytes.baseAddress,
           let found = memchr(base + start, Int32(HTTP1Grammar.lineFeed), count - start) {
            position = UnsafeRawPointer(found) - base
        }
        #if DEBUG
        bytesExamined += min(position + 1, count) - start
        #endif
        return position == count ? nil : position
    }

    /// Limits that can be exceeded before a line is complete, so a peer cannot make us hold
    /// an unbounded line waiting for its LF.
    private func partialHeadLimitExceeded(_ count: Int) -> (HTTP1ParseError.Kind, Int)? {
        if !scan.startLineDone {
            // The partial line's last byte may be its CR.
            let lineLimit = direction == .request ? limits.maximumRequestLineBytes : limits.maximumStatusLineBytes
            if count - scan.lineStart - 1 > lineLimit {
                return (direction == .request ? .requestLineTooLong : .statusLineTooLong, scan.lineStart)
            }
        } else if count - scan.fieldsStart > limits.maximumHeaderBytes {
            return (.headerSectionTooLarge, scan.fieldsStart)
        }
        return nil
    }

    private struct LineFailure: Error { var kind: HTTP1ParseError.Kind; var offset: Int }

    /// RFC 9112 §5: field-line = field-name ":" OWS field-value OWS.
    private static func parseFieldLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>,
                                       lineEnd: Int) -> Result<HTTP1Field, LineFailure> {
        let start = line.lowerBound
        // RFC 9112 §5.2: "A server that receives an obs-fold in a request message ... MUST
        // either reject the message by sending a 400 (Bad Request) ..."; a proxy cannot
        // know how the next hop would unfold it, so responses are rejected too.
        if HTTP1Grammar.isWhitespace(bytes[start]) {
            return .failure(LineFailure(kind: .obsoleteLineFolding, offset: start))
        }
        var position = start
        while position < line.upperBound && HTTP1Grammar.isTokenByte(bytes[position]) { position += 1 }
        guard position < line.upperBound else {
            return .failure(LineFailure(kind: .invalidFieldName, offset: start))
        }
        let stop = bytes[position]
        if stop != HTTP1Grammar.colon {
            // RFC 9112 §5.1: "A server MUST reject, with a response status code of 400 (Bad
            // Request), any received request message that contains whitespace between a
            // header field name and colon."
            let kind: HTTP1ParseError.Kind = HTTP1Grammar.isWhitespace(stop) ? .whitespaceBeforeColon
                : stop == HTTP1Grammar.carriageReturn ? .bareCarriageReturn : .invalidFieldName
            return .failure(LineFailure(kind: kind, offset: position))
        }
        guard position > start else {
            return .failure(LineFailure(kind: .invalidFieldName, offset: start))
        }
        let name = start..<position
        var valueStart = position + 1
        if let index = HTTP1Grammar.firstInvalidFieldValueByte(bytes, in: valueStart..<line.upperBound) {
            let kind: HTTP1ParseError.Kind = bytes[index] == HTTP1Grammar.carriageReturn ? .bareCarriageReturn : .invalidFieldValue
            return .failure(LineFailure(kind: kind, offset: index))
        }
        var valueEnd = line.upperBound
        while valueStart < valueEnd && HTTP1Grammar.isWhitespace(bytes[valueStart]) { valueStart += 1 }
        while valueEnd > valueStart && HTTP1Grammar.isWhitespace(bytes[valueEnd - 1]) { valueEnd -= 1 }
        return .success(HTTP1Field(name: name, value: valueStart..<valueEnd, line: start..<lineEnd))
    }

    /// Records the fields that frame the message or steer the connection; rejects their
    /// invalid forms as soon as they are seen.
    private mutating func noteHeaderField(_ bytes: UnsafeRawBufferPointer,
                                          _ field: HTTP1Field) -> (HTTP1ParseError.Kind, Int)? {
        let name = field.name, value = field.value
        switch name.count {
        case 14 where HTTP1Grammar.equalsIgnoringCase(bytes, name, "content-length"):
            // RFC 9112 §6.3 item 5: "If a message is received without Transfer-Encoding and
            // with an invalid Content-Length header field, then the message framing is
            // invalid and the recipient MUST treat it as an unrecoverable error". We accept
            // only one field line holding 1*DIGIT: a repeated line or a list, even of equal
            // values, is what smuggling attempts look like.
            if scan.contentLength != nil { return (.duplicateContentLength, name.lowerBound) }
            guard !value.isEmpty else { return (.invalidContentLength, value.lowerBound) }
            var length = 0
            for index in value {
                let byte = bytes[index]
                guard HTTP1Grammar.isDigit(byte) else { return (.invalidContentLength, index) }
                let (times10, overflow1) = length.multipliedReportingOverflow(by: 10)
                let (sum, overflow2) = times10.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
                if overflow1 || overflow2 { return (.invalidContentLength, index) }
                length = sum
            }
            scan.contentLength = length
        case 17 where HTTP1Grammar.equalsIgnoringCase(bytes, name, "transfer-encoding"):
            scan.sawTransferEncoding = true
            var failure: (HTTP1ParseError.Kind, Int)? = nil
            _ = HTTP1Grammar.forEachListElement(bytes, value) { element in
                // An empty element or a coding with parameters is not something we frame.
                guard !element.isEmpty, element.allSatisfy({ HTTP1Grammar.isTokenByte(bytes[$0]) }) else {
                    failure = (.invalidTransferEncoding, element.lowerBound)
                    return false
                }
                // RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding more
                // than once to a message body"; anything after chunked makes it not final.
                if scan.chunkedSeen {
                    scan.chunkedIsFinal = false
                    if direction == .request { failure = (.chunkedNotFinal, element.lowerBound); return false }
                }
                if HTTP1Grammar.equalsIgnoringCase(bytes, element, "chunked") {
                    scan.chunkedSeen = true
                    scan.chunkedIsFinal = true
                } else if !(HTTP1Grammar.equalsIgnoringCase(bytes, element, "gzip")
                            || HTTP1Grammar.equalsIgnoringCase(bytes, element, "deflate")
                            || HTTP1Grammar.equalsIgnoringCase(bytes, element, "compress")
                            || HTTP1Grammar.equalsIgnoringCase(bytes, element, "x-gzip")
                            || HTTP1Grammar.equalsIgnoringCase(bytes, element, "x-compress")) {
                    scan.unknownCoding = true
                }
                return true
            }
            if let failure { return failure }
        case 10 where HTTP1Grammar.equalsIgnoringCase(bytes, name, "connection"):
            _ = HTTP1Grammar.forEachListElement(bytes, value) { option in
                if HTTP1Grammar.equalsIgnoringCase(bytes, option, "close") { scan.connectionClose = true }
                else if HTTP1Grammar.equalsIgnoringCase(bytes, option, "keep-alive") { scan.connectionKeepAlive = true }
                else if HTTP1Grammar.equalsIgnoringCase(bytes, option, "upgrade") { scan.connectionUpgrade = true }
                return true
            }
        case 7 where HTTP1Grammar.equalsIgnoringCase(bytes, name, "upgrade"):
            scan.sawUpgrade = !value.isEmpty
        case 6 where HTTP1Grammar.equalsIgnoringCase(bytes, name, "expect"):
            if HTTP1Grammar.equalsIgnoringCase(bytes, value, "100-continue") { scan.head.expectsContinue = true }
        case 4 where direction == .request && HTTP1Grammar.equalsIgnoringCase(bytes, name, "host"):
            // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to
            // any HTTP/1.1 request message that lacks a Host header field and to any request
            // message that contains more than one Host header field line or a Host header
            // field with an invalid field value."
            scan.hostCount += 1
            if scan.hostCount > 1 { return (.duplicateHost, name.lowerBound) }
            if !value.isEmpty && !Self.isValidAuthority(bytes, value, requirePort: false) {
                return (.invalidHost, value.lowerBound)
            }
            scan.head.host = value
        default:
            break
        }
        return nil
    }

    private mutating func finishHead(_ bytes: UnsafeRawBufferPointer, length: Int) -> HTTP1Event {
        var head = scan.head
        head.length = length
        let version = head.version
        let closeByVersion = version == .http10 ? !scan.connectionKeepAlive : false
        head.keepAlive = !scan.connectionClose && !closeByVersion
        let framing: HTTP1Framing
        if direction == .request {
            if version == .http11 && scan.hostCount == 0 { return fail(.missingHost, 0) }
            // RFC 9112 §3.2: "If the target URI includes an authority component, then a
            // client MUST send a field value for Host that is identical to that authority
            // component". §3.2.2 tells a proxy to replace a different Host with the target's
            // authority; a transparent proxy forwards the head as judged instead, so a
            // server that routes by Host could act on a host nobody judged. We reject the
            // disagreement, as HAProxy does (since 2.1), rather than guess which one counts.
            if head.targetForm == .absolute, let authority = head.authority, let host = head.host,
               !HTTP1Grammar.equalIgnoringCase(bytes, authority, host) {
                return fail(.hostDiffersFromTarget, host.lowerBound)
            }
            head.upgradeRequested = scan.sawUpgrade && scan.connectionUpgrade
            if head.isConnect {
                // RFC 9110 §9.3.6: "A CONNECT request message does not have content."
                if scan.sawTransferEncoding || (scan.contentLength ?? 0) > 0 {
                    return fail(.connectWithBody, 0)
                }
                framing = .none
            } else if scan.sawTransferEncoding {
                // RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message
                // containing a Transfer-Encoding header field MUST treat the message as if
                // the framing is faulty".
                if version == .http10 { return fail(.transferEncodingInHTTP10, 0) }
                // RFC 9112 §6.1: "A server MAY reject a request that contains both
                // Content-Length and Transfer-Encoding"; §6.3 item 3: such a message
                // "might indicate an attempt to perform request smuggling". We do.
                if scan.contentLength != nil { return fail(.contentLengthWithTransferEncoding, 0) }
                if scan.unknownCoding { return fail(.unsupportedTransferCoding, 0) }
                // RFC 9112 §6.3 item 4: "If a Transfer-Encoding header field is present in a
                // request and the chunked transfer coding is not the final encoding, ... the
                // server MUST respond with the 400 (Bad Request) status code and then close
                // the connection."
                guard scan.chunkedIsFinal else { return fail(.chunkedNotFinal, 0) }
                framing = .chunked
            } else if let contentLength = scan.contentLength {
                framing = contentLength == 0 ? .none : .contentLength(contentLength)
            } else {
                // RFC 9112 §6.3 item 7: "If this is a request message and none of the above
                // are true, then the message body length is zero".
                framing = .none
            }
        } else {
            guard let request = pendingRequests.first else { return fail(.unsolicitedResponse, 0) }
            let status = head.statusCode
            if status == 101 {
                guard request.upgradeRequested else { return fail(.unexpectedSwitchingProtocols, 0) }
                removeFrontRequest()
                head.switchesProtocol = true
                framing = .none
            } else if status < 200 {
                // 1xx: interim; the final response to the same request follows.
                head.isInformational = true
                framing = .none
            } else {
                removeFrontRequest()
                if scan.sawTransferEncoding && scan.contentLength != nil {
                    return fail(.contentLengthWithTransferEncoding, 0)
                }
                if scan.sawTransferEncoding && version == .http10 {
                    return fail(.transferEncodingInHTTP10, 0)
                }
                // RFC 9112 §6.3, items 1 to 8, in order.
                if request.isConnect && status < 300 {
                    head.switchesProtocol = true
                    framing = .none
                } else if request.isHead || status == 204 || status == 304 {
                    framing = .none
                } else if scan.sawTransferEncoding {
                    // Item 4: "If a Transfer-Encoding header field is present in a response
                    // and the chunked transfer coding is not the final encoding, the message
                    // body length is determined by reading the connection until it is closed".
                    framing = scan.chunkedIsFinal ? .chunked : .untilClose
                } else if let contentLength = scan.contentLength {
                    framing = contentLength == 0 ? .none : .contentLength(contentLength)
                } else {
                    framing = .untilClose
                }
            }
            if framing == .untilClose { head.keepAlive = false }
        }
        head.framing = framing
        completedHeadSwitchesProtocol = head.switchesProtocol
        // An interim response says nothing about the connection; the final one does.
        completedHeadClosesConnection = !head.keepAlive && !head.isInformational
        switch framing {
        case .none: state = .messageEnd
        case .contentLength(let length): state = .fixedBody(remaining: length)
        case .chunked: state = .chunkHeader
        case .untilClose: state = .untilClose
        }
        resetScan()
        return .head(head)
    }

    /// After `messageComplete`: the next message, or opaque bytes after a protocol switch.
    private mutating func finishMessage() {
        resetScan()
        state = completedHeadSwitchesProtocol ? .tunnel : completedHeadClosesConnection ? .closed : .head
        completedHeadSwitchesProtocol = false
        completedHeadClosesConnection = false
    }

    // MARK: - Start lines

    /// RFC 9112 §3: request-line = method SP request-target SP HTTP-version. Exactly one SP
    /// between parts: §3 lets a recipient split on other whitespace, which is a way to read
    /// one line two ways.
    private mutating func parseRequestLine(_ bytes: UnsafeRawBufferPointer,
                                           _ line: Range<Int>) -> (HTTP1ParseError.Kind, Int)? {
        var position = line.lowerBound
        while position < line.upperBound && HTTP1Grammar.isTokenByte(bytes[position]) { position += 1 }
        guard position < line.upperBound, position > line.lowerBound else {
            return (position == line.lowerBound ? .invalidMethod : .malformedRequestLine, position)
        }
        guard bytes[position] == HTTP1Grammar.space else {
            return (bytes[position] == HTTP1Grammar.carriageReturn ? .bareCarriageReturn : .invalidMethod, position)
        }
        let method = line.lowerBound..<position
        let targetStart = position + 1
        position = targetStart
        while position < line.upperBound && bytes[position] != HTTP1Grammar.space { position += 1 }
        guard position < line.upperBound, position > targetStart else {
            return (.malformedRequestLine, position)
        }
        let target = targetStart..<position
        let versionRange = (position + 1)..<line.upperBound
        switch Self.parseVersion(bytes, versionRange) {
        case .failure(let failure): return (failure.kind, failure.offset)
        case .success(let version): scan.head.version = version
        }
        scan.head.startLine = line
        scan.head.method = method
        scan.head.target = target
        scan.head.isConnect = HTTP1Grammar.equals(bytes, method, "CONNECT")
        scan.head.isHead = HTTP1Grammar.equals(bytes, method, "HEAD")
        guard let form = Self.targetForm(bytes, target, isConnect: scan.head.isConnect,
                                         isOptions: HTTP1Grammar.equals(bytes, method, "OPTIONS")) else {
            return (.invalidTarget, target.lowerBound)
        }
        scan.head.targetForm = form
        switch form {
        case .origin, .asterisk:
            scan.head.path = target
        case .authority:
            scan.head.authority = target
            scan.head.path = target.upperBound..<target.upperBound
        case .absolute:
            var authorityStart = target.lowerBound
            while bytes[authorityStart] != HTTP1Grammar.colon { authorityStart += 1 }
            authorityStart += 3
            var authorityEnd = authorityStart
            while authorityEnd < target.upperBound && bytes[authorityEnd] != UInt8(ascii: "/")
                    && bytes[authorityEnd] != UInt8(ascii: "?") {
                authorityEnd += 1
            }
            scan.head.authority = authorityStart..<authorityEnd
            scan.head.path = authorityEnd..<target.upperBound
        }
        return nil
    }

    /// RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT, case-sensitive.
    private static func parseVersion(_ bytes: UnsafeRawBufferPointer,
                                     _ range: Range<Int>) -> Result<HTTP1Version, LineFailure> {
        let start = range.lowerBound
        guard range.count == 8, HTTP1Grammar.equals(bytes, start..<(start + 5), "HTTP/"),
              HTTP1Grammar.isDigit(bytes[start + 5]), bytes[start + 6] == UInt8(ascii: "."),
              HTTP1Grammar.isDigit(bytes[start + 7]) else {
            return .failure(LineFailure(kind: .malformedRequestLine, offset: start))
        }
        let version = HTTP1Version(major: Int(bytes[start + 5] - UInt8(ascii: "0")),
                                   minor: Int(bytes[start + 7] - UInt8(ascii: "0")))
        guard version == .http11 || version == .http10 else {
            return .failure(LineFailure(kind: .unsupportedVersion, offset: start))
        }
        return .success(version)
    }

    /// RFC 9112 §3.2: which form the target has, or nil when it has none the method allows.
    private static func targetForm(_ bytes: UnsafeRawBufferPointer, _ target: Range<Int>,
                                   isConnect: Bool, isOptions: Bool) -> HTTP1TargetForm? {
        // §3.2.3: "The authority-form of request-target is only used for CONNECT requests".
        if isConnect {
            return isValidAuthority(bytes, target, requirePort: true) ? .authority : nil
        }
        // §3.2.4: "The asterisk-form of request-target is only used for a server-wide
        // OPTIONS request".
        if target.count == 1 && bytes[target.lowerBound] == UInt8(ascii: "*") {
            return isOptions ? .asterisk : nil
        }
        if bytes[target.lowerBound] == UInt8(ascii: "/") {
            return HTTP1Grammar.isValidPathAndQuery(bytes, target) ? .origin : nil
        }
        // §3.2.2 absolute-form: scheme ":" "//" authority path-abempty [ "?" query ].
        var position = target.lowerBound
        guard HTTP1Grammar.isAlpha(bytes[position]) else { return nil }
        while position < target.upperBound {
            let byte = bytes[position]
            guard HTTP1Grammar.isAlpha(byte) || HTTP1Grammar.isDigit(byte) || byte == UInt8(ascii: "+")
                    || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") else { break }
            position += 1
        }
        guard target.upperBound - position >= 4, bytes[position] == HTTP1Grammar.colon,
              bytes[position + 1] == UInt8(ascii: "/"), bytes[position + 2] == UInt8(ascii: "/") else {
            return nil
        }
        let authorityStart = position + 3
        var authorityEnd = authorityStart
        while authorityEnd < target.upperBound && bytes[authorityEnd] != UInt8(ascii: "/")
                && bytes[authorityEnd] != UInt8(ascii: "?") {
            authorityEnd += 1
        }
        guard authorityEnd > authorityStart,
              isValidAuthority(bytes, authorityStart..<authorityEnd, requirePort: false),
              HTTP1Grammar.isValidPathAndQuery(bytes, authorityEnd..<target.upperBound) else { return nil }
        return .absolute
    }

    /// RFC 3986 authority without userinfo (RFC 9110 §4.2.4 forbids it in http URIs):
    /// host [ ":" port ], host = IP-literal / IPv4address / reg-name.
    static func isValidAuthority(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>,
                                 requirePort: Bool) -> Bool {
        guard !range.isEmpty else { return false }
        var hostEnd = range.upperBound
        if bytes[range.lowerBound] == UInt8(ascii: "[") {
            // IP-literal: "[" IPv6address "]"; checked loosely for its alphabet.
            var position = range.lowerBound + 1
            while position < range.upperBound && bytes[position] != UInt8(ascii: "]") {
                let byte = bytes[position]
                guard HTTP1Grammar.hexValue(byte) != nil || byte == HTTP1Grammar.colon
                        || byte == UInt8(ascii: ".") else { return false }
                position += 1
            }
            guard position < range.upperBound, position > range.lowerBound + 1 else { return false }
            hostEnd = position + 1
        } else {
            var position = range.lowerBound
            while position < range.upperBound && bytes[position] != HTTP1Grammar.colon {
                let byte = bytes[position]
                guard HTTP1Grammar.isUnreserved(byte) || HTTP1Grammar.isSubDelimiter(byte) else { return false }
                position += 1
            }
            guard position > range.lowerBound else { return false }
            hostEnd = position
        }
        if hostEnd == range.upperBound { return !requirePort }
        guard bytes[hostEnd] == HTTP1Grammar.colon else { return false }
        let port = (hostEnd + 1)..<range.upperBound
        guard !port.isEmpty || !requirePort, port.count <= 5 else { return false }
        var value = 0
        for index in port {
            guard HTTP1Grammar.isDigit(bytes[index]) else { return false }
            value = value * 10 + Int(bytes[index] - UInt8(ascii: "0"))
        }
        return value <= 65535
    }

    /// RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]. A
    /// missing SP after the code is tolerated (common, and it cannot change framing).
    private mutating func parseStatusLine(_ bytes: UnsafeRawBufferPointer,
                                          _ line: Range<Int>) -> (HTTP1ParseError.Kind, Int)? {
        let start = line.lowerBound
        guard line.count >= 12 else { return (.malformedStatusLine, start) }
        switch Self.parseVersion(bytes, start..<(start + 8)) {
        case .failure(let failure):
            return (failure.kind == .unsupportedVersion ? .unsupportedVersion : .malformedStatusLine, start)
        case .success(let version):
            scan.head.version = version
        }
        guard bytes[start + 8] == HTTP1Grammar.space else { return (.malformedStatusLine, start + 8) }
        var code = 0
        for index in (start + 9)..<(start + 12) {
            guard HTTP1Grammar.isDigit(bytes[index]) else { return (.invalidStatusCode, index) }
            code = code * 10 + Int(bytes[index] - UInt8(ascii: "0"))
        }
        // RFC 9110 §15: "All valid status codes are within the range of 100 to 599, inclusive."
        guard (100...599).contains(code) else { return (.invalidStatusCode, start + 9) }
        var reasonStart = start + 12
        if reasonStart < line.upperBound {
            guard bytes[reasonStart] == HTTP1Grammar.space else { return (.invalidStatusCode, reasonStart) }
            reasonStart += 1
            for index in reasonStart..<line.upperBound where !HTTP1Grammar.isFieldValueByte(bytes[index]) {
                return (.malformedStatusLine, index)
            }
        }
        scan.head.startLine = line
        scan.head.statusCode = code
        scan.head.reason = reasonStart..<line.upperBound
        return nil
    }

    // MARK: - Chunked body

    /// RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF. No whitespace anywhere outside a quoted
    /// string: §7.1.1 allows BWS around ";" and "=", but parsers disagree about it and it
    /// buys nothing, so we refuse it.
    private mutating func parseChunkHeader(_ bytes: UnsafeRawBufferPointer) -> HTTP1Event {
        let count = bytes.count
        var position = searchFrom
        let searchStart = position
        while position < count && bytes[position] != HTTP1Grammar.lineFeed { position += 1 }
        #if DEBUG
        bytesExamined += min(position + 1, count) - searchStart
        #endif
        if position == count {
            searchFrom = count
            if count - 1 > limits.maximumChunkLineBytes { return fail(.chunkLineTooLong, 0) }
            // An early answer for garbage instead of waiting for a line that never ends.
            if count > 0 && HTTP1Grammar.hexValue(bytes[0]) == nil { return fail(.invalidChunkSize, 0) }
            return .needMore(minimumBytes: 1)
        }
        let lineFeed = position
        // The same checks, in the same order, as on a partial line above.
        if lineFeed - 1 > limits.maximumChunkLineBytes { return fail(.chunkLineTooLong, 0) }
        if lineFeed > 0 && HTTP1Grammar.hexValue(bytes[0]) == nil { return fail(.invalidChunkSize, 0) }
        guard lineFeed > 0, bytes[lineFeed - 1] == HTTP1Grammar.carriageReturn else {
            return fail(.bareLineFeed, lineFeed)
        }
        let contentEnd = lineFeed - 1
        var size = 0
        var digits = 0
        position = 0
        while position < contentEnd, let digit = HTTP1Grammar.hexValue(bytes[position]) {
            digits += 1
            if digits > limits.maximumChunkSizeDigits { return fail(.chunkSizeTooLong, position) }
            // §7.1: "recipients MUST anticipate potentially large hexadecimal numerals and
            // prevent parsing errors due to integer conversion overflows".
            guard size <= (Int.max - digit) >> 4 else { return fail(.chunkSizeTooLong, position) }
            size = size << 4 | digit
            position += 1
        }
        guard digits > 0 else { return fail(.invalidChunkSize, 0) }
        if let offset = Self.invalidChunkExtensionOffset(bytes, position..<contentEnd) {
            return fail(position == offset && bytes[offset] != UInt8(ascii: ";") ? .invalidChunkSize : .invalidChunkExtension, offset)
        }
        let lineLength = lineFeed + 1
        if size == 0 {
            // last-chunk: the trailer section and its final CRLF follow.
            state = .trailers
            resetScan()
            scan.lineStart = lineLength
            searchFrom = lineLength
            scan.fieldsStart = lineLength
            return parseTrailers(bytes)
        }
        state = .chunkData(remaining: size)
        searchFrom = 0
        return .chunkFraming(lineLength)
    }

    /// chunk-ext = *( ";" chunk-ext-name [ "=" chunk-ext-val ] ), names tokens, values
    /// tokens or quoted strings. Returns the offset of the first byte that breaks it.
    private static func invalidChunkExtensionOffset(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        var position = range.lowerBound
        while position < range.upperBound {
            guard bytes[position] == UInt8(ascii: ";") else { return position }
            position += 1
            let nameStart = position
            while position < range.upperBound && HTTP1Grammar.isTokenByte(bytes[position]) { position += 1 }
            guard position > nameStart else { return position }
            guard position < range.upperBound, bytes[position] == UInt8(ascii: "=") else { continue }
            position += 1
            guard position < range.upperBound else { return position }
            if bytes[position] == UInt8(ascii: "\"") {
                position += 1
                var closed = false
                while position < range.upperBound {
                    let byte = bytes[position]
                    if byte == UInt8(ascii: "\"") { closed = true; position += 1; break }
                    if byte == UInt8(ascii: "\\") {
                        guard position + 1 < range.upperBound,
                              HTTP1Grammar.isFieldValueByte(bytes[position + 1]) else { return position }
                        position += 2
                        continue
                    }
                    guard HTTP1Grammar.isQuotedTextByte(byte) else { return position }
                    position += 1
                }
                guard closed else { return position }
            } else {
                let valueStart = position
                while position < range.upperBound && HTTP1Grammar.isTokenByte(bytes[position]) { position += 1 }
                guard position > valueStart else { return position }
            }
        }
        return nil
    }

    /// RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ), then the final CRLF. The
    /// last-chunk line before it is part of what `messageComplete` consumes.
    private mutating func parseTrailers(_ bytes: UnsafeRawBufferPointer) -> HTTP1Event {
        let count = bytes.count
        var position = searchFrom
        while true {
            guard let lineFeed = nextLineFeed(in: bytes, from: position) else {
                searchFrom = count
                if count - scan.fieldsStart > limits.maximumTrailerBytes {
                    return fail(.trailerSectionTooLarge, scan.fieldsStart)
                }
                return .needMore(minimumBytes: scan.lineStart == count ? 2 : 1)
            }
            let lineStart = scan.lineStart
            let next = lineFeed + 1
            if next - scan.fieldsStart > limits.maximumTrailerBytes {
                return fail(.trailerSectionTooLarge, scan.fieldsStart)
            }
            guard lineFeed > lineStart, bytes[lineFeed - 1] == HTTP1Grammar.carriageReturn else {
                return fail(.bareLineFeed, lineFeed)
            }
            let contentEnd = lineFeed - 1
            if contentEnd == lineStart {
                let trailers = scan.head.fields
                finishMessage()
                return .messageComplete(consumed: next, trailers: trailers)
            }
            if scan.head.fields.count >= limits.maximumHeaderCount {
                return fail(.tooManyTrailerFields, lineStart)
            }
            switch Self.parseFieldLine(bytes, lineStart..<contentEnd, lineEnd: next) {
            case .failure(let failure): return fail(failure.kind, failure.offset)
            case .success(let field): scan.append(field)
            }
            scan.lineStart = next
            position = next
        }
    }
}
