import Foundation
import NIOConcurrencyHelpers

/// When a logged line is durable enough to acknowledge (docs: README "serve").
public enum SyncPolicy: String, Sendable, CaseIterable {
    /// write(2) before the ACK: survives a crash or kill -9 of serve, not a power loss.
    case none
    /// write(2), then one fdatasync per batch before the batch's ACKs go out (default): survives power loss,
    /// and under load one sync covers many frames.
    case batch
    /// write(2) and fdatasync for every frame before its ACK.
    case always
}

/// The one thread that writes received lines to stdout and the log file.
///
/// Event loops format lines and hand them over; they never block on disk. Completions run after the
/// bytes are written (and synced, per policy), which is when a frame may be acknowledged. The queue is
/// bounded by the connections' read pausing (backpressure), not here.
public final class LogWriter: @unchecked Sendable {
    public typealias Completion = @Sendable (_ ok: Bool) -> Void

    private struct Record {
        var bytes: [UInt8]
        var completion: Completion
    }

    private let condition = NSCondition()
    private var queue: [Record] = []
    private var reopenRequested = false
    private var stopping = false
    private var thread: Thread?
    private let stopped = NSCondition()
    private var hasStopped = false

    private let logPath: String?
    private let sync: SyncPolicy
    private let echoToStdout: Bool
    private var logFD: Int32 = -1
    private var stdoutBroken = false
    private let diagnostics: @Sendable (String) -> Void

    /// Opens the log (append, create 0600) at once so a bad path fails at startup, not at the first message.
    public init(logPath: String?, sync: SyncPolicy, echoToStdout: Bool, diagnostics: @escaping @Sendable (String) -> Void) throws {
        self.logPath = logPath
        self.sync = sync
        self.echoToStdout = echoToStdout
        self.diagnostics = diagnostics
        if let logPath { logFD = try Self.open(logPath) }
        let thread = Thread { [unowned self] in self.run() }
        thread.name = "securemsg-log-writer"
        self.thread = thread
        thread.start()
    }

    static func open(_ path: String) throws -> Int32 {
        let fd = Foundation.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw ServerError.logFile(path: path, reason: String(cString: strerror(errno)))
        }
        return fd
    }

    /// Queues formatted lines; `completion` runs on the writer thread once they are written.
    public func submit(_ bytes: [UInt8], completion: @escaping Completion) {
        condition.lock()
        queue.append(Record(bytes: bytes, completion: completion))
        condition.signal()
        condition.unlock()
    }

    /// SIGHUP: reopen the log path (after logrotate moved the old file away).
    public func requestReopen() {
        condition.lock()
        reopenRequested = true
        condition.signal()
        condition.unlock()
    }

    /// Writes everything queued, syncs, closes the file and ends the thread.
    public func close() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        stopped.lock()
        while !hasStopped { stopped.wait() }
        stopped.unlock()
    }

    private func run() {
        var batch: [Record] = []
        var buffer: [UInt8] = []
        while true {
            condition.lock()
            while queue.isEmpty && !reopenRequested && !stopping { condition.wait() }
            swap(&batch, &queue)
            let reopen = reopenRequested
            reopenRequested = false
            let stop = stopping && batch.isEmpty
            condition.unlock()

            if reopen { reopenLog() }
            if !batch.isEmpty { write(batch, using: &buffer) }
            batch.removeAll(keepingCapacity: true)
            if stop { break }
        }
        if logFD >= 0 {
            _ = fdatasync(logFD)
            Foundation.close(logFD)
            logFD = -1
        }
        stopped.lock()
        hasStopped = true
        stopped.broadcast()
        stopped.unlock()
    }

    private func write(_ batch: [Record], using buffer: inout [UInt8]) {
        if sync == .always {
            for record in batch {
                let ok = writeOut(record.bytes) && syncLog()
                record.completion(ok)
            }
            return
        }
        // One write per destination for the whole batch: syscalls, not bytes, dominate small lines.
        buffer.removeAll(keepingCapacity: true)
        for record in batch { buffer.append(contentsOf: record.bytes) }
        var ok = writeOut(buffer)
        if ok && sync == .batch { ok = syncLog() }
        for record in batch { record.completion(ok) }
        if buffer.capacity > 64 << 20 { buffer = [] }
    }

    private func writeOut(_ bytes: [UInt8]) -> Bool {
        if echoToStdout && !stdoutBroken {
            if !writeAll(STDOUT_FILENO, bytes) {
                // A closed stdout (e.g. `serve | head`) must not stop logging: the log file is the record.
                stdoutBroken = true
                diagnostics("stdout: \(String(cString: strerror(errno))); messages continue to the log file only")
            }
        }
        guard logFD >= 0 else { return true }
        if writeAll(logFD, bytes) { return true }
        diagnostics("log file \(logPath ?? ""): write failed: \(String(cString: strerror(errno)))")
        return false
    }

    private func syncLog() -> Bool {
        guard logFD >= 0 else { return true }
        if fdatasync(logFD) == 0 { return true }
        diagnostics("log file \(logPath ?? ""): fdatasync failed: \(String(cString: strerror(errno)))")
        return false
    }

    private func reopenLog() {
        guard let logPath else { return }
        do {
            let fd = try Self.open(logPath)
            if logFD >= 0 {
                _ = fdatasync(logFD)
                Foundation.close(logFD)
            }
            logFD = fd
            diagnostics("reopened log file \(logPath)")
        } catch {
            diagnostics("\(error); still writing to the previous file")
        }
    }
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }
}

public enum ServerError: Error, CustomStringConvertible {
    case logFile(path: String, reason: String)
    case bind(String)

    public var description: String {
        switch self {
        case .logFile(let path, let reason): "cannot open log file \(path): \(reason)"
        case .bind(let reason): reason
        }
    }
}
