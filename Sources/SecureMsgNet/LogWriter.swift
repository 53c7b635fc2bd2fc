import Foundation
import NIOConcurrencyHelpers
import SecureMsgCore
import Synchronization

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
        /// The stream these lines belong to and its offset just past them (nil: not counted in a table).
        var stream: (key: StreamKey, offset: UInt64)?
        var completion: Completion
    }

    private let condition = NSCondition()
    private var queue: [Record] = []
    /// Records submitted and not yet taken, readable without the lock so the writer can spin on it.
    private let queued = Atomic<Int>(0)
    /// The writer is asleep on `condition` (only then does `submit` pay for a wake-up).
    private var writerAsleep = false
    private var reopenRequested = false
    private var stopping = false
    private var thread: Thread?
    private let stopped = NSCondition()
    private var hasStopped = false

    private let logPath: String?
    private let logOptions: LogFileOptions
    private let sync: SyncPolicy
    /// The stdout echo: its own thread and bounded queue, so a stalled reader never holds up the log.
    private let echo: StdoutEcho?
    /// Raw lines echoed to a terminal are escaped there (`MessageFormatter.escapedForTerminal`).
    private let escapeEcho: Bool
    private var logFD: Int32 = -1
    /// The open log file and its size, tracked here (this thread is its only writer) for the stream table.
    private var logIdentity = LogFileIdentity.none
    private var logSize: UInt64 = 0
    private let diagnostics: @Sendable (String) -> Void
    /// Offsets of every stream, committed with the lines (nil: no table, lines are not counted).
    public let streamTable: StreamTable?
    private let faults: FaultInjector?

    public struct StreamTableConfiguration: Sendable {
        /// nil: in memory only.
        public var path: String?
        public var options = StreamTable.Options()
        public init(path: String?) { self.path = path }
    }

    /// Opens the log (append, create with the log mode, no symlink unless allowed) at once so a bad
    /// path fails at startup, not at the first message; opens the stream table and reconciles the two
    /// (a torn tail of either is cut back). `diagnostics` must not block (serve's queue).
    public init(logPath: String?, logOptions: LogFileOptions = LogFileOptions(), sync: SyncPolicy, echoToStdout: Bool,
                escapeEcho: Bool = false, metrics: ServerMetrics? = nil, streamTable: StreamTableConfiguration? = nil,
                faults: FaultInjector? = nil, diagnostics: @escaping @Sendable (String) -> Void) throws {
        self.metrics = metrics
        self.logPath = logPath
        self.logOptions = logOptions
        self.sync = sync
        self.echo = echoToStdout && !StdoutEcho.discards(STDOUT_FILENO) ? StdoutEcho(diagnostics: diagnostics) : nil
        self.escapeEcho = escapeEcho
        self.diagnostics = diagnostics
        self.faults = faults
        if let logPath { logFD = try openLogFile(logPath, options: logOptions) }
        if let streamTable {
            let table = try StreamTable(path: streamTable.path, logFD: logFD, options: streamTable.options)
            if let note = table.recoveryNote { diagnostics("stream table \(streamTable.path ?? ""): \(note)") }
            self.streamTable = table
        } else {
            self.streamTable = nil
        }
        if logFD >= 0 { noteLogSize() }
        let thread = Thread { [unowned self] in self.run() }
        thread.name = "securemsg-log-writer"
        self.thread = thread
        thread.start()
    }

    /// Queues formatted lines; `completion` runs on the writer thread once they are written (and synced,
    /// and counted in the stream table as `stream.offset` when given).
    public func submit(_ bytes: [UInt8], stream: (key: StreamKey, offset: UInt64)? = nil, completion: @escaping Completion) {
        condition.lock()
        queue.append(Record(bytes: bytes, stream: stream, completion: completion))
        queued.add(1, ordering: .releasing)
        if writerAsleep { condition.signal() }
        condition.unlock()
    }

    /// Queues one line for stderr (serve's bounded diagnostic queue: never blocks, drops when full).
    public func submitDiagnostic(_ line: String) {
        diagnostics(line)
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
        echo?.close()
    }

    private func run() {
        var batch: [Record] = []
        while true {
            let idleSince = monotonicNanoseconds()
            spinForWork()
            condition.lock()
            while queue.isEmpty && !reopenRequested && !stopping {
                writerAsleep = true
                condition.wait()
                writerAsleep = false
            }
            queued.store(0, ordering: .relaxed)
            swap(&batch, &queue)
            spinNext = !batch.isEmpty && monotonicNanoseconds() - idleSince < Self.spinWhenGapBelowNanoseconds
            let reopen = reopenRequested
            reopenRequested = false
            let stop = stopping && batch.isEmpty
            condition.unlock()

            if reopen { reopenLog() }
            if !batch.isEmpty { write(batch) }
            batch.removeAll(keepingCapacity: true)
            if stop { break }
        }
        if logFD >= 0 {
            _ = fdatasync(logFD)
            Foundation.close(logFD)
            logFD = -1
        }
        streamTable?.close()
        stopped.lock()
        hasStopped = true
        stopped.broadcast()
        stopped.unlock()
    }

    /// Waits up to 50 µs for the next record before sleeping — but only while records have been arriving
    /// within 100 µs of each other (an interactive client's next line comes one round trip later, and
    /// waking a sleeping thread costs more than that wait). Sparse traffic never spins, so many slow
    /// clients do not pay a core for it.
    private func spinForWork() {
        guard spinNext else { return }
        let start = monotonicNanoseconds()
        while queued.load(ordering: .acquiring) == 0 {
            if monotonicNanoseconds() - start > Self.spinNanoseconds { return }
            // On a small machine the thread we wait for (or its client) may need this very core.
            sched_yield()
        }
    }

    private var spinNext = false
    private static let spinNanoseconds = 50_000
    private static let spinWhenGapBelowNanoseconds = 100_000

    /// The order that keeps log and stream table consistent across a crash at any instant
    /// (`StreamTableRecovery`): lines to the log, then the table group naming the log's new size, then
    /// (per policy) both fdatasync'd — at the same time, each on its own thread, so the table costs no
    /// extra sync latency; only then the completions, which send the ACKs.
    private func write(_ batch: [Record]) {
        if sync == .always {
            for record in batch {
                let ok = writeOut(batch: [record]) && commitStreams([record], syncing: true)
                if !ok { cutUncountedTail() }
                record.completion(ok)
            }
            return
        }
        // One writev per destination for the whole batch: syscalls, not bytes, dominate small lines.
        var ok = writeOut(batch: batch)
        if ok { ok = commitStreams(batch, syncing: sync == .batch) }
        if !ok { cutUncountedTail() }
        for record in batch { record.completion(ok) }
    }

    /// A failed write, sync or table commit: the lines are not acknowledged, and their clients will send
    /// them again, so the log must not keep them either (else they would be there twice). Cut it back to
    /// the size the stream table counts, as a restart would.
    private func cutUncountedTail() {
        guard let streamTable, logFD >= 0 else { return }
        let counted = streamTable.lastLogSize
        guard ftruncate(logFD, off_t(counted)) == 0 else {
            diagnostics("log file \(logPath ?? ""): cannot cut back unacknowledged lines: \(String(cString: strerror(errno)))")
            return
        }
        logSize = counted
    }

    /// Appends the batch's table group and, when `syncing`, fdatasyncs the log and the table together.
    private func commitStreams(_ batch: [Record], syncing: Bool) -> Bool {
        guard let streamTable else { return !syncing || syncLog() }
        var advanced: [StreamKey: UInt64] = [:]
        for record in batch {
            guard let stream = record.stream else { continue }
            advanced[stream.key] = max(advanced[stream.key] ?? 0, stream.offset)
        }
        // Every byte this writer puts in the log is followed by a group counting it, even lines of no
        // stream: recovery cuts back whatever no group counts.
        guard !advanced.isEmpty || logSize != streamTable.lastLogSize else { return !syncing || syncLog() }
        if streamTable.commit(advanced, log: logIdentity, logSize: logSize, sync: syncing, faults: faults,
                              alongside: syncing ? { [self] in syncLog() } : nil) { return true }
        diagnostics("stream table \(streamTable.path ?? ""): write failed: \(String(cString: strerror(errno)))")
        return false
    }

    private func noteLogSize() {
        var info = stat()
        guard fstat(logFD, &info) == 0 else { return }
        logIdentity = LogFileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        logSize = UInt64(info.st_size)
    }

    private func writeOut(batch: [Record]) -> Bool {
        if escapeEcho {
            echo?.enqueue(batch.lazy.map { MessageFormatter.escapedForTerminal(rawLines: $0.bytes) })
        } else {
            echo?.enqueue(batch.lazy.map(\.bytes))
        }
        guard logFD >= 0 else { return true }
        let written = batch.reduce(0) { $0 + $1.bytes.count }
        if let torn = faults?.tornLength(.logTorn, of: written) {
            _ = writeAll(logFD, Array(batch.lazy.flatMap(\.bytes).prefix(torn)))
            faults?.fire()
        }
        if writeAll(logFD, batch.lazy.map(\.bytes)) {
            logSize += UInt64(written)
            faults?.at(.logWritten)
            return true
        }
        noteLogSize()  // a partial write: the size is whatever the file says
        diagnostics("log file \(logPath ?? ""): write failed: \(String(cString: strerror(errno)))")
        return false
    }

    /// Records submitted and not yet taken by the writer thread (--metrics).
    public var queueDepth: Int { queued.load(ordering: .relaxed) }

    private let metrics: ServerMetrics?

    private func syncLog() -> Bool {
        guard logFD >= 0 else { return true }
        let started = metrics == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        let synced = fdatasync(logFD) == 0
        if let metrics { metrics.synced(seconds: Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9) }
        if synced {
            faults?.at(.logSynced)
            return true
        }
        diagnostics("log file \(logPath ?? ""): fdatasync failed: \(String(cString: strerror(errno)))")
        return false
    }

    private func reopenLog() {
        guard let logPath else { return }
        do {
            let fd = try openLogFile(logPath, options: logOptions)
            if logFD >= 0 {
                _ = fdatasync(logFD)
                Foundation.close(logFD)
            }
            logFD = fd
            noteLogSize()
            // The table names the new file (and its size now) before the first line goes into it, so a
            // crash later cuts back only what this writer added to it.
            if let streamTable, !streamTable.commit([:], log: logIdentity, logSize: logSize, sync: true) {
                diagnostics("stream table \(streamTable.path ?? ""): write failed: \(String(cString: strerror(errno)))")
            }
            diagnostics("reopened log file \(logPath)")
        } catch {
            diagnostics("\(error); still writing to the previous file")
        }
    }
}

