import Foundation

/// Reconnect delays for `--retry`: capped exponential backoff with jitter ("equal jitter": half the
/// step fixed, half random), so a fleet of clients cut off together does not come back in lockstep,
/// while none waits much longer than the cap after its server is back.
public struct Backoff: Sendable {
    public var initialSeconds: Double
    public var capSeconds: Double
    private var attempt = 0
    private let random: @Sendable () -> Double

    /// Defaults: 0.1 s, doubling, at most 1 s (README "send --retry": a restarted server sees its clients
    /// again within about a second of listening).
    public init(initialSeconds: Double = 0.1, capSeconds: Double = 1, random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }) {
        self.initialSeconds = initialSeconds
        self.capSeconds = max(capSeconds, initialSeconds)
        self.random = random
    }

    /// Failed attempts since the last `reset()`.
    public var attempts: Int { attempt }

    /// The delay before the next attempt: in [step/2, step), step = min(cap, initial · 2^attempt).
    public mutating func nextDelay() -> Double {
        let step = min(capSeconds, initialSeconds * pow(2, Double(min(attempt, 30))))
        attempt += 1
        return step / 2 + random() * step / 2
    }

    /// A connection got through: start again from the initial delay.
    public mutating func reset() { attempt = 0 }
}

/// One stderr line per retry, at most one every `interval` seconds (the first always): a server down
/// for an hour costs a handful of lines, not thousands. Lines suppressed meanwhile are counted in the next.
public struct RetryReporter: Sendable {
    public let interval: Double
    private var lastPrinted: Double = -.infinity
    private var suppressed = 0

    public init(interval: Double = 10) { self.interval = interval }

    /// The line to print now, or nil to stay quiet.
    public mutating func line(_ text: String) -> String? { line(text, now: monotonicSeconds()) }

    public mutating func line(_ text: String, now: Double) -> String? {
        guard now - lastPrinted >= interval else {
            suppressed += 1
            return nil
        }
        lastPrinted = now
        defer { suppressed = 0 }
        return suppressed == 0 ? text : "\(text) (\(suppressed) more attempt\(suppressed == 1 ? "" : "s") since the last line)"
    }

    /// After a success, the next problem is reported at once.
    public mutating func reset() {
        lastPrinted = -.infinity
        suppressed = 0
    }
}
