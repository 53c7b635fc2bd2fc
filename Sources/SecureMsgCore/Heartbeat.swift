/// The heartbeat rule of docs/PROTOCOL.md §8.4 as a clock-free policy: the driver reports when bytes
/// arrive and asks, at `nextCheck`, what to do. A side that has received nothing for `interval` sends a
/// PING (`Session.sendPing`); one that has received nothing for `timeout` fails the session
/// (`Session.heartbeatTimedOut`). Times are nanoseconds on any monotonic clock the driver uses.
public struct Heartbeat: Sendable {
    public struct Configuration: Sendable, Equatable {
        public var intervalNanoseconds: UInt64
        public var timeoutNanoseconds: UInt64

        /// Defaults: PING after 15 s of silence, give up after 45 s.
        public init(intervalNanoseconds: UInt64 = 15_000_000_000, timeoutNanoseconds: UInt64 = 45_000_000_000) {
            precondition(intervalNanoseconds > 0 && timeoutNanoseconds > intervalNanoseconds, "timeout must exceed the interval")
            self.intervalNanoseconds = intervalNanoseconds
            self.timeoutNanoseconds = timeoutNanoseconds
        }
    }

    public enum Action: Sendable, Equatable { case none, sendPing, timedOut }

    public let configuration: Configuration
    private var lastReceived: UInt64
    private var lastPing: UInt64?

    public init(_ configuration: Configuration = Configuration(), now: UInt64) {
        self.configuration = configuration
        lastReceived = now
    }

    /// Bytes arrived from the peer (any bytes: frames are authenticated when the session reads them).
    public mutating func received(now: UInt64) {
        lastReceived = now
        lastPing = nil
    }

    /// What to do now; `.sendPing` at most once per interval of silence.
    public mutating func check(now: UInt64) -> Action {
        let silent = now &- lastReceived
        if silent >= configuration.timeoutNanoseconds { return .timedOut }
        if silent >= configuration.intervalNanoseconds, lastPing.map({ now &- $0 >= configuration.intervalNanoseconds }) ?? true {
            lastPing = now
            return .sendPing
        }
        return .none
    }

    /// When `check` may next return something other than `.none`.
    public var nextCheck: UInt64 {
        let timeout = lastReceived + configuration.timeoutNanoseconds
        let ping = (lastPing ?? lastReceived) + configuration.intervalNanoseconds
        return min(timeout, ping)
    }
}
