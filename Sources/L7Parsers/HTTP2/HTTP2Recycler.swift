#if canImport(Glibc)
import Glibc
#endif

/// Header-block storage and body buffers of finished streams, kept per thread for the next
/// streams.
///
/// Why: a proxied request received two header blocks (its head, its response head) and one
/// body chunk, and each was a malloc'd object freed once its frame had left for the other
/// side: three of the request's four allocations outside nghttp2, each paying `malloc`,
/// `free` and the Swift runtime's deallocation. The endpoint that receives a block is not
/// the one that sends it on (a head received by the server endpoint leaves through the
/// client endpoint), so the spares are kept where both endpoints of a connection reach
/// them: on their thread, as `HTTP2Memory` keeps nghttp2's own blocks.
///
/// Ownership: an endpoint takes its thread's recycler when it is made. Only the owning
/// thread touches it: called on any other thread (an endpoint used after its task moved),
/// `takeBlock` makes new storage and `give` lets go, as if there were no recycler. When its
/// thread ends, a recycler lets go of what it kept and is left ownerless.
///
/// Bounds: at most `maximumBlocks` storages of the standard size (a block that grew past it
/// is not kept) and `maximumBuffers` buffers of at most `maximumBufferCapacity` bytes, about
/// 150 KiB a thread.
public final class HTTP2Recycler: @unchecked Sendable {
    static let maximumBlocks = 32
    static let maximumBuffers = 32
    static let maximumBufferCapacity = 4_096

    /// The thread whose spares these are (0 once it ended).
    private var owner: pthread_t
    /// Kept storages and buffers, `blockCount` and `bufferCount` of them, moved in and out
    /// of fixed slots (no array to grow, no reference counted on the way).
    private let blocks = UnsafeMutablePointer<HTTP2HeaderBlock.Storage>.allocate(capacity: maximumBlocks)
    private var blockCount = 0
    private let buffers = UnsafeMutablePointer<[UInt8]>.allocate(capacity: maximumBuffers)
    private var bufferCount = 0

    init(owner: pthread_t) {
        self.owner = owner
    }

    deinit {
        letGo()
        blocks.deallocate()
        buffers.deallocate()
    }

    private func letGo() {
        blocks.deinitialize(count: blockCount)
        blockCount = 0
        buffers.deinitialize(count: bufferCount)
        bufferCount = 0
    }

    @inline(__always) private var isOwnedHere: Bool { owner == pthread_self() }

    /// Spares kept (for tests and diagnostics).
    public var keptBlocks: Int { blockCount }
    public var keptBuffers: Int { bufferCount }

    /// An empty block with room for a typical head: kept storage when there is some.
    public func takeBlock() -> HTTP2HeaderBlock {
        guard blockCount > 0, isOwnedHere else { return HTTP2HeaderBlock(standardCapacity: ()) }
        blockCount &-= 1
        return HTTP2HeaderBlock(emptied: (blocks + blockCount).move())
    }

    /// Keeps the block's storage for a later `takeBlock` when nothing else refers to it and
    /// it is of the standard size; lets it go otherwise.
    public func give(_ block: consuming HTTP2HeaderBlock) {
        guard blockCount < Self.maximumBlocks, isOwnedHere, let storage = block.takeStandardStorage() else { return }
        (blocks + blockCount).initialize(to: consume storage)
        blockCount &+= 1
    }

    /// An empty buffer (kept capacity when there is some).
    public func takeBuffer() -> [UInt8] {
        guard bufferCount > 0, isOwnedHere else { return [] }
        bufferCount &-= 1
        return (buffers + bufferCount).move()
    }

    /// Keeps `buffer`'s memory (emptied) for a later `takeBuffer` when it holds some, of at
    /// most `maximumBufferCapacity` bytes; `buffer` is left empty either way. The caller's
    /// is the only reference (a shared buffer would be emptied into a new one).
    public func give(_ buffer: inout [UInt8]) {
        let capacity = buffer.capacity
        guard capacity > 0, capacity <= Self.maximumBufferCapacity, bufferCount < Self.maximumBuffers,
              isOwnedHere else { return buffer = [] }
        if !buffer.isEmpty { buffer.removeAll(keepingCapacity: true) }
        (buffers + bufferCount).initialize(to: [])
        swap(&buffers[bufferCount], &buffer)
        bufferCount &+= 1
    }

    // MARK: The calling thread's recycler

    /// The calling thread's recycler, made on first use.
    public static func forThisThread() -> HTTP2Recycler {
        if let stored = pthread_getspecific(threadKey) {
            return Unmanaged<HTTP2Recycler>.fromOpaque(stored).takeUnretainedValue()
        }
        let recycler = HTTP2Recycler(owner: pthread_self())
        pthread_setspecific(threadKey, Unmanaged.passRetained(recycler).toOpaque())
        return recycler
    }

    private static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        let created = pthread_key_create(&key) { stored in
            // The thread ended: its spares go, and endpoints made here that still hold the
            // recycler find it ownerless (they allocate and free as without one).
            guard let stored else { return }
            let recycler = Unmanaged<HTTP2Recycler>.fromOpaque(stored).takeRetainedValue()
            recycler.owner = pthread_t(bitPattern: 0)
            recycler.letGo()
        }
        precondition(created == 0, "pthread_key_create failed: \(created)")
        return key
    }()
}