private func monotonicNanoseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec * 1_000_000_000 + now.tv_nsec
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    writeAll(fd, CollectionOfOne(bytes))
}

/// Writes every buffer, in order, with as few writev(2) calls as the kernel allows (IOV_MAX at a time).
func writeAll<Buffers: Collection<[UInt8]>>(_ fd: Int32, _ buffers: Buffers) -> Bool {
    var pending = Array(buffers.filter { !$0.isEmpty })
    var index = 0, offset = 0
    while index < pending.count {
        let count = min(pending.count - index, 64)  // pinned recursively below: keep the depth small
        // Pin the arrays' storage for the duration of the call.
        let written: Int = withIOVectors(pending[index..<(index + count)], firstOffset: offset) { iov in
            Foundation.writev(fd, iov.baseAddress, Int32(iov.count))
        }
        if written < 0 {
            if errno == EINTR { continue }
            return false
        }
        var remaining = written
        while remaining > 0 {
            let left = pending[index].count - offset
            if remaining >= left {
                remaining -= left
                index += 1
                offset = 0
            } else {
                offset += remaining
                remaining = 0
            }
        }
    }
    pending.removeAll()
    return true
}

private func withIOVectors<R>(_ buffers: ArraySlice<[UInt8]>, firstOffset: Int, _ body: (UnsafeMutableBufferPointer<iovec>) -> R) -> R {
    var iov = [iovec](repeating: iovec(), count: buffers.count)
    func pin(_ i: Int, _ iov: inout [iovec]) -> R {
        if i == buffers.count { return iov.withUnsafeMutableBufferPointer { body($0) } }
        let buffer = buffers[buffers.startIndex + i]
        return buffer.withUnsafeBytes { raw in
            let skip = i == 0 ? firstOffset : 0
            iov[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress! + skip), iov_len: raw.count - skip)
            return pin(i + 1, &iov)
        }
    }
    return pin(0, &iov)
}

public enum ServerError: Error, CustomStringConvertible {
    case logFile(path: String, reason: String)
    case bind(String)
    case keyLog(path: String, reason: String)
    case streamTable(path: String, reason: String)

    public var description: String {
        switch self {
        case .logFile(let path, let reason): "cannot open log file \(path): \(reason)"
        case .keyLog(let path, let reason): "cannot use key log \(path): \(reason)"
        case .streamTable(let path, let reason): "cannot use stream table \(path): \(reason)"
        case .bind(let reason): reason
        }
    }
}
