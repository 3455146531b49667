#if canImport(Glibc)
import Glibc
#endif
import CNghttp2

/// The memory of nghttp2's sessions (`nghttp2_mem`), served from small free lists kept per
/// thread by size class.
///
/// Why: a proxied request makes about a dozen small allocations inside nghttp2 that live for
/// one stream (its stream, queued frames, copied field lists, decoded names and values),
/// freed in bursts as a batch of streams ends. glibc's per-thread cache holds 7 blocks of a
/// size, so those bursts went to its slower paths: malloc and free were a tenth of a
/// request's instructions. A list here is a pointer push or pop.
///
/// Ownership: an endpoint takes its thread's lists when it is made and hands them to nghttp2
/// as `mem_user_data`, so no thread-local lookup is made per allocation. Only the owning
/// thread touches a pool's lists: called on any other thread (an endpoint used after its
/// task moved), a pool falls back to plain `malloc` and `free`, which every block allows.
/// When its thread ends, a pool frees what it kept and is left ownerless (never freed: an
/// endpoint may still point at it; it is 128 bytes a thread).
///
/// Bounds: a pool keeps at most `bytesPerClass` of freed blocks in each of the `classCount`
/// classes (block sizes 64 to 512 B, 16 bytes of each a header), 128 KiB a thread; past that
/// a freed block goes back to `free`. Larger requests go straight to `malloc`: what a session
/// holds for its life (the session itself, its HPACK tables and buffers) is not rounded up to
/// a class, so an idle connection costs what it did with `malloc`.
public enum HTTP2Memory {
    /// Size classes: 64 << class bytes a block, header included (what a stream's allocations
    /// need: its stream, queued frames, field lists, decoded names and values).
    static let classCount = 4
    /// Freed bytes kept per class and thread.
    static let bytesPerClass = 32_768
    /// Before each block: its class (or `unpooled`), keeping the payload 16-byte aligned.
    static let headerBytes = 16
    static let unpooled = -1

    /// Bytes usable in a block of `sizeClass`.
    @inline(__always) static func payloadBytes(of sizeClass: Int) -> Int { (64 &<< sizeClass) &- headerBytes }

    /// The class holding `bytes` of payload, or nil when none is large enough.
    @inline(__always) static func sizeClass(for bytes: Int) -> Int? {
        guard bytes >= 0, bytes <= (64 &<< (classCount - 1)) &- headerBytes else { return nil }
        let needed = bytes &+ headerBytes
        if needed <= 64 { return 0 }
        // ceil(log2(needed)) - 6
        return (Int.bitWidth &- (needed &- 1).leadingZeroBitCount) &- 6
    }

    /// One thread's free lists, in one malloc'd block: `heads[c]` is the first freed block of
    /// class `c` (each freed block's payload starts with the next one), `counts[c]` how many
    /// there are, `owner` the thread (0 once it ended).
    public struct Pool: @unchecked Sendable {
        let words: UnsafeMutablePointer<Int>

        @inline(__always) var owner: pthread_t {
            get { pthread_t(bitPattern: words[0]) }
            nonmutating set { words[0] = Int(bitPattern: newValue) }
        }
        @inline(__always) func head(_ sizeClass: Int) -> UnsafeMutableRawPointer? {
            UnsafeMutableRawPointer(bitPattern: words[1 &+ sizeClass])
        }
        @inline(__always) func setHead(_ sizeClass: Int, _ block: UnsafeMutableRawPointer?) {
            words[1 &+ sizeClass] = Int(bitPattern: block)
        }
        @inline(__always) func count(_ sizeClass: Int) -> Int { words[1 &+ HTTP2Memory.classCount &+ sizeClass] }
        @inline(__always) func addToCount(_ sizeClass: Int, _ delta: Int) {
            words[1 &+ HTTP2Memory.classCount &+ sizeClass] &+= delta
        }
        /// True on the thread whose lists these are.
        @inline(__always) var isOwnedHere: Bool { owner == pthread_self() }

        /// Payload of `bytes`, or nil when the system has no memory.
        public func allocate(_ bytes: Int) -> UnsafeMutableRawPointer? {
            guard let sizeClass = HTTP2Memory.sizeClass(for: bytes) else { return HTTP2Memory.allocateUnpooled(bytes) }
            let block: UnsafeMutableRawPointer
            if isOwnedHere, let first = head(sizeClass) {
                setHead(sizeClass, (first + HTTP2Memory.headerBytes).load(as: UnsafeMutableRawPointer?.self))
                addToCount(sizeClass, -1)
                block = first
            } else {
                guard let fresh = malloc(64 &<< sizeClass) else { return nil }
                block = fresh
            }
            block.storeBytes(of: sizeClass, as: Int.self)
            return block + HTTP2Memory.headerBytes
        }

