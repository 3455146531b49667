#if canImport(Glibc)
import Glibc
#endif

/// Monotonic time in nanoseconds; the event loop samples it once per iteration.
public enum MonotonicClock {
    public static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// Wall-clock time for flow records, as RFC 3339 text with nanoseconds.
public enum WallClock {
    /// Nanoseconds since the Unix epoch.
    public static func nanosecondsNow() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    public static func rfc3339Now() -> String { rfc3339(nanosecondsNow()) }

    /// `2026-12-01T16:23:17.123456789Z` for a time in nanoseconds since the epoch: digits
    /// written straight into the string (a record each request carries one).
    public static func rfc3339(_ nanoseconds: UInt64) -> String {
        var seconds = time_t(nanoseconds / 1_000_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(unsafeUninitializedCapacity: 30) { text in
            var at = 0
            func digits(_ value: Int, _ width: Int) {
                var value = value
                for index in stride(from: at + width - 1, through: at, by: -1) {
                    text[index] = UInt8(ascii: "0") &+ UInt8(value % 10)
                    value /= 10
                }
                at += width
            }
            func mark(_ character: Unicode.Scalar) {
                text[at] = UInt8(ascii: character)
                at += 1
            }
            digits(Int(parts.tm_year) + 1900, 4); mark("-")
            digits(Int(parts.tm_mon) + 1, 2); mark("-")
            digits(Int(parts.tm_mday), 2); mark("T")
            digits(Int(parts.tm_hour), 2); mark(":")
            digits(Int(parts.tm_min), 2); mark(":")
            digits(Int(parts.tm_sec), 2); mark(".")
            digits(Int(nanoseconds % 1_000_000_000), 9); mark("Z")
            return at
        }
    }
}

/// The clocks a session reads: the monotonic one for latencies and timeouts, the wall one
/// for its records' times. Live traffic reads the system's; a replay reads the capture's, so
/// that records carry when the recorded packet was seen and latencies are the recorded ones.
public struct SessionClock: Sendable {
    public var monotonic: @Sendable () -> UInt64
    public var wall: @Sendable () -> UInt64

    public init(monotonic: @escaping @Sendable () -> UInt64, wall: @escaping @Sendable () -> UInt64) {
        self.monotonic = monotonic
        self.wall = wall
    }

    public static let system = SessionClock(monotonic: MonotonicClock.now, wall: WallClock.nanosecondsNow)
}

/// The process's open-files limit (`RLIMIT_NOFILE`).
public enum DescriptorLimit {
    /// The soft limit now in force.
    public static var current: Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        return Int(clamping: min(limit.rlim_cur, rlim_t(Int32.max)))
    }

    /// Raises the soft limit to the hard limit (as nginx's worker_rlimit_nofile and Go's
    /// runtime do); returns the limit now in force.
    @discardableResult
    public static func raiseToMaximum() -> Int {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return current
    }
}
