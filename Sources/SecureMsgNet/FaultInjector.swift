import Foundation

/// Test hook: stops the log writer at one step of one batch, to show that log and stream table agree
/// after a crash at that instant. serve builds one only from `SECUREMSG_TEST_CRASH=STEP:N` (the N-th
/// batch carrying stream lines, from 1), and then kills itself with SIGKILL there; or from
/// `SECUREMSG_TEST_STALL=STEP:N:SECONDS`, and then the writer waits there (a stalled sink). Never set in use.
public final class FaultInjector: @unchecked Sendable {  // used by the writer thread only
    /// The instants of a batch's write, in order.
    public enum Step: String, Sendable, CaseIterable {
        /// Half of the batch's log bytes written (a write torn by the crash).
        case logTorn = "log-torn"
        case logWritten = "log-written"
        /// Half of the table group written.
        case tableTorn = "table-torn"
        case tableWritten = "table-written"
        /// The log's fdatasync done (the table's runs at the same time).
        case logSynced = "log-synced"
        /// Both synced: next come the ACKs.
        case tableSynced = "table-synced"
    }

    public let step: Step
    public let batch: Int
    private let action: @Sendable () -> Void
    private var seen = 0

    /// `action` runs at the step; it must not return normally in a real crash test (SIGKILL), or may
    /// block until the test has copied the files.
    public init(step: Step, batch: Int, action: @escaping @Sendable () -> Void) {
        self.step = step
        self.batch = batch
        self.action = action
    }

    /// Parses `STEP:N` (nil when not set or malformed) with SIGKILL as the action.
    public static func fromEnvironment(_ value: String?) -> FaultInjector? {
        guard let value, let colon = value.firstIndex(of: ":"), let step = Step(rawValue: String(value[..<colon])),
              let batch = Int(value[value.index(after: colon)...]), batch > 0 else { return nil }
        return FaultInjector(step: step, batch: batch) { kill(getpid(), SIGKILL) }
    }

    /// Parses `STEP:N:SECONDS` (`SECUREMSG_TEST_STALL`; nil when not set or malformed): the writer stops
    /// for that long at the step, like a log disk or database that stalls, then goes on.
    public static func stallFromEnvironment(_ value: String?) -> FaultInjector? {
        let fields = value?.split(separator: ":", omittingEmptySubsequences: false) ?? []
        guard fields.count == 3, let step = Step(rawValue: String(fields[0])), let batch = Int(fields[1]), batch > 0,
              let seconds = Double(fields[2]), seconds > 0, seconds < 600 else { return nil }
        return FaultInjector(step: step, batch: batch) { usleep(useconds_t(seconds * 1e6)) }
    }

    /// Called at each step; runs the action at the chosen one.
    func at(_ step: Step) {
        if step == .logWritten { seen += 1 }  // one batch = one log write
        guard step == self.step, seen == batch else { return }
        action()
    }

    /// For the torn steps: how many of `total` bytes to write before the crash, or nil.
    func tornLength(_ step: Step, of total: Int) -> Int? {
        let batchNumber = step == .logTorn ? seen + 1 : seen
        guard step == self.step, batchNumber == batch else { return nil }
        return total / 2
    }

    func fire() { action() }
}
