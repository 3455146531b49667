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

    /// `2026-12-01T16:23:17.123456789Z` for a time in nanoseconds since the epoch: the
    /// civil date computed in place (H. Hinnant's `civil_from_days`, proleptic Gregorian, as
    /// `gmtime` does for these years) and the digits written straight into the string, in one
    /// allocation; every record carries one.
    public static func rfc3339(_ nanoseconds: UInt64) -> String {
        let seconds = nanoseconds / 1_000_000_000
        let fraction = nanoseconds % 1_000_000_000
        let days = Int64(seconds / 86_400)
        let secondOfDay = Int(seconds % 86_400)
        // civil_from_days: days since 1970-01-01 to year, month, day.
        let shifted = days + 719_468
        let era = shifted / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = Int(dayOfYear - (153 * monthIndex + 2) / 5 + 1)
        let month = Int(monthIndex < 10 ? monthIndex + 3 : monthIndex - 9)
        let year = Int(yearOfEra + era * 400 + (month <= 2 ? 1 : 0))
        return String(unsafeUninitializedCapacity: 30) { text in
            @inline(__always) func put(_ value: Int, width: Int, at end: Int) {
                var value = value, index = end
                while index > end - width {
                    index -= 1
                    text[index] = UInt8(truncatingIfNeeded: 48 + value % 10)
                    value /= 10
                }
            }
            put(year, width: 4, at: 4); text[4] = UInt8(ascii: "-")
            put(month, width: 2, at: 7); text[7] = UInt8(ascii: "-")
            put(day, width: 2, at: 10); text[10] = UInt8(ascii: "T")
            put(secondOfDay / 3_600, width: 2, at: 13); text[13] = UInt8(ascii: ":")
            put(secondOfDay / 60 % 60, width: 2, at: 16); text[16] = UInt8(ascii: ":")
            put(secondOfDay % 60, width: 2, at: 19); text[19] = UInt8(ascii: ".")
            put(Int(fraction), width: 9, at: 29); text[29] = UInt8(ascii: "Z")
            return 30
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
