import Foundation

/// serve's stdout echo of received lines, on its own thread behind a bounded queue: the log writer hands
/// each batch over (no copy: the arrays are shared) and never waits on stdout. The echo is best effort —
/// the log file is the record: when stdout's reader stalls and `capacity` bytes are waiting, newer
/// batches are dropped (not echoed) and counted, and the count is reported on stderr once stdout takes
/// writes again (or at exit). A closed stdout (EPIPE, e.g. `serve | head`) ends the echo for good.
final class StdoutEcho: @unchecked Sendable {
    private let fd: Int32
    private let capacity: Int
    private let diagnostics: @Sendable (String) -> Void
    private let condition = NSCondition()
    private var pending: [[UInt8]] = []
    private var pendingBytes = 0
    private var droppedBytes = 0
    private var broken = false
    private var stopping = false
    private var finished = false

    init(fd: Int32 = STDOUT_FILENO, capacity: Int = 8 << 20, diagnostics: @escaping @Sendable (String) -> Void) {
        self.fd = fd
        self.capacity = capacity
        self.diagnostics = diagnostics
        // The thread keeps this object alive: it may be blocked in write(2) on a reader that never comes back.
        let thread = Thread { self.run() }
        thread.name = "securemsg-stdout"
        thread.start()
    }

    /// True when `fd` is /dev/null (`serve >/dev/null`, as under scripts/bench or a supervisor that
    /// keeps no output): whatever is written there is discarded, so no thread is woken to copy it.
    static func discards(_ fd: Int32) -> Bool {
        var target = stat(), null = stat()
        guard fstat(fd, &target) == 0, stat("/dev/null", &null) == 0 else { return false }
        return (target.st_mode & S_IFMT) == S_IFCHR && target.st_rdev == null.st_rdev
    }

    /// Queues a batch for stdout, or drops it when the queue is full. Never blocks.
    func enqueue<Buffers: Sequence<[UInt8]>>(_ buffers: Buffers) {
        condition.lock()
        defer { condition.unlock() }
        guard !broken, !finished else { return }
        for buffer in buffers where !buffer.isEmpty {
            if pendingBytes + buffer.count > capacity {
                droppedBytes += buffer.count
            } else {
                pending.append(buffer)
                pendingBytes += buffer.count
            }
        }
        condition.signal()
    }

    /// Echoes what is queued if stdout takes it within `timeout`, then stops (a stalled reader is abandoned).
    func close(timeout: TimeInterval = 1) {
        condition.lock()
        stopping = true
        condition.broadcast()
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !finished, condition.wait(until: deadline) {}
        let lost = droppedBytes + (finished ? 0 : pendingBytes)
        finished = true
        condition.unlock()
        if lost > 0 { report(lost) }
    }

    private func report(_ bytes: Int) {
        diagnostics("stdout: its reader fell behind; \(bytes) bytes of messages were not echoed (the log file has them)")
    }

    private func run() {
        var batch: [[UInt8]] = []
        while true {
            condition.lock()
            while pending.isEmpty && !stopping { condition.wait() }
            if pending.isEmpty || broken {
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            swap(&batch, &pending)
            condition.unlock()
            let ok = writeAll(fd, batch)
            let error = errno
            condition.lock()
            pendingBytes -= batch.reduce(0) { $0 + $1.count }
            let lost = droppedBytes
            droppedBytes = 0
            if !ok {
                broken = true
                pending.removeAll()
                pendingBytes = 0
            }
            condition.unlock()
            batch.removeAll(keepingCapacity: true)
            if !ok {
                diagnostics("stdout: \(String(cString: strerror(error))); messages continue to the log file only")
            } else if lost > 0 {
                report(lost)  // the reader is back: say what it missed
            }
        }
    }
}