        /// Gives back a payload from `allocate` (nil is ignored).
        public func release(_ payload: UnsafeMutableRawPointer?) {
            guard let payload else { return }
            let block = payload - HTTP2Memory.headerBytes
            let sizeClass = block.load(as: Int.self)
            guard sizeClass != HTTP2Memory.unpooled, isOwnedHere,
                  count(sizeClass) < HTTP2Memory.bytesPerClass &>> (6 &+ sizeClass) else { return free(block) }
            payload.storeBytes(of: head(sizeClass), as: UnsafeMutableRawPointer?.self)
            setHead(sizeClass, block)
            addToCount(sizeClass, 1)
        }

        /// `realloc`'s contract over `allocate` and `release`: the first `min(old, new)` bytes
        /// kept; a payload that still fits its block is returned as it is.
        public func reallocate(_ payload: UnsafeMutableRawPointer?, to bytes: Int) -> UnsafeMutableRawPointer? {
            guard let payload else { return allocate(bytes) }
            let sizeClass = (payload - HTTP2Memory.headerBytes).load(as: Int.self)
            if sizeClass == HTTP2Memory.unpooled {
                guard bytes >= 0, bytes <= Int.max - HTTP2Memory.headerBytes,
                      let grown = realloc(payload - HTTP2Memory.headerBytes, bytes + HTTP2Memory.headerBytes)
                else { return nil }
                return grown + HTTP2Memory.headerBytes
            }
            if bytes >= 0 && bytes <= HTTP2Memory.payloadBytes(of: sizeClass) { return payload }
            guard let moved = allocate(bytes) else { return nil }
            memcpy(moved, payload, min(bytes, HTTP2Memory.payloadBytes(of: sizeClass)))
            release(payload)
            return moved
        }

        /// Freed blocks kept, by class (for tests and diagnostics).
        public var keptBlocks: [Int] { (0..<HTTP2Memory.classCount).map { count($0) } }
    }

    static func allocateUnpooled(_ bytes: Int) -> UnsafeMutableRawPointer? {
        guard bytes >= 0, bytes <= Int.max - headerBytes, let block = malloc(bytes + headerBytes) else { return nil }
        block.storeBytes(of: unpooled, as: Int.self)
        return block + headerBytes
    }

    /// The allocator handed to nghttp2 (`nghttp2_session_*_new3`, which copies it) for `pool`.
    static func nghttp2Allocator(_ pool: Pool) -> nghttp2_mem {
        nghttp2_mem(
            mem_user_data: UnsafeMutableRawPointer(pool.words),
            malloc: { bytes, pool in HTTP2Memory.pool(pool).allocate(bytes) },
            free: { payload, pool in HTTP2Memory.pool(pool).release(payload) },
            calloc: { count, size, pool in
                let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
                guard !overflow, let payload = HTTP2Memory.pool(pool).allocate(bytes) else { return nil }
                memset(payload, 0, bytes)
                return payload
            },
            realloc: { payload, bytes, pool in HTTP2Memory.pool(pool).reallocate(payload, to: bytes) })
    }

    @inline(__always) private static func pool(_ userData: UnsafeMutableRawPointer?) -> Pool {
        Pool(words: userData.unsafelyUnwrapped.assumingMemoryBound(to: Int.self))
    }

    // MARK: The calling thread's pool

    /// The calling thread's pool, made on first use.
    public static func threadPool() -> Pool {
        if let stored = pthread_getspecific(threadKey) {
            return Pool(words: stored.assumingMemoryBound(to: Int.self))
        }
        guard let raw = calloc(1 + 2 * classCount, MemoryLayout<Int>.stride) else {
            fatalError("HTTP2Memory: out of memory for a thread's free lists")
        }
        let pool = Pool(words: raw.assumingMemoryBound(to: Int.self))
        pool.owner = pthread_self()
        pthread_setspecific(threadKey, raw)
        return pool
    }

    private static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        let created = pthread_key_create(&key) { stored in
            // The thread ended: its kept blocks are freed and the pool is left ownerless
            // (endpoints made here may still hold it: they fall back to malloc and free).
            guard let stored else { return }
            let pool = Pool(words: stored.assumingMemoryBound(to: Int.self))
            pool.owner = pthread_t(bitPattern: 0)
            for sizeClass in 0..<HTTP2Memory.classCount {
                var block = pool.head(sizeClass)
                while let current = block {
                    block = (current + HTTP2Memory.headerBytes).load(as: UnsafeMutableRawPointer?.self)
                    free(current)
                }
                pool.setHead(sizeClass, nil)
                pool.addToCount(sizeClass, -pool.count(sizeClass))
            }
        }
        precondition(created == 0, "pthread_key_create failed: \(created)")
        return key
    }()
}
