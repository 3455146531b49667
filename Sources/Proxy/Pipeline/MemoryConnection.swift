import L7Parsers

/// A connection whose client and server are byte arrays: the real `StreamDriver` runs the
/// session exactly as `RelayConnection` does, fed from memory instead of sockets. Tests drive
/// sessions this way, and so does judging recorded traffic.
///
/// Bytes handed in wait in `waitingFromClient`/`waitingFromServer` until the driver has room
/// for them (backpressure holds them there, as a full socket would); what the driver lets
/// through collects in `deliveredToServer`/`deliveredToClient`.
public struct MemoryConnection {
    public private(set) var driver: StreamDriver
    public let pool: BufferPool
    public private(set) var deliveredToServer: [UInt8] = []
    public private(set) var deliveredToClient: [UInt8] = []
    /// Bytes sent by each side that the driver has not taken yet.
    public var waitingFromClient: [UInt8] {
        get { Array(fromClient[clientTaken...]) }
        set { (fromClient, clientTaken) = (newValue, 0) }
    }
    public var waitingFromServer: [UInt8] {
        get { Array(fromServer[serverTaken...]) }
        set { (fromServer, serverTaken) = (newValue, 0) }
    }
    /// What each side sent, and how much of it the driver took (an offset, so that feeding a
    /// large message block by block costs no shifting of the rest).
    private var fromClient: [UInt8] = []
    private var clientTaken = 0
    private var fromServer: [UInt8] = []
    private var serverTaken = 0
    private var clientEnded = false
    private var serverEnded = false
    /// Whether the client takes what is sent to it (false: a client that stopped reading, so
    /// its output fills up and holds the driver back).
    public var clientReads = true
    /// Whether what the driver lets through is kept in `deliveredToServer`/`deliveredToClient`
    /// (false: counted as sent and let go, for judging recordings of any length).
    public var keepsDelivered = true
    /// Why the driver ended the connection with resets, if it did.
    public private(set) var failure: String?

    /// `blockSize` is the size of the driver's buffer blocks (the proxy's `limits.bufferBytes`).
    public init(session: L7Session, blockSize: Int = 65536) {
        driver = StreamDriver(session: session)
        pool = BufferPool(blockSize: blockSize, maxCached: 8)
    }

    public var session: L7Session { driver.session }

    /// Why the connection ends (the session's close or the driver's failure); nil while open.
    public var closedReason: String? { failure ?? driver.closing?.reason }

    public mutating func clientSends<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        fromClient.append(contentsOf: bytes)
        pump()
    }

    public mutating func serverSends<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        fromServer.append(contentsOf: bytes)
        pump()
    }

    /// The client closed its side (FIN) after what it sent.
    public mutating func clientCloses() {
        clientEnded = true
        pump()
    }

    /// The server closed its side (FIN) after what it sent.
    public mutating func serverCloses() {
        serverEnded = true
        pump()
    }

    /// The proxy drains, as `RelayConnection.beginDrain` tells a session: true when the session
    /// took it over (what it then has for the client is pumped out; it closes once done).
    @discardableResult
    public mutating func beginDrain() -> Bool {
        guard driver.session.beginDrain() else { return false }
        driver.sessionChanged()
        pump()
        return true
    }

    /// Gives back the driver's buffers (what it still holds of either direction) once the
    /// connection is done with: a connection the session closed, or one that ended with
    /// bytes unread, still holds some, and the pool frees only the blocks given back.
    public mutating func release() {
        driver.release(pool: pool)
    }

    /// Moves bytes in, runs the driver and collects its output until nothing moves.
    public mutating func pump() {
        while failure == nil {
            var moved = false
            if driver.closing == nil { moved = feed(.request) || moved }
            moved = feed(.response) || moved
            switch driver.run(pool: pool) {
            case .failed(let reason):
                failure = reason
                driver.release(pool: pool)
                return
            case .moreWork: moved = true
            case .idle: break
            }
            moved = collect(.request) || moved
            if clientReads { moved = collect(.response) || moved }
            if !moved { return }
        }
    }

    private mutating func feed(_ side: TrafficDirection) -> Bool {
        let (source, taken) = side == .request ? (fromClient, clientTaken) : (fromServer, serverTaken)
        guard taken < source.count else {
            let ended = side == .request ? clientEnded : serverEnded
            guard ended, !driver.sourceEnded(side) else { return false }
            driver.inputEnded(side)
            return true
        }
        guard !driver.sourceEnded(side) else { return false }
        let space = driver.inputSpace(side, pool: pool)
        let count = min(space.count, source.count - taken)
        guard count > 0 else {
            driver.releaseInputIfEmpty(side, pool: pool)
            return false
        }
        source.withUnsafeBytes { space.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[taken..<(taken + count)])) }
        driver.received(side, count: count)
        if side == .request { clientTaken += count } else { serverTaken += count }
        // All taken: let the storage go.
        if side == .request, clientTaken == fromClient.count { (fromClient, clientTaken) = ([], 0) }
        if side == .response, serverTaken == fromServer.count { (fromServer, serverTaken) = ([], 0) }
        return true
    }

    private mutating func collect(_ side: TrafficDirection) -> Bool {
        let output = driver.output(side)
        guard !output.isEmpty else { return false }
        if keepsDelivered {
            if side == .request { deliveredToServer.append(contentsOf: output) } else { deliveredToClient.append(contentsOf: output) }
        }
        driver.sent(side, count: output.count, pool: pool)
        return true
    }
}
