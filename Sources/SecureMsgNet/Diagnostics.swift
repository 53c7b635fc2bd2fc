import Foundation
import NIOConcurrencyHelpers

/// serve's stderr: a bounded queue written by its own thread, so that no event loop and no log write
/// ever waits on a stderr nobody reads (a pipe whose reader stalled). When the queue is full, lines are
/// dropped and counted; the count is reported as soon as stderr accepts writes again, and at exit.
public final class DiagnosticQueue: @unchecked Sendable {
    /// Bytes of diagnostics held at most (default: 256 KiB, a few thousand lines).
    public let capacity: Int
    private let fd: Int32
    private let condition = NSCondition()
    private var pending: [UInt8] = []
    private var dropped = 0
    private var stopping = false
    private var finished = false
    private var writing = false

    public init(fd: Int32 = STDERR_FILENO, capacity: Int = 256 << 10) {
        self.fd = fd
        self.capacity = capacity
        // The thread keeps this object alive: it may be blocked in write(2) on a reader that never comes back.
        let thread = Thread { self.run() }
        thread.name = "securemsg-stderr"
        thread.start()
    }

    /// Queues one line (a newline is added, the text made one line by `StandardError.oneLine`); never
    /// blocks on stderr.
    public func line(_ text: String) {
        let text = StandardError.oneLine(text)
        condition.lock()
        defer { condition.unlock() }
        let utf8 = text.utf8
        guard pending.count + utf8.count + 1 <= capacity, !finished else {
            dropped += 1
            return
        }
        pending.append(contentsOf: utf8)
        pending.append(0x0A)
        condition.signal()
    }

    /// Lines dropped so far and not yet reported.
    public var droppedCount: Int { condition.withLock { dropped } }

    /// Writes what is queued (and the dropped count) if stderr takes it within `timeout`, then stops.
    /// A stderr that still does not read is abandoned: exit must not hang on it.
    public func close(timeout: TimeInterval = 1) {
        condition.lock()
        stopping = true
        condition.broadcast()
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !finished, condition.wait(until: deadline) {}
        finished = true
        condition.unlock()
    }

    private func run() {
        var batch: [UInt8] = []
        while true {
            condition.lock()
            while pending.isEmpty && dropped == 0 && !stopping { condition.wait() }
            if pending.isEmpty && dropped == 0 && stopping {
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            swap(&batch, &pending)
            let lost = dropped
            dropped = 0
            condition.unlock()
            // Written first and blocking: when it returns, the reader is back, and the count follows.
            if !batch.isEmpty { _ = writeAll(fd, batch) }
            batch.removeAll(keepingCapacity: true)
            if lost > 0 {
                _ = writeAll(fd, Array("securemsg serve: \(lost) diagnostic line\(lost == 1 ? "" : "s") dropped (stderr was not being read)\n".utf8))
            }
        }
    }
}

/// At most one line per reason per interval; the lines in between are counted and the count is added
/// to the next line that is written ("(N more suppressed)"). Refusals under a flood cost a lock and an
/// increment, not a write.
public final class RateLimitedReporter: Sendable {
    private let output: @Sendable (String) -> Void
    private let interval: Double
    private let state = NIOLockedValueBox<[String: (last: Double, suppressed: Int)]>([:])

    public init(interval: TimeInterval = 1, output: @escaping @Sendable (String) -> Void) {
        self.interval = interval
        self.output = output
    }

    /// `reason` groups lines (e.g. "per-source limit"); `line` is what is written when one may be.
    public func report(_ reason: String, _ line: @autoclosure () -> String) {
        let now = monotonicSeconds()
        let suppressed: Int? = state.withLockedValue { table in
            var entry = table[reason] ?? (last: -Double.infinity, suppressed: 0)
            defer { table[reason] = entry }
            guard now - entry.last >= interval else {
                entry.suppressed += 1
                return nil
            }
            let count = entry.suppressed
            entry = (now, 0)
            return count
        }
        guard let suppressed else { return }
        output(suppressed > 0 ? "\(line()) (\(suppressed) more suppressed)" : line())
    }

    /// Reports the counts still held (at shutdown): "REASON: N more suppressed".
    public func flush() {
        let held = state.withLockedValue { table in
            defer { for key in table.keys { table[key]!.suppressed = 0 } }
            return table.filter { $0.value.suppressed > 0 }.map { ($0.key, $0.value.suppressed) }
        }
        for (reason, count) in held.sorted(by: { $0.0 < $1.0 }) { output("\(reason): \(count) more suppressed") }
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
